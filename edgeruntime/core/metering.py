"""CPU metering of inline workers, and the watchdog that reports a blocked event loop.

An inline worker shares the server's event loop, so its CPU time is measured, not sampled: every
coroutine the worker runs (the request handler and each ``wait_until`` task) is driven step by step
by :func:`metered`, which times each step with the wall clock and charges it to the worker's
:class:`CpuMeter`. Waiting at an ``await`` is never charged. The thread CPU clock is a system call,
so it is read per event loop iteration, not per step: the first step of an iteration opens a batch
(thread CPU and wall clock read once) and the steps of that iteration are settled together at the
start of the next one, each charged its wall time times the thread's on-CPU share of the batch's
window. A step does not block, so the rest of its wall time is time other threads and processes
held the CPU, which is not charged. Each thread (each event loop) has its own batch. Code that
reads a meter to decide or report calls :func:`settle` first. Sync handlers run in a thread and
are charged that thread's CPU time.
A task that metered code creates (``asyncio.create_task``, ``asyncio.gather``, ``wait_for``) is
metered too, to the meter of the step that created it: the loop's task factory
(:func:`install_task_factory`, installed on every loop that runs metered code) wraps its coroutine
in :func:`metered`, and registers the task with the execution that spawned it, so a limit that cuts
the execution's work cancels it as well. So `wait_until(asyncio.gather(burn()))` is charged all the
CPU of `burn`, and so is a background coroutine's own ``create_task(burn())``.
Limits are checked when a batch is settled, before the next step of each coroutine it charged, so
a limit is enforced at the next ``await`` of the function; code that never awaits
(``while True: pass``) cannot be stopped inline, only reported by the :class:`LoopWatchdog`.
Process isolation stops it (see :mod:`edgeruntime.workers.process.parent`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import types
from asyncio import AbstractEventLoop
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, TypeVar

from edgeruntime.core.context import current_context
from edgeruntime.core.threads import sync_handler_threads

__all__ = [
    "CpuMeter",
    "LoopWatchdog",
    "install_task_factory",
    "makes_plain_tasks",
    "metered",
    "run_in_thread_metered",
    "run_metered",
    "settle",
]

logger = logging.getLogger("edgeruntime")

T = TypeVar("T")

#: The function whose code the event loop thread is running right now (read by the watchdog).
_running: str | None = None
#: Read at every step: module globals, not attributes of modules.
_perf_counter = time.perf_counter
_CoroutineType = types.CoroutineType


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


class _Batch:
    """The steps an event loop ran since the batch opened, each as (meter, wall seconds)."""

    __slots__ = ("cpu_start", "loop", "steps", "wall_start")

    def __init__(self, loop: AbstractEventLoop) -> None:
        self.loop = loop
        self.steps: list[tuple[CpuMeter, float]] = []
        self.cpu_start = time.thread_time()
        self.wall_start = time.perf_counter()

    def charge(self, close: bool = False) -> None:
        """Charge the steps so far to their meters; then close the batch or start a new window."""
        cpu_end = time.thread_time()
        wall_end = time.perf_counter()
        if close:
            thread = _threads.state
            if thread.batch is self:
                thread.batch = None
        steps = self.steps
        if not steps:
            return
        wall = wall_end - self.wall_start
        on_cpu = (cpu_end - self.cpu_start) / wall if wall > 0 else 1.0
        scale = 1000.0 if on_cpu >= 1.0 else on_cpu * 1000
        if not close:
            self.steps = []
            self.cpu_start, self.wall_start = cpu_end, wall_end
        for meter, seconds in steps:
            used = meter.used_ms = meter.used_ms + seconds * scale
            if used >= meter.next_check_ms and meter.on_threshold is not None:
                try:
                    meter.on_threshold(used)
                except Exception:  # the other steps of the batch must still be charged
                    logger.exception("the CPU limit callback of function %s failed", meter.function)


class _ThreadState:
    """The metering state of one thread (plain attributes: read and set several times per step)."""

    __slots__ = ("batch", "loop", "meter")

    def __init__(self) -> None:
        #: The open batch of the event loop this thread runs.
        self.batch: _Batch | None = None
        #: The loop of this thread's last batch.
        self.loop: AbstractEventLoop | None = None
        #: The meter of the step this thread is running (None outside metered code): a task created
        #: in the step is charged to it too.
        self.meter: CpuMeter | None = None


class _PerThread(threading.local):
    """Each thread's `_ThreadState`, found with one thread-local lookup per step."""

    def __init__(self) -> None:
        self.state = _ThreadState()


_threads = _PerThread()


def _open(thread: _ThreadState) -> _Batch | None:
    """Open a batch for this thread's running loop, closed at its next iteration (None: no loop)."""
    loop = thread.loop
    # asyncio._get_running_loop() makes a getpid() system call (Python 3.11): while the loop of
    # the last batch runs, it is the loop of this thread (a loop runs in one thread at a time).
    if loop is None or not loop.is_running():
        loop = thread.loop = asyncio._get_running_loop()
        if loop is None:
            return None
        install_task_factory(loop)
    batch = _Batch(loop)
    try:
        # An iteration of the loop runs only the callbacks queued before it began: this one runs
        # in the next iteration, ahead of every step woken from now on (the next step of each
        # coroutine in the batch included), so a limit the batch crosses acts before those steps.
        loop.call_soon(batch.charge, True)
    except RuntimeError:  # the loop is closing
        return None
    thread.batch = batch
    return batch


def settle() -> None:
    """Charge the steps this thread's event loop has metered so far, without waiting for its next iteration.

    Call it before reading a meter to decide or report.
    """
    batch = _threads.state.batch
    if batch is not None and batch.loop.is_running():
        batch.charge()


class _Metered(Coroutine[Any, Any, T]):
    """A coroutine that drives another, charging the CPU time of each of its steps to a meter.

    An object rather than a generator under an ``async def``: a ``wait_until`` task waiting for
    seconds keeps this (two references) instead of a coroutine and a generator with their frames,
    about 500 bytes less per pending task. A task steps it like any coroutine; ``await`` does too.
    """

    __slots__ = ("_coro", "_meter")

    def __init__(self, awaitable: Awaitable[T], meter: CpuMeter) -> None:
        # A coroutine is driven directly (its __await__ would add a wrapper to every step).
        self._coro: Any = awaitable if type(awaitable) is _CoroutineType else awaitable.__await__()
        self._meter = meter

    def __await__(self) -> Generator[Any, None, T]:
        return self  # type: ignore[return-value]  # an iterator with send and throw, as await needs

    def send(self, value: Any = None, _error: BaseException | None = None) -> Any:
        """One step of the driven coroutine (with `value`, or `_error` thrown in), metered."""
        global _running
        meter = self._meter
        thread = _threads.state
        previous = _running
        _running = meter.function
        outer = thread.meter
        thread.meter = meter
        batch = thread.batch
        # A batch whose loop stopped before settling it is left to that loop.
        if batch is None or not batch.loop.is_running():
            batch = _open(thread)
        started = _perf_counter() if batch is not None else time.thread_time()
        try:
            yielded = self._coro.send(value) if _error is None else self._coro.throw(_error)
        finally:
            _running = previous
            thread.meter = outer
            if batch is not None:
                batch.steps.append((meter, _perf_counter() - started))
            else:  # no running loop to settle a batch: charge the step exactly
                meter.add((time.thread_time() - started) * 1000)
        return yielded

    #: A task (and ``await``) steps a coroutine that is not native with `__next__` when it sends None.
    __next__ = send

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        """Throw an exception into the driven coroutine (a cancellation, say), as a step of it."""
        if val is None:
            error = typ if isinstance(typ, BaseException) else typ()
        else:
            error = val if isinstance(val, BaseException) else typ(val)
        if tb is not None:
            error = error.with_traceback(tb)
        return self.send(None, error)

    def close(self) -> None:
        """Close the driven coroutine (GeneratorExit thrown in, as a step of it)."""
        try:
            self.throw(GeneratorExit)
        except (GeneratorExit, StopIteration):
            pass
        else:
            raise RuntimeError("coroutine ignored GeneratorExit")


#: `metered(awaitable, meter)`: drive `awaitable`, adding the CPU time of each of its steps to
#: `meter`, charged once per iteration of the event loop (see the module docstring). The result
#: can be awaited or given to ``asyncio.create_task`` (a task of it is not metered twice).
metered = _Metered


async def run_in_thread_metered(fn: Callable[..., T], *args: Any) -> T:
    """Run a sync `fn` in a sync-handler thread, charging its thread CPU time to the invocation's meter.

    The charge is added when `fn` returns (a thread cannot be interrupted), so a sync handler that
    used too much CPU ends its worker right after it returns.
    """

    def timed() -> tuple[T, float]:
        started = time.thread_time()
        result = fn(*args)
        return result, (time.thread_time() - started) * 1000

    ctx = current_context()
    result, used_ms = await sync_handler_threads().run(timed, ctx.function if ctx is not None else "<unknown>")
    if ctx is not None and ctx.meter is not None:
        ctx.meter.add(used_ms)
    return result


#: `metered` under the name a task's maker looks for (its result is a coroutine a task accepts).
run_metered = metered


class _MeteringTaskFactory:
    """The task factory of a loop that runs metered code: see the module docstring.

    Calls the loop's previous factory, if it had one, to make the task.
    """

    __slots__ = ("inner", "passes_metered")

    def __init__(self, inner: Callable[..., asyncio.Future[Any]] | None) -> None:
        self.inner = inner
        #: Whether the task of a `metered` coroutine is the plain `asyncio.Task` the loop would
        #: make without a factory (there is no previous factory): its maker may make it directly.
        self.passes_metered = inner is None

    def __call__(self, loop: AbstractEventLoop, coro: Any, **options: Any) -> asyncio.Future[Any]:
        meter = _threads.state.meter
        if meter is not None and type(coro) is types.CoroutineType:
            coro = _Metered(coro, meter)
        else:
            meter = None
        inner = self.inner
        task: asyncio.Future[Any] = (
            asyncio.Task(coro, loop=loop, **options) if inner is None else inner(loop, coro, **options)
        )
        if meter is not None:
            ctx = current_context()
            if ctx is not None:
                ctx.worker.background.spawned(task, ctx)
        return task


def makes_plain_tasks(loop: AbstractEventLoop) -> bool:
    """Whether `loop` makes the task of a metered coroutine, or of any coroutine outside metered
    code, as `asyncio.Task` would: it has no task factory, or only the meter's with none under it
    (which passes those through). Its maker may then call `asyncio.Task` itself, without a call
    of the factory in between (the request path does)."""
    factory = loop.get_task_factory()
    return factory is None or (isinstance(factory, _MeteringTaskFactory) and factory.passes_metered)


def install_task_factory(loop: AbstractEventLoop) -> None:
    """Meter the tasks that metered code creates on `loop` (done for every loop that runs metered code)."""
    factory = loop.get_task_factory()
    if not isinstance(factory, _MeteringTaskFactory):
        loop.set_task_factory(_MeteringTaskFactory(factory))


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
