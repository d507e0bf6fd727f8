"""The gateway's side of one WebSocket connection to a function.

The gateway applies its rules to a WebSocket upgrade request as to any request to a function
(routing, 404, verify_jwt, duplicate credentials, limits) and answers it, when it must, with the
same responses, sent as ASGI's WebSocket denial response (both servers support it; without it the
server answers 403). Once the function accepted the upgrade, the runtime closes the connection
itself when the function cannot: a limit ends its worker (1001, going away, with the stop reason
as the close reason: ``wall_clock``, ``cpu``, ``memory``, ``termination``), its worker crashes
(1011, ``crash``), its handler raised or returned with the socket open (1011 or 1000).

Only function routes take WebSocket upgrades: the dashboard, the metrics and the health check
answer them 404. The runtime does not check a WebSocket's ``Origin``: browsers send it, and a
function that authenticates with something a browser sends by itself (a cookie) must check it
(cross-site WebSocket hijacking); the gateway's own credentials are headers a page cannot make
a browser send on a WebSocket.
"""

from __future__ import annotations

import asyncio

from edgeruntime.core.events import StopReason
from edgeruntime.core.types import Message, Receive, Scope, Send
from edgeruntime.exceptions import FunctionError, LimitExceeded

__all__ = ["CLOSE_GOING_AWAY", "CLOSE_INTERNAL_ERROR", "CLOSE_NORMAL", "Socket", "close_for"]

#: RFC 6455 §7.4.1 close codes.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011
#: What the server answers an upgrade request that is closed before it was accepted.
DENIED_BY_CLOSE = 403
#: The ASGI spec version whose servers raise OSError on a send to a client that left.
RAISES_WHEN_GONE = (2, 4)


def _spec_version(scope: Scope) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(scope["asgi"]["spec_version"]).split("."))
    except (KeyError, TypeError, ValueError):
        return (2, 0)


def close_for(exc: Exception) -> tuple[int, str]:
    """The close code and reason for a connection its function could not go on serving because of `exc`."""
    if isinstance(exc, LimitExceeded):
        try:
            reason = StopReason(exc.reason)
        except ValueError:
            return CLOSE_GOING_AWAY, str(exc.reason)
        return CLOSE_GOING_AWAY, reason.unload_reason or reason.key
    if isinstance(exc, FunctionError):
        return CLOSE_INTERNAL_ERROR, StopReason.CRASH.key
    return CLOSE_INTERNAL_ERROR, ""


class Socket:
    """What the gateway knows of one WebSocket connection, between the server and the function.

    `send` passes the function's messages on: an HTTP response (the gateway's own, or one a
    worker answers for its handler) is sent as the WebSocket denial response. A message sent once
    the client left or the runtime closed the connection raises OSError, as ASGI 2.4 has a server
    do (Uvicorn does; Hypercorn drops it), and the scope says 2.4: a function that only sends
    learns so that its client is gone (Starlette's ``WebSocketDisconnect``, code 1006) instead of
    sending on for no one. `receive` notes the client's disconnect. :meth:`close` closes the
    connection for the runtime, once, if it is open.
    """

    __slots__ = (
        "_ahead",
        "_receive",
        "_receiving",
        "_send",
        "accepted",
        "client_gone",
        "close_code",
        "closed",
        "denial",
        "denied_status",
        "looks_ahead",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        #: The server drops a send to a client that left instead of raising: a send looks ahead
        #: at what the client sent, to learn of its leaving.
        self.looks_ahead = _spec_version(scope) < RAISES_WHEN_GONE
        if self.looks_ahead:
            scope["asgi"] = {**(scope.get("asgi") or {}), "spec_version": "2.4"}
        #: The message read from the server ahead of the function's next receive (one at most).
        self._ahead: asyncio.Future[Message] | None = None
        self._receiving = False
        #: The server can answer the upgrade request with a response (ASGI's denial response extension).
        self.denial = "websocket.http.response" in (scope.get("extensions") or {})
        self.accepted = False
        #: A close frame was sent (by the function or the runtime), or the upgrade was refused.
        self.closed = False
        self.client_gone = False
        #: The close code sent or received first.
        self.close_code: int | None = None
        #: The status the upgrade request was refused with (None while it was not refused).
        self.denied_status: int | None = None

    async def receive(self) -> Message:
        ahead = self._ahead
        if ahead is not None and ahead.cancelled():  # cut with the function's tasks: nothing was read
            ahead = self._ahead = None
        if ahead is not None:
            message = await asyncio.shield(ahead)  # a cancelled receive leaves it for the next
            self._ahead = None
        else:
            self._receiving = True
            try:
                message = await self._receive()
            finally:
                self._receiving = False
        self._note(message)
        return message

    def _note(self, message: Message) -> None:
        if message["type"] == "websocket.disconnect":
            self.client_gone = True
            if self.close_code is None:
                self.close_code = message.get("code")

    def _noted(self, ahead: asyncio.Future[Message]) -> None:
        if not ahead.cancelled() and ahead.exception() is None:
            self._note(ahead.result())

    def _look_ahead(self) -> None:
        """Read the client's next message, unless one is read already or being read."""
        if self._ahead is None and not self._receiving and not self.client_gone:
            self._ahead = asyncio.ensure_future(self._receive())
            self._ahead.add_done_callback(self._noted)

    async def send(self, message: Message) -> None:
        kind: str = message["type"]
        if kind == "websocket.send":
            if self.looks_ahead:
                self._look_ahead()
            if self.closed or self.client_gone:
                raise OSError("the WebSocket connection is closed")
            await self._send(message)
            return
        if kind.startswith("http.response."):
            kind = "websocket." + kind
            message = {**message, "type": kind}
        if kind == "websocket.http.response.start":
            self.closed = True
            self.denied_status = message["status"]
            if not self.denial:  # the server then answers 403 itself
                self.denied_status = DENIED_BY_CLOSE
                await self._send({"type": "websocket.close", "code": CLOSE_NORMAL})
                return
        elif kind == "websocket.http.response.body":
            if not self.denial:
                return
        elif kind == "websocket.accept":
            self.accepted = True
        elif kind == "websocket.close":
            if self.closed:
                return
            self.closed = True
            if not self.accepted:
                self.denied_status = DENIED_BY_CLOSE
            elif self.close_code is None:
                self.close_code = message.get("code", CLOSE_NORMAL)
        await self._send(message)

    async def drain(self) -> None:
        """Once the function is done with an accepted connection: read what the client still
        sends, and drop it, until the client has closed its side.

        A server that queues what the client sends (Hypercorn) stops reading the connection while
        its queue is full; once nothing reads that queue any more, the client's close behind it
        would never be read, and the connection would stay open for good.
        """
        while self.accepted and not self.client_gone:
            await self.receive()

    @property
    def open(self) -> bool:
        return self.accepted and not self.closed and not self.client_gone

    async def close(self, code: int, reason: str = "") -> bool:
        """Close the connection for the runtime if it is open; True if a close frame was sent."""
        if not self.open:
            return False
        self.closed = True
        self.close_code = code
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except (OSError, RuntimeError):  # the client left meanwhile
            return False
        return True
