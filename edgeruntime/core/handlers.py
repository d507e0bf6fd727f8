"""Turn what a function passed to ``serve()`` into an ASGI application."""

from __future__ import annotations

import functools
import inspect
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from edgeruntime.core.metering import run_in_thread_metered
from edgeruntime.core.types import ASGIApp, Handler, Receive, Scope, Send
from edgeruntime.core.websocket import serve_upgrade
from edgeruntime.exceptions import BootError, InvalidResponse

__all__ = ["HandlerKind", "classify", "to_asgi"]

HandlerKind = str  # "async" | "sync" | "asgi"


def _positional_arity(fn: Any) -> int | None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in params if p.kind in kinds and p.default is inspect.Parameter.empty)


def _is_async_callable(obj: Any) -> bool:
    while isinstance(obj, functools.partial):
        obj = obj.func
    return inspect.iscoroutinefunction(obj) or (
        callable(obj) and inspect.iscoroutinefunction(getattr(obj, "__call__", None))  # noqa: B004
    )


def classify(handler: Handler, function: str) -> HandlerKind:
    """Say whether `handler` is an async request handler, a sync one or an ASGI application."""
    if not callable(handler):
        raise BootError(function, f"{function}: serve() needs a callable, got {type(handler).__name__}")
    arity = _positional_arity(handler)
    if arity == 3 and _is_async_callable(handler):
        return "asgi"
    if arity == 1:
        return "async" if _is_async_callable(handler) else "sync"
    raise BootError(
        function,
        f"{function}: serve() needs a handler taking one request argument or an ASGI application "
        f"taking (scope, receive, send); {getattr(handler, '__name__', handler)!r} takes {arity}",
    )


def to_asgi(handler: Handler, function: str) -> ASGIApp:
    """Wrap `handler` as an ASGI app that raises InvalidResponse for a non-Response result.

    A WebSocket scope reaches a request handler as its upgrade request (see
    :mod:`edgeruntime.core.websocket`), and an ASGI application as it is.
    """
    kind = classify(handler, function)
    fn: Any = handler
    if kind == "asgi":
        asgi: ASGIApp = fn
        return asgi

    def check(result: Any) -> Response:
        if not isinstance(result, Response):
            raise InvalidResponse(
                function,
                f"function {function} returned {type(result).__module__}.{type(result).__qualname__}, "
                "not a starlette Response",
            )
        return result

    if kind == "async":

        async def async_app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "websocket":
                await serve_upgrade(fn, check, scope, receive, send)
                return
            result = await fn(Request(scope, receive))
            await check(result)(scope, receive, send)

        return async_app

    async def call_in_thread(request: Request) -> Any:
        result = await run_in_thread_metered(fn, request)  # its CPU counts against the limits
        if inspect.isawaitable(result):
            result = await result
        return result

    async def sync_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # it can only answer it: upgrade_websocket() needs an async handler
            await serve_upgrade(call_in_thread, check, scope, receive, send)
            return
        request = Request(scope, receive)
        # A sync handler cannot await the body, so it is read before the handler runs.
        await request.body()
        await check(await call_in_thread(request))(scope, receive, send)

    return sync_app
