"""Limits of one request: the body size (413) and the idle timeout (504).

The body is measured while it streams in, never buffered: a request that declares a too-large
``content-length`` is refused before the function runs, and one that streams more than the limit
is cut at the first chunk over it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from edgeruntime.core.context import ExecutionContext
from edgeruntime.core.types import Message, Receive, Scope
from edgeruntime.exceptions import PayloadTooLarge

__all__ = ["BodyLimit", "IdleTimeouts"]


class BodyLimit:
    """Wraps an ASGI `receive`, raising PayloadTooLarge once more than `max_bytes` arrived."""

    __slots__ = ("_receive", "exceeded", "function", "max_bytes", "received")

    def __init__(self, receive: Receive, function: str, max_bytes: int) -> None:
        self._receive = receive
        self.function = function
        self.max_bytes = max_bytes
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
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.max_bytes:
                self.exceeded = True
                raise self.error()
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
        loop = asyncio.get_running_loop()
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
