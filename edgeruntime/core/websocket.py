"""A WebSocket upgrade request, as a function's request handler receives it.

The handler of a function (``async def handler(req)``) gets the upgrade request as a Starlette
``Request`` for a ``GET``, its headers as the client sent them (``Upgrade: websocket`` ...), like
the ``Request`` a Deno handler gets. ``upgrade_websocket(req)`` (:mod:`edgeruntime.runtime`)
accepts it through the :class:`WebSocketUpgrade` the request carries and returns the connection,
a Starlette ``WebSocket``. The connection lasts while the handler runs (``async for message in
ws.iter_text()``); when the handler returns the runtime closes it (1000) if it is still open, and
when the handler raises, with 1011. A handler that returns a response instead of upgrading
answers the upgrade request with it (ASGI's WebSocket denial response: ``400``, ``403`` ...).

An ASGI application passed to ``serve()`` (Starlette, FastAPI) gets the WebSocket scope itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from edgeruntime.core.types import Message, Receive, Scope, Send
from edgeruntime.exceptions import WebSocketUpgradeError

__all__ = [
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_NORMAL",
    "UPGRADE_KEY",
    "WebSocketUpgrade",
    "serve_upgrade",
    "upgrade_request",
]

#: The key of the request's scope holding its :class:`WebSocketUpgrade`.
UPGRADE_KEY = "edgeruntime.websocket_upgrade"
#: Close codes (RFC 6455 §7.4.1) the runtime closes a function's socket with.
CLOSE_NORMAL = 1000
CLOSE_INTERNAL_ERROR = 1011


async def _no_body() -> Message:
    # An upgrade request has no body: the connection carries WebSocket frames after its head.
    return {"type": "http.request", "body": b"", "more_body": False}


class WebSocketUpgrade:
    """The WebSocket side of one upgrade request: accepted at most once, by ``upgrade_websocket``."""

    __slots__ = ("receive", "scope", "send", "websocket")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        #: The accepted connection (None until ``upgrade_websocket`` accepts it).
        self.websocket: WebSocket | None = None

    @property
    def accepted(self) -> bool:
        return self.websocket is not None

    async def accept(self, protocol: str | None = None, headers: Mapping[str, str] | None = None) -> WebSocket:
        """Accept the upgrade (101 Switching Protocols) with `protocol` and extra response `headers`."""
        if self.websocket is not None:
            raise WebSocketUpgradeError("upgrade_websocket(): this request was upgraded already")
        offered: list[str] = list(self.scope.get("subprotocols") or ())
        if protocol is not None and protocol not in offered:
            raise ValueError(
                f"upgrade_websocket(protocol={protocol!r}): the client offered "
                f"{', '.join(repr(p) for p in offered) or 'no protocol'} (Sec-WebSocket-Protocol)"
            )
        raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()]
        websocket = WebSocket(self.scope, self.receive, self.send)
        await websocket.accept(subprotocol=protocol, headers=raw)
        self.websocket = websocket
        return websocket

    @property
    def open(self) -> bool:
        """Accepted, not closed by the function, and no disconnect read from the client."""
        ws = self.websocket
        return (
            ws is not None
            and ws.application_state is WebSocketState.CONNECTED
            and ws.client_state is not WebSocketState.DISCONNECTED
        )

    async def close(self, code: int, reason: str = "") -> None:
        """Close the connection if it is still open (the client may be gone already: nothing then)."""
        if self.open:
            assert self.websocket is not None
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await self.websocket.close(code, reason)


def upgrade_request(scope: Scope, receive: Receive, send: Send) -> tuple[Request, WebSocketUpgrade]:
    """The request a handler receives for the WebSocket `scope`, and the upgrade it carries."""
    upgrade = WebSocketUpgrade(scope, receive, send)
    http_scope = dict(scope)
    http_scope["type"] = "http"
    http_scope["method"] = "GET"
    # As `req.url` in Deno: the URL the upgrade request was sent to (ws:// is the client's spelling).
    http_scope["scheme"] = "https" if scope.get("scheme") == "wss" else "http"
    http_scope[UPGRADE_KEY] = upgrade
    return Request(http_scope, _no_body), upgrade


async def serve_upgrade(
    call: Callable[[Request], Awaitable[Any]],
    check: Callable[[Any], Response],
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """Run a request handler (`call`) for the WebSocket `scope`.

    If the handler accepted the upgrade, the connection is closed when it returns (1000) or
    raises (1011, and the error goes on to be logged); otherwise its response (checked by
    `check`, which raises InvalidResponse for anything else) answers the upgrade request.
    """
    request, upgrade = upgrade_request(scope, receive, send)
    try:
        result = await call(request)
    except WebSocketDisconnect:
        if upgrade.accepted:  # the client went away while the handler read or wrote: nothing to answer
            return
        raise
    except Exception:
        await upgrade.close(CLOSE_INTERNAL_ERROR)
        raise
    if upgrade.accepted:
        await upgrade.close(CLOSE_NORMAL)
        return
    # Starlette's responses answer a WebSocket scope with ASGI's denial response.
    await check(result)(scope, receive, send)
