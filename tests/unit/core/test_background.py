"""Background work (`wait_until`): tracked per worker and per invocation, never harming the worker."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Coroutine
from typing import Any

import pytest

from edgeruntime.core.background import BackgroundTask, TaskOutcome
from edgeruntime.core.context import ExecutionContext
from edgeruntime.core.events import UnhandledRejectionEvent
from edgeruntime.core.worker_state import WorkerState
from tests.unit.asgi import settle


def invocation(worker: WorkerState) -> ExecutionContext:
    return ExecutionContext(function=worker.function, worker=worker)


# Module-level coroutine functions: a task is named after its function's qualified name.
async def work(release: asyncio.Event | None = None, result: Any = "done") -> Any:
    if release is not None:
        await release.wait()
    return result


async def fails() -> None:
    raise ValueError("boom")


async def test_a_task_that_returns_is_completed_and_observed_once() -> None:
    ended: list[BackgroundTask] = []
    worker = WorkerState("fn", env={}, observers=[ended.append])
    ctx = invocation(worker)
    release = asyncio.Event()
    entry = worker.background.add(work(release), ctx)
    assert (entry.name, entry.function, entry.execution_id) == ("work", "fn", ctx.execution_id)
    assert worker.background.pending == {entry} and ctx.tasks == {entry}
    release.set()
    assert await entry.task == "done"
    await settle()
    assert entry.outcome is TaskOutcome.COMPLETED and entry.duration_ms is not None
    assert ended == [entry]
    assert not worker.background.pending and not ctx.tasks


async def test_a_failing_task_is_logged_recorded_and_reported_and_the_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = WorkerState("fn", env={})
    rejections: list[UnhandledRejectionEvent] = []
    worker.add_listener("unhandledrejection", rejections.append)
    ctx = invocation(worker)
    release = asyncio.Event()
    failed = worker.background.add(fails(), ctx)
    other = worker.background.add(work(release, "still here"), ctx)
    await settle()
    assert failed.outcome is TaskOutcome.FAILED and isinstance(failed.error, ValueError)
    assert [(e.function, e.execution_id, str(e.error)) for e in rejections] == [("fn", ctx.execution_id, "boom")]
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage() == f"background task fails of function fn failed (execution {ctx.execution_id})"
    assert record.exc_info is not None
    release.set()
    assert await other.task == "still here"

    with pytest.raises(ExceptionGroup) as raised:
        await worker.background.drain(timeout=0)
    assert [str(e) for e in raised.value.exceptions] == ["boom"]
    await worker.background.drain(timeout=0)  # errors are reported once


async def test_cut_cancels_the_given_tasks_with_the_reason_and_leaves_the_others() -> None:
    worker = WorkerState("fn", env={})
    first, second = invocation(worker), invocation(worker)
    never = asyncio.Event()
    a = worker.background.add(never.wait(), first)
    b = worker.background.add(never.wait(), second)
    assert worker.background.cut("WallClockTime", list(first.tasks)) == [a]
    await settle()
    assert (a.outcome, a.cut_reason) == (TaskOutcome.CUT, "WallClockTime")
    assert b.outcome is TaskOutcome.PENDING
    b.task.cancel()  # cancelled by something other than the runtime
    await settle()
    assert (b.outcome, b.cut_reason) == (TaskOutcome.CUT, "cancelled")


async def test_wait_for_one_invocation_and_drain_timing_out_names_the_pending_work() -> None:
    worker = WorkerState("fn", env={})
    quick, slow = invocation(worker), invocation(worker)
    release, never = asyncio.Event(), asyncio.Event()
    worker.background.add(release.wait(), quick)
    hanging = worker.background.add(never.wait(), slow)
    release.set()
    assert await worker.background.wait(timeout=5, only=quick) is True
    assert await worker.background.wait(timeout=0) is False
    with pytest.raises(ExceptionGroup) as raised:
        await worker.background.drain(timeout=0)
    [timeout] = raised.value.exceptions
    assert isinstance(timeout, TimeoutError) and "wait" in str(timeout)
    worker.background.cut("TerminationRequested", [hanging])
    await settle()


async def test_coroutines_run_through_the_runner_and_futures_are_tracked_as_they_are() -> None:
    worker = WorkerState("fn", env={})
    wrapped: list[str] = []

    def runner(coro: Coroutine[Any, Any, Any], ctx: ExecutionContext) -> Coroutine[Any, Any, Any]:
        wrapped.append(ctx.execution_id)
        return coro

    worker.background.runner = runner
    ctx = invocation(worker)
    assert await worker.background.add(work(result=1), ctx).task == 1
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    entry = worker.background.add(future, ctx)
    assert entry.task is future
    future.set_result(2)
    await settle()
    assert entry.outcome is TaskOutcome.COMPLETED
    assert wrapped == [ctx.execution_id]  # the future was not wrapped


async def test_an_observer_that_raises_is_logged_and_the_next_one_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    def broken(task: BackgroundTask) -> None:
        raise RuntimeError("observer bug")

    worker = WorkerState("fn", env={}, observers=[broken, lambda task: seen.append(task.name)])
    await worker.background.add(work(), invocation(worker)).task
    await settle()
    assert seen == ["work"]
    assert "background task observer failed" in caplog.text


async def test_a_cut_gather_is_recorded_as_cut_once_and_never_as_failed(caplog: pytest.LogCaptureFixture) -> None:
    """Python 3.11 ends a cancelled gather with a CancelledError *exception*: still a cut."""
    ended: list[BackgroundTask] = []
    worker = WorkerState("fn", env={}, observers=[ended.append])
    rejections: list[UnhandledRejectionEvent] = []
    worker.add_listener("unhandledrejection", rejections.append)
    ctx = invocation(worker)
    never = asyncio.Event()
    gathered = asyncio.gather(never.wait(), work())
    entry = worker.background.add(gathered, ctx)
    await settle()
    assert worker.background.cut("CPUTime") == [entry]
    await settle()
    assert not gathered.cancelled() and isinstance(gathered.exception(), asyncio.CancelledError)
    assert ended == [entry]
    assert (entry.outcome, entry.cut_reason, entry.error) == (TaskOutcome.CUT, "CPUTime", None)
    assert rejections == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await worker.background.drain(timeout=0)  # no error to raise


async def test_tasks_an_execution_created_are_cancelled_with_its_work_and_only_its() -> None:
    worker = WorkerState("fn", env={})
    first, second = invocation(worker), invocation(worker)
    never = asyncio.Event()
    mine = asyncio.ensure_future(never.wait())
    theirs = asyncio.ensure_future(never.wait())
    worker.background.spawned(mine, first)
    worker.background.spawned(theirs, second)
    assert worker.background.cut("WallClockTime", of=first) == []
    await settle()
    assert mine.cancelled() and not theirs.done()
    worker.background.cut("TerminationRequested")  # the whole worker: every task it created
    await settle()
    assert theirs.cancelled()


async def test_the_same_future_handed_over_twice_ends_both_entries() -> None:
    ended: list[BackgroundTask] = []
    worker = WorkerState("fn", env={}, observers=[ended.append])
    first, second = invocation(worker), invocation(worker)
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    one = worker.background.add(future, first)
    two = worker.background.add(future, second)
    assert worker.background.pending == {one, two}
    future.set_result("done")
    await settle()
    assert sorted(map(id, ended)) == sorted([id(one), id(two)])
    assert one.outcome is two.outcome is TaskOutcome.COMPLETED
    assert not worker.background.pending and not first.tasks and not second.tasks


SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("SEEN", default="unset")


async def sets_seen() -> None:
    SEEN.set("set by the task")
    raise ValueError("boom")


async def test_a_task_ends_in_its_own_context_the_rejection_listener_sees_what_it_set() -> None:
    worker = WorkerState("fn", env={})
    worker.background.runner = lambda coro, _ctx: coro  # as a worker's (the CPU meter's) wraps it
    seen: list[str] = []
    worker.add_listener("unhandledrejection", lambda _event: seen.append(SEEN.get()))
    SEEN.set("the request's")
    entry = worker.background.add(sets_seen(), invocation(worker))
    await settle()
    assert entry.outcome is TaskOutcome.FAILED
    assert seen == ["set by the task"]
    assert SEEN.get() == "the request's"  # the task's context is its own copy
