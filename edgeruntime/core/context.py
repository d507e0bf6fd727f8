"""Execution contexts: which function, worker and request the running code belongs to.

Every request gets an :class:`ExecutionContext` with its own execution id; background work
registered with ``EdgeRuntime.wait_until`` inherits it, so log lines and run records of that work
carry the same id. The function worker it runs in is described by
:class:`edgeruntime.core.worker_state.WorkerState`.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    from edgeruntime.core.background import BackgroundTask
    from edgeruntime.core.metering import CpuMeter
    from edgeruntime.core.types import Enqueue
    from edgeruntime.core.worker_state import WorkerState

__all__ = ["ExecutionContext", "current_context", "enter_context", "leave_context", "new_execution_id"]

#: The execution context of the running request or background task, if any.
_current: ContextVar[ExecutionContext | None] = ContextVar("edgeruntime_execution", default=None)
#: In a worker process (process isolation): enqueues a job through the server, which holds the
#: jobs store (set by :mod:`edgeruntime.workers.process.child`, used by ``edgeruntime.jobs.enqueue``).
server_enqueue: Enqueue | None = None


#: Random bits of execution ids: ids must be unique, not secret, so a seeded PRNG is enough.
_random = random.Random()
_COUNTER_MASK = (1 << 48) - 1
#: "00" to "ff", by value.
_HEX_BYTES = [_hex[i : i + 2] for _hex in (bytes(range(256)).hex(),) for i in range(0, 512, 2)]


class _IdParts:
    """What execution ids share: the random part of this process, the current millisecond's prefix."""

    def __init__(self) -> None:
        # rand_a (12 bits), the variant and 14 more bits: drawn once per process.
        self.node = "%03x-%04x" % (_random.getrandbits(12), 0x8000 | _random.getrandbits(14))  # noqa: UP031
        #: The last 48 bits: a counter from a random start, so ids of one process never repeat.
        self.counter = itertools.count(_random.getrandbits(48)).__next__
        #: (millisecond, the counter's value but its last 8 bits, the id but its last 2 characters
        #: for them), replaced as one value.
        self.stamp: tuple[int, int, str] = (-1, -1, "")
        #: (the millisecond's top 32 bits, their 8 hex digits and a dash): they change every 65 s.
        self.head: tuple[int, str] = (-1, "")
        #: (the counter's value but its last 8 bits, the id's characters from the dash before the
        #: version to the counter's last 2 hex digits): they change every 256 ids.
        self.tail: tuple[int, str] = (-1, "")


_ids = _IdParts()


def _reseed() -> None:
    global _ids
    _random.seed()  # a forked child must not repeat its parent's ids
    _ids = _IdParts()


os.register_at_fork(after_in_child=_reseed)


def new_execution_id() -> str:
    """Return a fresh execution id: a UUID, version 7 (RFC 9562), as `SB_EXECUTION_ID` is a UUID.

    Version 7 starts with the time in milliseconds, so ids sort by time and the run history's
    index on them grows at one end instead of at random places. The other 74 bits are random
    per process (26) and a counter (48): unique within a process, and across processes unless
    two draw the same 26 bits and overlapping counters in the same millisecond.
    """
    ids = _ids
    ms = time.time_ns() // 1_000_000
    count = ids.counter() & _COUNTER_MASK
    high = count >> 8
    stamp = ids.stamp
    # This runs for every request, and formatting numbers is its dear part: an id is made of parts
    # formatted when they change, the millisecond's and the counter's last 8 bits looked up.
    if stamp[0] != ms or stamp[1] != high:  # a new millisecond, or 256 more ids
        head = ids.head
        if head[0] != ms >> 16:
            head = ids.head = (ms >> 16, "%08x-" % (ms >> 16))
        tail = ids.tail
        if tail[0] != high:
            tail = ids.tail = (high, "-7%s-%010x" % (ids.node, high))  # noqa: UP031
        stamp = ids.stamp = (ms, high, head[1] + _HEX_BYTES[(ms >> 8) & 0xFF] + _HEX_BYTES[ms & 0xFF] + tail[1])
    return stamp[2] + _HEX_BYTES[count & 0xFF]


@dataclass(eq=False, slots=True)
class ExecutionContext:
    """One invocation of a function (an HTTP request, a cron tick or a queued job)."""

    function: str
    worker: WorkerState
    execution_id: str = field(default_factory=new_execution_id)
    trigger: str = "http"
    response_started: bool = False
    status: int | None = None
    tasks: set[BackgroundTask] = field(default_factory=set)
    #: Counts the CPU of this invocation's code (its worker's meter, or its own budget's).
    meter: CpuMeter | None = None
    #: Set when the request idle timeout cancelled it (the gateway answers 504).
    idle_expired: bool = False
    #: What the handler raised ("KeyError: 'userId'"), for the run record; None when it did not.
    error: str | None = None
    #: Set when the client went away before the response started (recorded as 499).
    client_disconnected: bool = False
    #: Set once the last chunk of the response body was sent.
    response_ended: bool = False
    #: Set when the client went away after the response started, before it ended (a stream cut short).
    client_left: bool = False
    #: The task serving the request, while the supervisor dispatches it (found once per request:
    #: `asyncio.current_task()` costs a system call on Python 3.11).
    task: asyncio.Task[Any] | None = None

    def activate(self) -> Any:
        """Make this the current context; returns a token for :meth:`deactivate`."""
        return _current.set(self)

    @staticmethod
    def deactivate(token: Any) -> None:
        _current.reset(token)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for the background work this invocation registered; raise its errors."""
        await self.worker.background.drain(timeout=timeout, only=self)


#: `enter_context(ctx)` makes `ctx` the current context and returns a token; `leave_context(token)`
#: restores the one before (what `ExecutionContext.activate` and `deactivate` do, without their
#: method call: the request path uses these).
enter_context = _current.set
leave_context = _current.reset


def current_context() -> ExecutionContext | None:
    """The execution context of the running code, or None outside any invocation."""
    return _current.get()
