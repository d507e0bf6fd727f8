"""The inline worker: one function module loaded in this process, serving concurrent requests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from edgeruntime.core.background import TaskOutcome
from edgeruntime.core.clock import ManualClock
from edgeruntime.core.context import ExecutionContext
from edgeruntime.core.events import StopReason
from edgeruntime.exceptions import BootError, LimitExceeded, WorkerCrashed
from edgeruntime.functions.discovery import FunctionSpec
from edgeruntime.limits import Limits, Policy
from edgeruntime.workers.worker import InlineWorker
from tests.helpers import write_function
from tests.unit.asgi import Body, Recorder, http_scope, settle
from tests.unit.workers.functions import PROBE, SYNC


def make_worker(
    functions_dir: Path,
    source: str = PROBE,
    policy: Policy = "per_worker",
    limits: Limits | None = None,
    clock: ManualClock | None = None,
) -> InlineWorker:
    write_function(functions_dir, "probe", source)
    spec = FunctionSpec("probe", functions_dir / "probe")
    return InlineWorker(spec, {}, limits or Limits(), policy=policy, clock=clock or ManualClock())


async def call(worker: InlineWorker, query: str = "") -> tuple[Recorder, ExecutionContext]:
    recorder = Recorder()
    ctx = ExecutionContext(function=worker.name, worker=worker.state)
    await worker.handle(http_scope(query=query), Body().receive, recorder.send, ctx)
    return recorder, ctx


def module_of(worker: InlineWorker) -> Any:
    assert isinstance(worker.module, ModuleType)
    return worker.module


async def test_a_request_is_served_by_the_handler_in_its_execution_context(functions_dir: Path) -> None:
    worker = make_worker(functions_dir)
    await worker.start()
    recorder, ctx = await call(worker)
    assert recorder.status == 200
    assert recorder.json() == {"boot": module_of(worker).BOOT, "path": "/probe", "mode": "ok"}
    assert ctx.worker is worker.state and ctx.meter is worker.meter
    assert worker.in_flight == 0 and worker.idle


@pytest.mark.parametrize(
    ("mode", "status", "body", "logged"),
    [
        ("raise", 500, b"Internal Server Error", "function probe raised while handling GET /probe"),
        ("not-a-response", 502, b"Bad Gateway", "function probe returned builtins.dict, not a starlette Response"),
    ],
)
async def test_handler_failures_become_the_runtime_responses_and_the_worker_serves_on(
    functions_dir: Path, caplog: pytest.LogCaptureFixture, mode: str, status: int, body: bytes, logged: str
) -> None:
    worker = make_worker(functions_dir)
    await worker.start()
    recorder, _ = await call(worker, f"mode={mode}")
    assert (recorder.status, recorder.body) == (status, body)
    assert recorder.headers["sb-error-code"] == "EDGE_FUNCTION_ERROR"
    assert logged in caplog.text
    assert (await call(worker))[0].status == 200


async def test_wait_until_work_runs_after_the_response_and_is_tracked_until_it_ends(functions_dir: Path) -> None:
    finished: list[str] = []
    worker = make_worker(functions_dir)
    worker.on_background_done(lambda task: finished.append(task.name))
    await worker.start()
    recorder, ctx = await call(worker, "mode=background")
    assert recorder.status == 200
    [pending] = worker.pending_background()
    assert (pending.name, pending.execution_id) == ("later", ctx.execution_id)
    assert not worker.idle
    module_of(worker).RELEASE.set()
    assert await pending.task == "background"
    await settle()
    assert finished == ["later"] and worker.idle


async def test_ending_the_worker_fails_its_requests_with_the_limit_and_cuts_its_background_work(
    functions_dir: Path,
) -> None:
    ended: list[tuple[str, TaskOutcome, str | None]] = []
    worker = make_worker(functions_dir)
    worker.on_background_done(lambda task: ended.append((task.name, task.outcome, task.cut_reason)))
    await worker.start()
    await call(worker, "mode=background")
    hanging = asyncio.get_running_loop().create_task(call(worker, "mode=hang"))
    await module_of(worker).STARTED.wait()
    assert worker.in_flight == 1
    assert await worker.end(StopReason.WALL_CLOCK) == ["later"]
    with pytest.raises(LimitExceeded) as raised:
        await hanging
    assert raised.value.reason == "WallClockTime"
    assert ended == [("later", TaskOutcome.CUT, "WallClockTime")]
    assert worker.end_reason is StopReason.WALL_CLOCK and worker.idle


async def test_a_per_request_budget_ends_that_request_and_its_background_work_only(functions_dir: Path) -> None:
    clock = ManualClock()
    ended: list[tuple[str, TaskOutcome, str | None]] = []
    worker = make_worker(functions_dir, policy="per_request", limits=Limits(wall_clock_limit_sec=10), clock=clock)
    worker.on_background_done(lambda task: ended.append((task.execution_id, task.outcome, task.cut_reason)))
    await worker.start()
    _, first = await call(worker, "mode=background")
    clock.advance(5)
    _, second = await call(worker, "mode=background")
    hanging = asyncio.get_running_loop().create_task(call(worker, "mode=hang"))
    await module_of(worker).STARTED.wait()
    clock.advance(5)  # the first request's 10 s are up
    await settle()
    assert ended == [(first.execution_id, TaskOutcome.CUT, "WallClockTime")]
    assert not hanging.done()
    clock.advance(10)  # and the others'
    with pytest.raises(LimitExceeded) as raised:
        await hanging
    assert raised.value.reason == "WallClockTime"
    await settle()
    assert [e[0] for e in ended] == [first.execution_id, second.execution_id]
    assert (await call(worker))[0].status == 200  # the worker itself serves on
    assert clock.pending == 0  # every budget closed


async def test_a_sync_handler_runs_in_a_thread(functions_dir: Path) -> None:
    worker = make_worker(functions_dir, SYNC)
    await worker.start()
    recorder, _ = await call(worker)
    assert (recorder.status, recorder.body) == (200, b"sync GET")


@pytest.mark.parametrize(
    ("source", "error", "message"),
    [
        ("def broken(:\n", BootError, "function probe failed to boot: SyntaxError"),
        ("import not_a_module_anywhere\n", BootError, "function probe failed to boot: ModuleNotFoundError"),
        ("raise RuntimeError('top level')\n", WorkerCrashed, "function probe raised while loading: RuntimeError"),
        ("x = 1\n", BootError, "function probe did not call serve(handler)"),
    ],
)
async def test_a_module_that_cannot_be_loaded_is_a_boot_error_or_a_crash(
    functions_dir: Path, source: str, error: type[Exception], message: str
) -> None:
    worker = make_worker(functions_dir, source)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        await worker.start()
