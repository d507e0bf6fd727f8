"""Execution contexts: which function, worker and request the running code belongs to.

Every request gets an :class:`ExecutionContext` with its own execution id; background work
registered with ``EdgeRuntime.wait_until`` inherits it, so log lines and run records of that work
carry the same id. A :class:`WorkerState` is the runtime side of one booted function module: its
env, its event listeners and its background work.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeruntime.core.background import BackgroundTask, BackgroundWork
    from edgeruntime.core.metering import CpuMeter

__all__ = [
    "ExecutionContext",
    "WorkerState",
    "current_context",
    "current_worker",
    "new_execution_id",
]

logger = logging.getLogger("edgeruntime")

EventCallback = Callable[[Any], Awaitable[None] | None]

#: The execution context of the running request or background task, if any.
_current: ContextVar[ExecutionContext | None] = ContextVar("edgeruntime_execution", default=None)
#: The worker whose module is being imported right now (set while a function boots).
booting: ContextVar[WorkerState | None] = ContextVar("edgeruntime_booting", default=None)


#: Random bits of execution ids: ids must be unique, not secret, so a seeded PRNG is enough.
_random = random.Random()
_COUNTER_MASK = (1 << 48) - 1


class _IdParts:
    """What execution ids share: the random part of this process, the current millisecond's prefix."""

    def __init__(self) -> None:
        # rand_a (12 bits), the variant and 14 more bits: drawn once per process.
        self.node = "%03x-%04x" % (_random.getrandbits(12), 0x8000 | _random.getrandbits(14))  # noqa: UP031
        #: The last 48 bits: a counter from a random start, so ids of one process never repeat.
        self.counter = itertools.count(_random.getrandbits(48)).__next__
        #: (millisecond, the id's first 19 characters for it), replaced as one value.
        self.stamp = (-1, "")


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
    stamp = ids.stamp
    if stamp[0] != ms:  # %-formatting: the fastest way to format these (this runs for every request)
        stamp = ids.stamp = (ms, "%08x-%04x-7%s-" % (ms >> 16, ms & 0xFFFF, ids.node))  # noqa: UP031
    return "%s%012x" % (stamp[1], ids.counter() & _COUNTER_MASK)  # noqa: UP031


class WorkerState:
    """The runtime state of one booted function: env, listeners and background work."""

    def __init__(
        self,
        function: str,
        env: Mapping[str, str] | None = None,
        observers: list[Callable[[BackgroundTask], None]] | None = None,
    ) -> None:
        from edgeruntime.core.background import BackgroundWork

        self.function = function
        self.worker_id = str(uuid.uuid4())
        self.env: Mapping[str, str] = env if env is not None else os.environ
        self.listeners: dict[str, list[EventCallback]] = {}
        self.background: BackgroundWork = BackgroundWork(self, observers)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.beforeunload_fired: set[str] = set()
        #: Handlers passed to `serve()` while this worker's module was being imported.
        self.handlers: list[Any] = []

    def add_listener(self, event: str, callback: EventCallback) -> None:
        self.listeners.setdefault(event, []).append(callback)

    def remove_listener(self, event: str, callback: EventCallback) -> None:
        callbacks = self.listeners.get(event, [])
        if callback in callbacks:
            callbacks.remove(callback)

    async def dispatch(self, event_name: str, event: Any) -> None:
        """Call every listener of `event_name`; a listener that raises is logged, never propagated."""
        for callback in list(self.listeners.get(event_name, ())):
            try:
                result = callback(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception(
                    "%s listener of function %s raised",
                    event_name,
                    self.function,
                    extra={"function": self.function},
                )

    async def dispatch_beforeunload(self, reason: str) -> None:
        """Dispatch `beforeunload` once per reason, as the edge runtime does."""
        if reason in self.beforeunload_fired:
            return
        self.beforeunload_fired.add(reason)
        from edgeruntime.runtime import BeforeUnloadEvent

        await self.dispatch("beforeunload", BeforeUnloadEvent(reason))


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

    def activate(self) -> Any:
        """Make this the current context; returns a token for :meth:`deactivate`."""
        return _current.set(self)

    @staticmethod
    def deactivate(token: Any) -> None:
        _current.reset(token)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for the background work this invocation registered; raise its errors."""
        await self.worker.background.drain(timeout=timeout, only=self)


_default_worker: WorkerState | None = None


def default_worker() -> WorkerState:
    """The worker that code outside any function (a unit test) runs in."""
    global _default_worker
    if _default_worker is None:
        _default_worker = WorkerState("<default>")
    return _default_worker


def current_context() -> ExecutionContext | None:
    """The execution context of the running code, or None outside any invocation."""
    return _current.get()


def current_worker() -> WorkerState:
    """The worker of the running code: the booting one, the request's, or the default."""
    ctx = _current.get()
    if ctx is not None:
        return ctx.worker
    state = booting.get()
    if state is not None:
        return state
    return default_worker()
