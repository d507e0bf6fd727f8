"""The keep-alive timeouts of a server's idle connections, kept by one timer.

A server closes a keep-alive connection that waits too long for its next request. Uvicorn arms a
timer after every response and cancels it when the next request arrives (about 1.3 µs on uvloop);
Hypercorn starts a task for it, with a second task, a timer and a lock (about 40 µs). Both pay
that on every request of a busy connection. The idle connections of one server share one timeout,
so the one that went idle first is always the next to expire: they wait here in the order they
went idle, and a single timer, armed for the oldest, closes each as its timeout passes (as
:class:`edgeruntime.workers.request_limits.IdleTimeouts` keeps the 504s of requests).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["IdleConnections"]


class IdleConnections:
    """The idle connections of one server, each closed by `close(connection)` at its timeout."""

    __slots__ = ("_loop", "_on_timeout", "_timer", "timeout", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, close: Callable[[Any], None]) -> None:
        self._loop = loop
        self.timeout = timeout
        self._on_timeout = close
        #: Idle connections → when their timeout passes (the loop's clock), oldest first.
        self.waiting: dict[Any, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, connection: Any) -> None:
        """`connection` is idle from now on (its response is written, no request is waiting)."""
        waiting = self.waiting
        waiting.pop(connection, None)  # to the end: the order is the order of the deadlines
        deadline = waiting[connection] = self._loop.time() + self.timeout
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._expire)

    def discard(self, connection: Any) -> None:
        """`connection` is busy again, or closed."""
        self.waiting.pop(connection, None)

    def _expire(self) -> None:
        self._timer = None
        waiting = self.waiting
        now = self._loop.time()
        while waiting:
            connection = next(iter(waiting))
            deadline = waiting[connection]
            if deadline > now:
                self._timer = self._loop.call_at(deadline, self._expire)
                return
            del waiting[connection]
            self._on_timeout(connection)
