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
    worker answers for its handler) is sent as the WebSocket denial response, and nothing is
    sent after a close. `receive` notes the client's disconnect. :meth:`close` closes the
    connection for the runtime, once, if it is open.
    """

    __slots__ = ("_receive", "_send", "accepted", "client_gone", "close_code", "closed", "denial", "denied_status")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
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
        message = await self._receive()
        if message["type"] == "websocket.disconnect":
            self.client_gone = True
            if self.close_code is None:
                self.close_code = message.get("code")
        return message

    async def send(self, message: Message) -> None:
        kind: str = message["type"]
        if kind == "websocket.send":
            if not self.closed:
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
