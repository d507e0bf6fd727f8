"""The API function code uses: ``serve``, ``EdgeRuntime``, ``Deno``, ``upgrade_websocket`` and ``verify_jwt``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import logging
import sys
import types
from collections.abc import Awaitable, Generator, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from edgeruntime.core.background import BackgroundTask
from edgeruntime.core.context import ExecutionContext, current_context
from edgeruntime.core.events import BeforeUnloadEvent, EventCallback, EventName, UnhandledRejectionEvent
from edgeruntime.core.types import Handler
from edgeruntime.core.websocket import UPGRADE_KEY, WebSocketUpgrade
from edgeruntime.core.worker_state import HANDLER_ATTRIBUTE, booting, current_worker, default_worker
from edgeruntime.exceptions import InvalidJWT, NotSupportedError, WebSocketUpgradeError
from edgeruntime.gateway.auth import MISSING_TOKEN, TokenVerifier

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.websockets import WebSocket

__all__ = [
    "BeforeUnloadEvent",
    "Deno",
    "EdgeRuntime",
    "UnhandledRejectionEvent",
    "serve",
    "upgrade_websocket",
    "verify_jwt",
]

logger = logging.getLogger("edgeruntime")

T = TypeVar("T")
#: What `serve()` accepts and returns: a request handler or an ASGI application (see `Handler`).
H = TypeVar("H", bound=Handler)


class PendingWork(Generic[T]):
    """What ``wait_until`` returns: an awaitable for the same background work."""

    __slots__ = ("_entry", "_ctx")

    def __init__(self, entry: BackgroundTask, ctx: ExecutionContext) -> None:
        self._entry = entry
        self._ctx = ctx

    @property
    def task(self) -> asyncio.Future[T]:
        return self._entry.task

    def done(self) -> bool:
        return self._entry.task.done()

    def __await__(self) -> Generator[Any, None, T]:
        ctx = current_context()
        if ctx is self._ctx and ctx.trigger != "test" and not ctx.response_started:
            logger.warning(
                "function %s awaits the result of wait_until(%s) before responding: "
                "this delays the response until the background work ends; return the response "
                "and let the runtime finish the work",
                ctx.function,
                self._entry.name,
                extra={"function": ctx.function, "execution_id": ctx.execution_id},
            )
        return self._entry.task.__await__()


class EdgeRuntime:
    """The ``EdgeRuntime`` global of the Supabase edge runtime."""

    def __init__(self) -> None:
        raise TypeError("EdgeRuntime is a namespace; call EdgeRuntime.wait_until(...) directly")

    @staticmethod
    def wait_until(awaitable: Awaitable[T]) -> PendingWork[T]:
        """Run `awaitable` in the background, after the response if need be.

        Returns at once with an awaitable for the same work (the edge runtime returns the promise
        it was given). The work is bounded by the worker's limits; when it raises, the error is
        logged with the function name and execution id and reported to ``unhandledrejection``
        listeners. Outside a request (in a unit test) the work attaches to a default context that
        ``edgeruntime.testing.drain()`` waits for.

        Example::

            EdgeRuntime.wait_until(send_email(body["email"]))
            return JSONResponse({"accepted": True}, status_code=202)
        """
        if type(awaitable) is not types.CoroutineType and not inspect.isawaitable(awaitable):
            raise TypeError(
                f"wait_until() takes an awaitable (a coroutine or task), not {type(awaitable).__name__}; "
                "did you call a plain function instead of an async one?"
            )
        ctx = current_context()
        if ctx is None:
            ctx = _default_context()
        loop = asyncio._get_running_loop()  # (None, not an exception, in a thread: a cheaper test)
        if loop is None:
            return _wait_until_from_thread(awaitable, ctx)
        return PendingWork(ctx.worker.background.add(awaitable, ctx, loop), ctx)

    waitUntil = wait_until

    @staticmethod
    def on(event: EventName, callback: EventCallback) -> None:
        """Listen for ``"beforeunload"`` or ``"unhandledrejection"`` on the current worker.

        Callbacks may be sync or async; an exception inside one is logged, never propagated.
        """
        if event not in ("beforeunload", "unhandledrejection"):
            raise ValueError(f"unknown event {event!r}: use 'beforeunload' or 'unhandledrejection'")
        current_worker().add_listener(event, callback)

    addEventListener = on

    @staticmethod
    def off(event: EventName, callback: EventCallback) -> None:
        """Remove a listener added with :meth:`on`."""
        current_worker().remove_listener(event, callback)


_default_ctx: ExecutionContext | None = None


def _default_context() -> ExecutionContext:
    global _default_ctx
    worker = booting.get() or default_worker()
    if _default_ctx is None or _default_ctx.worker is not worker:
        _default_ctx = ExecutionContext(function=worker.function, worker=worker, trigger="test")
        _default_ctx.response_started = True
    return _default_ctx


def _wait_until_from_thread(awaitable: Awaitable[T], ctx: ExecutionContext) -> PendingWork[T]:
    # A sync handler runs in a worker thread: hand the work to the worker's event loop.
    loop = ctx.worker.loop
    if loop is None or loop.is_closed():
        raise RuntimeError("wait_until() needs a running event loop")
    result: concurrent.futures.Future[BackgroundTask] = concurrent.futures.Future()

    def schedule() -> None:
        try:
            result.set_result(ctx.worker.background.add(awaitable, ctx))
        except BaseException as exc:  # pragma: no cover - re-raised in the calling thread
            result.set_exception(exc)

    loop.call_soon_threadsafe(schedule)
    return PendingWork(result.result(), ctx)


class _Env:
    """``Deno.env``: the env the runtime gives the function; read-only, as in the edge runtime."""

    def _mapping(self) -> Any:
        return current_worker().env

    def get(self, name: str) -> str | None:
        value: str | None = self._mapping().get(name)
        return value

    def has(self, name: str) -> bool:
        return name in self._mapping()

    def to_object(self) -> dict[str, str]:
        return dict(self._mapping())

    toObject = to_object

    def set(self, name: str, value: str) -> None:
        raise NotSupportedError("Deno.env.set() is not supported in the edge runtime: the env is read-only")

    def delete(self, name: str) -> None:
        """A silent no-op, as in the edge runtime."""


class Deno:
    """The parts of the ``Deno`` global that edge functions use."""

    env = _Env()

    def __init__(self) -> None:
        raise TypeError("Deno is a namespace; use Deno.env.get(...)")


def serve(handler: H) -> H:
    """Register the module's request handler, like ``Deno.serve(handler)``.

    `handler` may be an ``async def handler(request) -> Response``, a plain ``def`` (run in a
    worker thread) or any ASGI application (Starlette, FastAPI). Usable as a decorator: it returns
    its argument. When the module is run as a script (``python functions/hello/index.py``) it
    serves the handler on ``PORT`` (default 8000), like ``deno run index.ts``.

    Example::

        async def handler(req: Request) -> Response:
            return JSONResponse({"message": "hello"})

        serve(handler)
    """
    state = booting.get()
    if state is not None:
        state.handlers.append(handler)
        return handler
    caller = sys._getframe(1).f_globals
    if caller.get("__name__") == "__main__":
        from edgeruntime.serving.standalone import run_script

        run_script(handler, caller.get("__file__"))  # on PORT (default 8000)
        return handler
    caller[HANDLER_ATTRIBUTE] = handler
    return handler


async def upgrade_websocket(
    request: Request, *, protocol: str | None = None, headers: Mapping[str, str] | None = None
) -> WebSocket:
    """Accept the WebSocket upgrade `request` and return the connection, like ``Deno.upgradeWebSocket(req)``.

    The connection is a Starlette ``WebSocket`` (``send_text``, ``send_bytes``, ``receive_text``,
    ``iter_text``, ``close(code)``...) and lasts while the handler runs: when the handler returns
    it is closed (1000) if still open. `protocol` is the subprotocol to answer with (one the client
    offered in ``Sec-WebSocket-Protocol``); `headers` are added to the 101 response. To refuse the
    upgrade, return a response instead (e.g. 400 or 403).

    Raises WebSocketUpgradeError (a TypeError, as Deno throws) when `request` is not a WebSocket
    upgrade request, or was upgraded already.

    Example::

        async def handler(req: Request) -> Response | None:
            if req.headers.get("upgrade", "").lower() != "websocket":
                return JSONResponse({"error": "request isn't trying to upgrade to WebSocket."}, status_code=400)
            ws = await upgrade_websocket(req)
            async for message in ws.iter_text():
                await ws.send_text(message)
            return None
    """
    upgrade = request.scope.get(UPGRADE_KEY)
    if not isinstance(upgrade, WebSocketUpgrade):
        raise WebSocketUpgradeError(
            "upgrade_websocket(): the request is not a WebSocket upgrade request (no 'Upgrade: websocket'); "
            "answer it with a response instead, e.g. 400"
        )
    return await upgrade.accept(protocol, headers)


@functools.lru_cache(maxsize=8)
def _token_verifier(jwks: str | None) -> TokenVerifier:
    return TokenVerifier.from_jwks(jwks)


def verify_jwt(token: str | None) -> dict[str, Any]:
    """Verify `token` with the server's keys, as the gateway's ``verify_jwt`` checks a request; return its claims.

    The check is the gateway's: an HS256 token signed with the JWT secret, or an ES256/RS256 token
    signed by a key of ``SUPABASE_JWKS``, not expired. Made for what the gateway cannot check:
    a browser's WebSocket carries no ``Authorization`` header, so such a function sets
    ``verify_jwt = false`` and checks a token the page passes in the query string or in
    ``Sec-WebSocket-Protocol``. The keys are read from the function's env (``SUPABASE_JWKS``),
    so it works under process isolation too.

    Raises InvalidJWT (with the ``sb-error-code`` the gateway would answer) when `token` is None
    or empty, malformed, forged or expired.

    Example::

        try:
            claims = verify_jwt(req.query_params.get("jwt"))
        except InvalidJWT:
            return JSONResponse({"error": "Invalid token provided"}, status_code=403)
    """
    if not token:
        raise InvalidJWT(MISSING_TOKEN.message, MISSING_TOKEN.code)
    failure, claims = _token_verifier(current_worker().env.get("SUPABASE_JWKS")).verify(token)
    if failure is not None:
        raise InvalidJWT(failure.message, failure.code)
    return claims
