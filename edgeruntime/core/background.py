"""Background work registered with ``EdgeRuntime.wait_until``.

Work is tracked per worker and per invocation. It never delays a response, and an exception in
it is logged (function, execution id, traceback), recorded and reported to ``unhandledrejection``
listeners, without harming the worker, the server or the other tasks. Work cancelled by the
runtime (a limit, a shutdown) is recorded as cut, never as failed: that includes an
``asyncio.gather`` that ends with a ``CancelledError`` exception rather than as cancelled.

The tasks that an execution's code creates itself (``asyncio.create_task``, the children of a
``gather``) are not background work of their own, but they belong to the execution: they are
charged to its CPU meter (see :mod:`edgeruntime.core.metering`) and cancelled with its work.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgeruntime.core.events import UnhandledRejectionEvent
from edgeruntime.core.metering import makes_plain_tasks

if TYPE_CHECKING:
    from edgeruntime.core.context import ExecutionContext
    from edgeruntime.core.worker_state import WorkerState

__all__ = ["BackgroundTask", "BackgroundWork", "TaskOutcome"]

logger = logging.getLogger("edgeruntime.background")

#: Task names kept per worker for reuse, at most.
MAX_TASK_NAMES = 256


class TaskOutcome(enum.StrEnum):
    """How a background task ended."""

    #: Still running.
    PENDING = "pending"
    #: Returned normally.
    COMPLETED = "completed"
    #: Raised an exception.
    FAILED = "failed"
    #: Cancelled by the runtime: a limit, a shutdown or an early drop (see ``cut_reason``).
    CUT = "cut"


@dataclass(eq=False, slots=True)
class BackgroundTask:
    """One awaitable handed to ``wait_until`` and what became of it."""

    task: asyncio.Future[Any]
    name: str
    function: str
    execution_id: str
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    outcome: TaskOutcome = TaskOutcome.PENDING
    error: BaseException | None = None
    cut_reason: str | None = None

    @property
    def duration_ms(self) -> float | None:
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at) * 1000


def _task_name(awaitable: Awaitable[Any]) -> str:
    if type(awaitable).__name__ == "_GatheringFuture":  # what asyncio.gather() returns
        return "gather"
    for attr in ("__qualname__", "__name__"):
        name = getattr(awaitable, attr, None)
        if isinstance(name, str):
            return name
    if isinstance(awaitable, asyncio.Task):
        return awaitable.get_name()
    return type(awaitable).__name__


class BackgroundWork:
    """The background tasks of one worker."""

    #: Called with every task that ends (run history, metrics, the dashboard).
    observers: list[Callable[[BackgroundTask], None]]

    def __init__(
        self, worker: WorkerState, shared_observers: list[Callable[[BackgroundTask], None]] | None = None
    ) -> None:
        self.worker = worker
        self.pending: set[BackgroundTask] = set()
        self.errors: list[BaseException] = []
        self.observers = []
        #: False where the work ran elsewhere and was logged there (a worker process's tasks).
        self.log_failures = True
        #: Called with every task when it is added (a process worker reports it to the server).
        self.start_observers: list[Callable[[BackgroundTask], None]] = []
        #: Wraps each coroutine before it is scheduled (the worker's CPU metering: the coroutine
        #: `edgeruntime.core.metering.metered` makes, which the meter's task factory passes through).
        self.runner: Callable[[Coroutine[Any, Any, Any], ExecutionContext], Coroutine[Any, Any, Any]] | None = None
        #: Observers of the whole app (kept by reference, so ones added later see this worker too).
        self.shared_observers = shared_observers if shared_observers is not None else []
        #: Tasks the function's code created, not yet done, with the execution that created them.
        self._spawned: dict[asyncio.Future[Any], ExecutionContext] = {}
        self._task_names: dict[tuple[str, str], str] = {}
        #: The tasks running, each with its entry and execution, by future.
        self._running: dict[asyncio.Future[Any], tuple[BackgroundTask, ExecutionContext]] = {}
        self._on_done = self._done

    def __len__(self) -> int:
        return len(self.pending)

    def add(
        self, awaitable: Awaitable[Any], ctx: ExecutionContext, loop: asyncio.AbstractEventLoop | None = None
    ) -> BackgroundTask:
        """Schedule `awaitable` in the running loop (`loop`, if the caller has it) and track it.

        Must run in the loop thread.
        """
        if loop is None:
            loop = asyncio.get_running_loop()
        name = _task_name(awaitable)
        # The context a task made here runs in, and its done callback too (each callback given
        # no context would get a copy of its own: one more object per pending task).
        context: contextvars.Context | None = None
        if isinstance(awaitable, asyncio.Future):
            future: asyncio.Future[Any] = awaitable
        elif asyncio.iscoroutine(awaitable):
            task_name = self._task_names.get((ctx.function, name))
            if task_name is None:
                task_name = self._task_name(ctx.function, name)
            if self.runner is None:
                future = loop.create_task(awaitable, name=task_name)
            else:
                coro = self.runner(awaitable, ctx)
                if makes_plain_tasks(loop):
                    # The task the loop would make, without a call of the factory in between.
                    context = contextvars.copy_context()
                    future = asyncio.Task(coro, loop=loop, name=task_name, context=context)
                else:
                    future = loop.create_task(coro, name=task_name)
        else:
            future = asyncio.ensure_future(awaitable)
        entry = BackgroundTask(future, name, ctx.function, ctx.execution_id)
        self.pending.add(entry)
        ctx.tasks.add(entry)
        running = self._running
        if future in running:  # the same future handed over twice: each entry ends with it
            future.add_done_callback(functools.partial(self._finished, entry, ctx))
        else:
            # One callback bound once for all tasks, and the entry found by its future: a
            # partial per task would keep three more objects alive while it runs.
            running[future] = (entry, ctx)
            future.add_done_callback(self._on_done, context=context)
        for observer in self.start_observers:
            observer(entry)
        return entry

    def _task_name(self, function: str, name: str) -> str:
        """The asyncio name of a task of `function` running `name`, kept for the next such task."""
        task_name = f"wait_until:{function}:{name}"
        if len(self._task_names) < MAX_TASK_NAMES:  # (names come from code: a few per function)
            self._task_names[function, name] = task_name
        return task_name

    def spawned(self, task: asyncio.Future[Any], ctx: ExecutionContext) -> None:
        """`task` was created by code of `ctx` (see :mod:`edgeruntime.core.metering`): cut it with `ctx`'s work."""
        self._spawned[task] = ctx
        task.add_done_callback(self._spawned_done)

    def _spawned_done(self, task: asyncio.Future[Any]) -> None:
        self._spawned.pop(task, None)

    def _done(self, future: asyncio.Future[Any]) -> None:
        entry, ctx = self._running.pop(future)
        self._finished(entry, ctx)

    def _finished(self, entry: BackgroundTask, ctx: ExecutionContext, _done: object = None) -> None:
        entry.ended_at = time.time()
        self.pending.discard(entry)
        ctx.tasks.discard(entry)
        future = entry.task
        # A gather whose children were cancelled ends with a CancelledError *exception* (Python
        # 3.11): it was cancelled, not failed.
        if future.cancelled() or isinstance(future.exception(), asyncio.CancelledError):
            entry.outcome = TaskOutcome.CUT
            entry.cut_reason = entry.cut_reason or "cancelled"
        elif (exc := future.exception()) is not None:
            entry.outcome = TaskOutcome.FAILED
            entry.error = exc
            self.errors.append(exc)
            if self.log_failures:
                logger.error(
                    "background task %s of function %s failed (execution %s)",
                    entry.name,
                    entry.function,
                    entry.execution_id,
                    exc_info=(type(exc), exc, exc.__traceback__),
                    extra={"function": entry.function, "execution_id": entry.execution_id},
                )
            self._report_rejection(entry, exc)
        else:
            entry.outcome = TaskOutcome.COMPLETED
        for observer in (*self.observers, *self.shared_observers):
            try:
                observer(entry)
            except Exception:
                logger.exception("background task observer failed")

    def _report_rejection(self, entry: BackgroundTask, exc: BaseException) -> None:
        if not self.worker.listeners.get("unhandledrejection"):
            return
        event = UnhandledRejectionEvent(exc, entry.execution_id, entry.function)
        asyncio.get_running_loop().create_task(self.worker.dispatch("unhandledrejection", event))

    async def wait(self, timeout: float | None = None, only: ExecutionContext | None = None) -> bool:
        """Wait until no task (of `only`, if given) is pending; False if `timeout` passed first.

        Tasks started by tasks are waited for too.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pending = [t.task for t in (only.tasks if only is not None else self.pending)]
            if not pending:
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            await asyncio.wait(pending, timeout=remaining)

    async def drain(self, timeout: float | None = None, only: ExecutionContext | None = None) -> None:
        """Wait for pending work, then raise an ExceptionGroup of the errors seen since the last drain."""
        done = await self.wait(timeout, only)
        errors, self.errors = self.errors, []
        if not done:
            names = ", ".join(sorted(t.name for t in self.pending))
            errors.append(TimeoutError(f"background work still pending after {timeout} s: {names}"))
        if errors:
            raise ExceptionGroup(
                f"{len(errors)} background task(s) of {self.worker.function} failed",
                [e if isinstance(e, Exception) else RuntimeError(repr(e)) for e in errors],
            )

    def cut(
        self, reason: str, tasks: Iterable[BackgroundTask] | None = None, *, of: ExecutionContext | None = None
    ) -> list[BackgroundTask]:
        """Cancel pending tasks, recording why; returns the tasks that were cut.

        With neither `tasks` nor `of`, all the work of the worker is cut; with `of`, the work of
        that execution. Either way the tasks the cut executions' code created are cancelled too.
        """
        if of is not None:
            victims = list(of.tasks)
        else:
            victims = list(self.pending if tasks is None else tasks)
        if tasks is None:
            for task, owner in list(self._spawned.items()):
                if of is None or owner is of:
                    task.cancel()
        for entry in victims:
            if not entry.task.done():
                entry.cut_reason = reason
                entry.task.cancel()
                logger.warning(
                    "background task %s of function %s cut: %s (execution %s)",
                    entry.name,
                    entry.function,
                    reason,
                    entry.execution_id,
                    extra={"function": entry.function, "execution_id": entry.execution_id},
                )
        return victims
