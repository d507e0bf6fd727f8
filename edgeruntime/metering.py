"""CPU metering of inline workers, and the watchdog that reports a blocked event loop.

An inline worker shares the server's event loop, so its CPU time is measured, not sampled: every
coroutine the worker runs (the request handler and each ``wait_until`` task) is driven step by step
by :func:`metered`, which adds the thread CPU time of each step to the worker's
:class:`CpuMeter`. Waiting at an ``await`` is never charged. Sync handlers run in a thread and are
charged that thread's CPU time.
Limits are checked at step boundaries, so a limit is enforced at the next ``await`` of the
function; code that never awaits (``while True: pass``) cannot be stopped inline, only reported
by the :class:`LoopWatchdog`. Process isolation stops it (see :mod:`edgeruntime.process`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, TypeVar

from edgeruntime.context import current_context

__all__ = ["CpuMeter", "LoopWatchdog", "metered", "run_in_thread_metered", "run_metered"]

logger = logging.getLogger("edgeruntime")

T = TypeVar("T")

#: The function whose code the event loop thread is running right now (read by the watchdog).
_running: str | None = None


class CpuMeter:
    """CPU time used by one worker (or one request), with a callback when a threshold is crossed."""

    __slots__ = ("function", "next_check_ms", "on_threshold", "used_ms")

    def __init__(self, function: str, on_threshold: Callable[[float], None] | None = None) -> None:
        self.function = function
        self.used_ms = 0.0
        #: `on_threshold(used_ms)` is called once `used_ms` reaches this; the callback moves it on.
        self.next_check_ms = math.inf
        self.on_threshold = on_threshold

    def add(self, ms: float) -> None:
        self.used_ms += ms
        if self.used_ms >= self.next_check_ms and self.on_threshold is not None:
            self.on_threshold(self.used_ms)


@types.coroutine
def metered(awaitable: Awaitable[T], meter: CpuMeter) -> Generator[Any, Any, T]:
    """Drive `awaitable`, adding the CPU time of each of its steps to `meter`."""
    global _running
    coro = awaitable.__await__()
    send = coro.send
    # The thread CPU clock, though reading it is a system call (about 1 us here, twice a step):
    # the monotonic clock would also charge the time other threads and processes held the CPU
    # in the middle of a step, which on a loaded machine can end a worker that used little.
    clock = time.thread_time
    function = meter.function
    send_value: Any = None
    error: BaseException | None = None
    while True:
        previous = _running
        _running = function
        started = clock()
        try:
            yielded = send(send_value) if error is None else coro.throw(error)
        except StopIteration as stop:
            _running = previous
            used = meter.used_ms = meter.used_ms + (clock() - started) * 1000
            if used >= meter.next_check_ms and meter.on_threshold is not None:
                meter.on_threshold(used)
            result: T = stop.value
            return result
        except BaseException:
            _running = previous
            meter.add((clock() - started) * 1000)
            raise
        _running = previous
        # meter.add, inlined: this runs at every step of every function.
        used = meter.used_ms = meter.used_ms + (clock() - started) * 1000
        if used >= meter.next_check_ms and meter.on_threshold is not None:
            meter.on_threshold(used)
        try:
            send_value = yield yielded
            error = None
        except BaseException as exc:  # a cancellation or a throw() reaches the function's code
            send_value = None
            error = exc


async def run_in_thread_metered(fn: Callable[..., T], *args: Any) -> T:
    """Run a sync `fn` in a worker thread, charging its thread CPU time to the invocation's meter.

    The charge is added when `fn` returns (a thread cannot be interrupted), so a sync handler that
    used too much CPU ends its worker right after it returns.
    """
    import anyio.to_thread

    def timed() -> tuple[T, float]:
        started = time.thread_time()
        result = fn(*args)
        return result, (time.thread_time() - started) * 1000

    result, used_ms = await anyio.to_thread.run_sync(timed)
    ctx = current_context()
    if ctx is not None and ctx.meter is not None:
        ctx.meter.add(used_ms)
    return result


async def run_metered(coro: Coroutine[Any, Any, T], meter: CpuMeter) -> T:
    """`metered` as a coroutine (what ``asyncio.create_task`` needs)."""
    return await metered(coro, meter)


class LoopWatchdog:
    """Logs, from its own thread, when a function holds the event loop for more than `threshold_sec`.

    The loop beats every `interval_sec`; a beat that is late by more than the threshold means
    some code ran that long without awaiting. One line is logged per blocking episode.
    """

    def __init__(self, threshold_sec: float = 1.0, interval_sec: float = 0.1) -> None:
        self.threshold_sec = threshold_sec
        self.interval_sec = interval_sec
        self.last_beat = time.monotonic()
        self.reports: list[tuple[str | None, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start beating in the running loop and watching from a daemon thread."""
        self._loop = asyncio.get_running_loop()
        self.last_beat = time.monotonic()
        self._beat()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="edgeruntime-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _beat(self) -> None:
        self.last_beat = time.monotonic()
        assert self._loop is not None
        self._handle = self._loop.call_later(self.interval_sec, self._beat)

    def _watch(self) -> None:
        reported_beat = -1.0
        while not self._stop.wait(self.interval_sec):
            beat = self.last_beat
            held = time.monotonic() - beat
            if held > self.threshold_sec and beat != reported_beat:
                reported_beat = beat
                function = _running
                self.reports.append((function, held))
                logger.warning(
                    "function %s has held the event loop for %.1f s without awaiting: every request of "
                    'every function waits meanwhile (use isolation = "process" for CPU-bound code)',
                    function or "<unknown>",
                    held,
                    extra={"function": function},
                )
