"""Limits of one request: the head size (431), the body size (413), the size of a WebSocket
message (1009) and the idle timeout (504).

The body is measured while it streams in, never buffered: a request that declares a too-large
``content-length`` is refused before the function runs, and one that streams more than the limit
is cut at the first chunk over it.

The head (request line and headers) is limited to MAX_HEAD_BYTES on both servers. Hypercorn's
HTTP/1.1 parser (h11) answers 431 once that much of a head is buffered without its end, but it
reads up to 64 KiB at a time, so a larger head that arrives in one read would pass: `limit_head`
refuses those. Under Uvicorn the same limit is kept by the protocol, as the bytes arrive
(:mod:`edgeruntime.serving.uvicorn_http`). There is no separate count of headers: a header line takes 4
bytes at least, so no head within the limit holds more than about 4,000 of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from itertools import chain
from typing import Any

from edgeruntime.core.context import ExecutionContext
from edgeruntime.core.types import ASGIApp, Message, Receive, Scope, Send
from edgeruntime.exceptions import PayloadTooLarge

__all__ = ["MAX_HEAD_BYTES", "BodyLimit", "IdleTimeouts", "MessageLimit", "declares_no_body", "head_size", "limit_head"]

logger = logging.getLogger("edgeruntime")

#: The largest request head (request line and headers) served: h11's buffer limit, Hypercorn's.
MAX_HEAD_BYTES = 16 * 1024
#: What a head over the limit gets, as Hypercorn sends it: 431, no body, the connection closed.
HEAD_TOO_LARGE_HEADERS = [(b"content-length", b"0"), (b"connection", b"close")]


def head_size(scope: Scope) -> int:
    """The size of the request head `scope` was parsed from, at least (the shortest spelling of it)."""
    # "METHOD path?query HTTP/1.1\r\n", "name:value\r\n" per header, the blank line.
    query = scope.get("query_string") or b""
    size = len(scope.get("method", "")) + len(scope.get("raw_path") or b"") + len(query) + bool(query) + 14
    headers = scope["headers"]
    # Summed without a Python loop: it runs on every request under Hypercorn.
    return size + sum(map(len, chain.from_iterable(headers))) + 3 * len(headers)


def limit_head(app: ASGIApp, cors: Callable[[Scope], list[tuple[bytes, bytes]]] | None = None) -> ASGIApp:
    """`app`, with requests whose head is over MAX_HEAD_BYTES answered 431 before it sees them.

    `cors(scope)` gives the CORS headers the 431 carries (the gateway's, on function routes).
    """

    async def limited(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or head_size(scope) <= MAX_HEAD_BYTES:
            await app(scope, receive, send)
            return
        headers = [*HEAD_TOO_LARGE_HEADERS, *(cors(scope) if cors is not None else ())]
        prefix = "" if scope["type"] == "http" else "websocket."  # a WebSocket handshake: its denial response
        await send({"type": prefix + "http.response.start", "status": 431, "headers": headers})
        await send({"type": prefix + "http.response.body", "body": b""})

    return limited


#: HTTP versions whose requests have a body only if they declare one.
_DECLARED_BODY_VERSIONS = frozenset({"1.0", "1.1"})


def declares_no_body(scope: Scope) -> bool:
    """True for an HTTP/1 request with no transfer-encoding and no content-length but 0: its body
    is empty (RFC 9112, 6.3), known without reading it. (An HTTP/2 request may send data without
    declaring its length.)"""
    if scope.get("http_version") not in _DECLARED_BODY_VERSIONS:
        return False
    for key, value in scope["headers"]:
        name = key.lower()
        if (name == b"content-length" and value.strip() != b"0") or name == b"transfer-encoding":
            return False
    return True


class BodyLimit:
    """Wraps an ASGI `receive`, raising PayloadTooLarge once more than `max_bytes` arrived.

    With `ctx`, a client that goes away before the response started (``http.disconnect``) is
    noted on it (`client_disconnected`), so the gateway records the request as such.
    """

    __slots__ = ("_receive", "ctx", "exceeded", "function", "max_bytes", "received")

    def __init__(self, receive: Receive, function: str, max_bytes: int, ctx: ExecutionContext | None = None) -> None:
        self._receive = receive
        self.function = function
        self.max_bytes = max_bytes
        self.ctx = ctx
        self.received = 0
        self.exceeded = False

    def error(self) -> PayloadTooLarge:
        return PayloadTooLarge(self.function, self.max_bytes)

    def check_declared(self, scope: Scope) -> None:
        """Raise PayloadTooLarge if the request's `content-length` is over the limit."""
        for key, value in scope["headers"]:
            if key == b"content-length":  # ASGI header names are lower-case
                try:
                    declared = int(value)
                except ValueError:
                    return
                if declared > self.max_bytes:
                    self.exceeded = True
                    raise self.error()
                return

    async def receive(self) -> Message:
        if self.exceeded:
            raise self.error()
        message = await self._receive()
        kind = message["type"]
        if kind == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.max_bytes:
                self.exceeded = True
                raise self.error()
        elif kind == "http.disconnect" and self.ctx is not None and not self.ctx.response_ended:
            if self.ctx.response_started:
                self.ctx.client_left = True  # a streamed response cut short
            else:
                self.ctx.client_disconnected = True
        return message


#: The close code of a WebSocket connection that sent a message over the limit (RFC 6455: too big).
CLOSE_MESSAGE_TOO_BIG = 1009


class MessageLimit:
    """Wraps the `receive` of a WebSocket connection: a message over `max_bytes` closes it with 1009.

    The function then receives a disconnect (code 1009); the client gets the close frame. With
    `ctx`, a client that goes away before its upgrade was answered is noted on it, as BodyLimit does.
    """

    __slots__ = ("_receive", "_send", "ctx", "exceeded", "function", "max_bytes")

    def __init__(
        self, receive: Receive, send: Send, function: str, max_bytes: int, ctx: ExecutionContext | None = None
    ) -> None:
        self._receive = receive
        self._send = send
        self.function = function
        self.max_bytes = max_bytes
        self.ctx = ctx
        self.exceeded = False

    def _size(self, message: Message) -> int:
        data = message.get("bytes")
        if data is not None:
            return len(data)
        text = message.get("text") or ""
        # UTF-8 takes 1 to 4 bytes a character: encode only when the text may be over the limit.
        return len(text) if len(text) * 4 <= self.max_bytes else len(text.encode())

    async def receive(self) -> Message:
        if self.exceeded:
            return {"type": "websocket.disconnect", "code": CLOSE_MESSAGE_TOO_BIG}
        message = await self._receive()
        kind = message["type"]
        if kind == "websocket.receive":
            size = self._size(message)
            if size > self.max_bytes:
                self.exceeded = True
                logger.warning(
                    "a WebSocket message of %d bytes to function %s is over its max_websocket_message_mb "
                    "(%d bytes): the connection is closed with %d",
                    size,
                    self.function,
                    self.max_bytes,
                    CLOSE_MESSAGE_TOO_BIG,
                    extra={"function": self.function},
                )
                if self.ctx is not None:
                    self.ctx.error = f"a WebSocket message of {size} bytes is over {self.max_bytes} bytes"
                await self._send(
                    {"type": "websocket.close", "code": CLOSE_MESSAGE_TOO_BIG, "reason": "message too big"}
                )
                return {"type": "websocket.disconnect", "code": CLOSE_MESSAGE_TOO_BIG}
        elif kind == "websocket.disconnect" and self.ctx is not None and not self.ctx.response_started:
            self.ctx.client_disconnected = True
        return message


class IdleTimeouts:
    """The idle timeout (504) of every in-flight request of one function, kept by one timer.

    A request that has not started its response `timeout_sec` after it arrived is cancelled.
    Requests are registered in arrival order and share one timeout, so the oldest one is always
    the next to expire: a single timer, armed for the oldest request still waiting, serves them
    all (a timer per request would be created and cancelled on every request's path).
    """

    __slots__ = ("_timer", "_timer_loop", "timeout_sec", "waiting")

    def __init__(self, timeout_sec: float) -> None:
        self.timeout_sec = timeout_sec
        #: Requests without a response yet: context → (deadline on the loop's clock, its task).
        self.waiting: dict[ExecutionContext, tuple[float, asyncio.Task[Any]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def start(self, ctx: ExecutionContext, task: asyncio.Task[Any]) -> None:
        """Watch `task`, serving `ctx`, from now on."""
        loop = task.get_loop()  # (asyncio.get_running_loop() makes a system call on Python 3.11)
        deadline = loop.time() + self.timeout_sec
        self.waiting[ctx] = (deadline, task)
        if self._timer_loop is not loop:  # no timer yet (or only one on a loop that has gone)
            self._arm(loop, deadline)

    def _arm(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        self._timer = loop.call_at(deadline, self._expire, loop)
        self._timer_loop = loop

    def finish(self, ctx: ExecutionContext) -> None:
        """Stop watching `ctx` (its request ended)."""
        self.waiting.pop(ctx, None)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = self._timer_loop = None
        now = loop.time()
        waiting = self.waiting
        while waiting:
            ctx = next(iter(waiting))
            deadline, task = waiting[ctx]
            if deadline > now and not ctx.response_started:
                self._arm(loop, deadline)
                return
            del waiting[ctx]
            if not ctx.response_started:
                ctx.idle_expired = True
                task.cancel()

    def close(self) -> None:
        """Forget every request and the timer (the function is shutting down)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_loop = None
        self.waiting.clear()
