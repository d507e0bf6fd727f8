"""Limits of one request: the body size (413) and the idle timeout (504).

The body is measured while it streams in, never buffered: a request that declares a too-large
``content-length`` is refused before the function runs, and one that streams more than the limit
is cut at the first chunk over it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from edgeruntime.context import ExecutionContext
from edgeruntime.exceptions import IdleTimeout, PayloadTooLarge
from edgeruntime.types import Message, Receive, Scope

__all__ = ["BodyLimit", "within_idle_timeout"]

T = TypeVar("T")


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
        return PayloadTooLarge(self.function, f"request body of {self.function} is larger than {self.max_bytes} bytes")

    def check_declared(self, scope: Scope) -> None:
        """Raise PayloadTooLarge if the request's `content-length` is over the limit."""
        for key, value in scope.get("headers", ()):
            if key.lower() == b"content-length":
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


async def within_idle_timeout(awaitable: Awaitable[T], ctx: ExecutionContext, timeout_sec: float) -> T:
    """Await `awaitable`; raise IdleTimeout if no response started within `timeout_sec`.

    The work is cancelled at the timeout (the client gets 504 instead of waiting further).
    """
    task = asyncio.current_task()
    assert task is not None
    fired = False

    def expire() -> None:
        nonlocal fired
        if not ctx.response_started:
            fired = True
            task.cancel()

    timer = asyncio.get_running_loop().call_later(timeout_sec, expire)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if fired and task.uncancel() == 0:
            raise IdleTimeout(
                ctx.function, f"{ctx.function} did not start its response within {timeout_sec:g} s"
            ) from None
        raise
    finally:
        timer.cancel()
