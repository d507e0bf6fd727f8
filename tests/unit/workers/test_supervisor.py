"""The supervisor's paths on a ManualClock: retire, early drop, end, successor, reload, boot errors, shutdown.

The workers are real inline workers loading a real function from disk; only time is manual.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest

from edgeruntime.config.settings import Settings
from edgeruntime.core.background import BackgroundTask, TaskOutcome
from edgeruntime.core.clock import ManualClock
from edgeruntime.core.context import ExecutionContext
from edgeruntime.core.events import StopReason
from edgeruntime.core.worker_state import default_worker
from edgeruntime.exceptions import BootError, LimitExceeded, WallClockLimitExceeded
from edgeruntime.functions.discovery import FunctionSpec
from edgeruntime.workers.supervisor import FunctionSupervisor
from edgeruntime.workers.worker import InlineWorker, Worker, WorkerStatus
from tests.helpers import write_function
from tests.unit.asgi import Body, Recorder, http_scope, settle
from tests.unit.workers.functions import PROBE

WALL_CLOCK_SEC = 100.0


class Harness:
    """A supervisor of the `probe` function, what it told its observers, and its clock."""

    def __init__(self, functions_dir: Path, successors: bool = False, **limits: float) -> None:
        write_function(functions_dir, "probe", PROBE)
        self.clock = ManualClock()
        self.told: list[tuple[str, StopReason]] = []
        self.tasks: list[BackgroundTask] = []
        self.settings = Settings.build(
            functions_dir, watch=False, environ={}, limits={"wall_clock_limit_sec": WALL_CLOCK_SEC, **limits}
        )
        self.supervisor = FunctionSupervisor(
            FunctionSpec("probe", functions_dir / "probe"),
            self.settings,
            [self.tasks.append],
            worker_observers=[lambda event, function, reason: self.told.append((event, reason))],
            clock=self.clock,
            # As process workers do: the next worker is booted before this one retires.
            worker_factory=self.successor_preparing_worker if successors else None,
        )

    def successor_preparing_worker(self) -> Worker:
        worker = InlineWorker(self.supervisor.spec, {}, self.supervisor.limits, [self.tasks.append], clock=self.clock)
        worker.prepares_successor = True
        return worker

    async def request(self, query: str = "") -> Recorder:
        recorder = Recorder()
        ctx = ExecutionContext("probe", default_worker())
        await self.supervisor.dispatch(http_scope(query=query), Body().receive, recorder.send, ctx)
        return recorder

    def start(self, query: str) -> asyncio.Task[Recorder]:
        return asyncio.get_running_loop().create_task(self.request(query))

    async def boot_of(self, query: str = "") -> str:
        recorder = await self.request(query)
        assert recorder.status == 200, recorder.body
        boot: str = recorder.json()["boot"]
        return boot

    @property
    def module(self) -> Any:
        worker = self.supervisor.worker
        assert worker is not None and worker.module is not None
        return worker.module


@pytest.fixture
async def harness(functions_dir: Path) -> AsyncIterator[Harness]:
    h = Harness(functions_dir)
    yield h
    await h.supervisor.shutdown(0)


async def test_half_the_wall_clock_retires_the_worker_and_an_idle_one_is_dropped_early(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    first = await harness.boot_of()
    module = harness.module
    harness.clock.advance(WALL_CLOCK_SEC / 2)
    await settle()
    assert harness.told == [("retired", StopReason.WALL_CLOCK), ("ended", StopReason.EARLY_DROP)]
    assert list(harness.supervisor.shutdowns) == [StopReason.EARLY_DROP]
    assert module.UNLOADS == ["early_drop"]
    assert harness.supervisor.worker is None and not harness.supervisor.workers
    assert await harness.boot_of() != first
    assert harness.supervisor.boots == 2
    assert "wall clock duration warning: isolate:" in caplog.text
    assert "early termination has been triggered: isolate:" in caplog.text
    assert "reason: EarlyDrop (cpu_time_used" in caplog.text


async def test_a_retired_worker_finishes_its_background_work_before_it_is_dropped(harness: Harness) -> None:
    first = await harness.boot_of("mode=background")
    module = harness.module
    harness.clock.advance(WALL_CLOCK_SEC / 2)
    await settle()
    assert harness.told == [("retired", StopReason.WALL_CLOCK)]
    [retired] = harness.supervisor.retired
    assert retired.status is WorkerStatus.RETIRED
    assert await harness.boot_of() != first  # new requests go to a fresh worker meanwhile
    module.RELEASE.set()
    await settle()
    assert harness.told[-1] == ("ended", StopReason.EARLY_DROP)
    assert [(t.name, t.outcome) for t in harness.tasks] == [("later", TaskOutcome.COMPLETED)]


async def test_the_full_wall_clock_ends_the_worker_its_requests_get_the_limit_and_its_work_is_cut(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    await harness.boot_of("mode=background")
    module = harness.module
    hanging = harness.start("mode=hang")
    await module.STARTED.wait()
    harness.clock.advance(WALL_CLOCK_SEC * 0.9)  # retired at half; beforeunload at 90 %
    await settle()
    assert module.UNLOADS == ["wall_clock"]
    harness.clock.advance(WALL_CLOCK_SEC * 0.1)
    with pytest.raises(WallClockLimitExceeded) as raised:  # 546 WORKER_LIMIT at the gateway
        await hanging
    assert raised.value.reason == "WallClockTime" and isinstance(raised.value, TimeoutError)
    await settle()
    assert [(t.name, t.outcome, t.cut_reason) for t in harness.tasks] == [("later", TaskOutcome.CUT, "WallClockTime")]
    assert harness.told == [("retired", StopReason.WALL_CLOCK), ("ended", StopReason.WALL_CLOCK)]
    assert list(harness.supervisor.shutdowns) == [StopReason.WALL_CLOCK]
    assert "wall clock duration reached: isolate:" in caplog.text and "(in_flight_req_exists = true)" in caplog.text
    assert "reason: WallClockTime (cpu_time_used" in caplog.text and "1 background task(s) cut" in caplog.text
    assert (await harness.request()).status == 200  # the next request boots a fresh worker


async def test_cpu_time_retires_at_the_soft_limit_and_ends_at_the_hard_limit(functions_dir: Path) -> None:
    harness = Harness(functions_dir, cpu_soft_limit_ms=100, cpu_hard_limit_ms=200)
    try:
        await harness.boot_of("mode=background")
        worker, module = harness.supervisor.worker, harness.module
        assert worker is not None
        hanging = harness.start("mode=hang")
        await module.STARTED.wait()
        worker.meter.add(100)
        assert harness.told == [("retired", StopReason.CPU)]
        worker.meter.add(100)
        with pytest.raises(LimitExceeded) as raised:
            await hanging
        assert raised.value.reason == "CPUTime" and not isinstance(raised.value, TimeoutError)
        await settle()
        assert harness.told == [("retired", StopReason.CPU), ("ended", StopReason.CPU)]
        assert [t.cut_reason for t in harness.tasks] == ["CPUTime"]
    finally:
        await harness.supervisor.shutdown(0)


async def test_the_successor_is_booted_before_the_worker_retires_and_takes_over(functions_dir: Path) -> None:
    harness = Harness(functions_dir, successors=True)
    try:
        first = await harness.boot_of()
        harness.clock.advance(WALL_CLOCK_SEC / 2 * 0.8)
        await settle()
        successor = harness.supervisor._successor
        assert successor is not None
        await successor  # (an inline worker imports its module in a thread of its own)
        assert harness.supervisor.boots == 2 and harness.supervisor.worker is not successor.result()
        harness.clock.advance(WALL_CLOCK_SEC / 2 * 0.2)
        await settle()
        assert harness.told == [("retired", StopReason.WALL_CLOCK), ("ended", StopReason.EARLY_DROP)]
        second = await harness.boot_of()
        assert second != first
        assert harness.supervisor.worker is successor.result()
        assert harness.supervisor.boots == 2  # the hand-over waited for no boot
    finally:
        await harness.supervisor.shutdown(0)


async def test_a_reload_ends_an_unused_successor_and_retires_the_active_worker(functions_dir: Path) -> None:
    harness = Harness(functions_dir, successors=True)
    try:
        first = await harness.boot_of()
        harness.clock.advance(WALL_CLOCK_SEC / 2 * 0.8)
        await settle()
        successor = harness.supervisor._successor
        assert successor is not None
        await successor
        harness.supervisor.reload()
        await settle()
        assert successor.result().status is WorkerStatus.ENDED
        assert harness.told == [("retired", StopReason.RELOAD), ("ended", StopReason.EARLY_DROP)]
        assert await harness.boot_of() != first
        assert harness.supervisor.boots == 3
    finally:
        await harness.supervisor.shutdown(0)


async def test_a_boot_error_fails_the_request_and_the_next_request_boots_again(
    harness: Harness, functions_dir: Path
) -> None:
    write_function(functions_dir, "probe", "def broken(:\n")
    with pytest.raises(BootError, match="SyntaxError"):
        await harness.request()
    assert harness.supervisor.boot_error is not None and harness.supervisor.worker is None
    write_function(functions_dir, "probe", PROBE)
    assert (await harness.request()).status == 200
    assert harness.supervisor.boot_error is None


async def test_a_syntax_error_checked_without_report_is_the_boot_error_but_not_logged(
    harness: Harness, functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_function(functions_dir, "probe", "def broken(:\n")
    error = harness.supervisor.check(report=False)  # another serving process logs it
    assert error is not None and "SyntaxError" in str(error)
    assert not [r for r in caplog.records if "cannot boot" in r.getMessage()]
    with pytest.raises(BootError, match="SyntaxError"):
        await harness.request()
    assert harness.supervisor.boot_error is not None and "SyntaxError" in harness.supervisor.boot_error
    write_function(functions_dir, "probe", PROBE)
    assert harness.supervisor.check(report=False) is None
    assert (await harness.request()).status == 200 and harness.supervisor.boot_error is None


async def test_shutdown_tells_beforeunload_and_cuts_what_is_still_running(harness: Harness) -> None:
    await harness.boot_of("mode=background")
    module = harness.module
    cut = await harness.supervisor.shutdown(0)
    assert len(cut) == 1 and cut[0].startswith("later (function probe, execution ")
    assert module.UNLOADS == ["termination"]
    assert list(harness.supervisor.shutdowns) == [StopReason.TERMINATION]
    assert [(t.outcome, t.cut_reason) for t in harness.tasks] == [(TaskOutcome.CUT, "TerminationRequested")]


async def test_each_request_is_served_in_its_own_task_the_first_and_the_next(harness: Harness) -> None:
    """The supervisor finds a request's task once (the first request with a lookup of the running
    loop, the next ones on the loop it remembered) and hands it to the worker and the idle timeout."""
    seen: list[tuple[asyncio.Task[Any] | None, asyncio.Task[Any] | None]] = []

    async def request() -> None:
        ctx = ExecutionContext("probe", default_worker())
        recorder = Recorder()

        async def send(message: MutableMapping[str, Any]) -> None:
            seen.append((ctx.task, asyncio.current_task()))
            await recorder.send(message)

        await harness.supervisor.dispatch(http_scope(), Body().receive, send, ctx)
        assert recorder.status == 200 and ctx.task is None  # not kept past its request

    first = asyncio.get_running_loop().create_task(request())
    await first
    second = asyncio.get_running_loop().create_task(request())
    await second
    assert {task for task, _ in seen} == {first, second}
    assert all(task is current for task, current in seen)


VERSIONED = """
from starlette.responses import PlainTextResponse
from edgeruntime import serve

VERSION = "{version}"


async def handler(req):
    return PlainTextResponse(VERSION)

serve(handler)
"""


class SlowBoot:
    """Workers that read the function's files at once and finish booting when `booted` is set
    (a worker process whose Booted frame is still on its way); set up to boot slowly with `slow`."""

    def __init__(self, functions_dir: Path, successors: bool = False) -> None:
        self.file = functions_dir / "probe" / "index.py"
        write_function(functions_dir, "probe", VERSIONED.format(version="v1"))
        self.read = asyncio.Event()
        self.booted = asyncio.Event()
        self.slow = False
        self.supervisor = FunctionSupervisor(
            FunctionSpec("probe", functions_dir / "probe"),
            Settings.build(functions_dir, watch=False, environ={}),
            worker_factory=self.worker,
        )
        self.successors = successors

    def worker(self) -> Worker:
        harness = self

        class Slow(InlineWorker):
            async def start(self) -> None:
                self.boot()
                harness.read.set()
                if harness.slow:
                    await harness.booted.wait()

        worker = Slow(self.supervisor.spec, {}, self.supervisor.limits)
        worker.prepares_successor = self.successors
        return worker

    def save(self, version: str) -> None:
        """The developer saves the file and the watcher reloads the function."""
        self.file.write_text(VERSIONED.format(version=version))
        self.supervisor.reload()

    async def answer(self) -> str:
        recorder = Recorder()
        ctx = ExecutionContext("probe", default_worker())
        await self.supervisor.dispatch(http_scope(), Body().receive, recorder.send, ctx)
        assert recorder.status == 200, recorder.body
        return recorder.body.decode()


async def test_a_reload_while_the_first_worker_boots_is_not_lost(functions_dir: Path) -> None:
    h = SlowBoot(functions_dir)
    h.slow = True
    try:
        first = asyncio.get_running_loop().create_task(h.answer())
        await h.read.wait()  # it has read v1 ...
        h.read.clear()
        h.save("v2")  # ... and v2 is saved before it has booted: no worker to retire yet
        h.booted.set()
        assert await first == "v2"  # the stale worker was ended and another booted from v2
        assert await h.answer() == "v2"
        assert h.supervisor.boots == 2
    finally:
        await h.supervisor.shutdown(0)


async def test_a_reload_while_a_request_waits_for_the_successor_does_not_end_its_worker(functions_dir: Path) -> None:
    h = SlowBoot(functions_dir, successors=True)
    try:
        assert await h.answer() == "v1"
        h.slow = True
        h.supervisor._prepare_successor()  # the lifecycle prepares it near the retirement threshold
        await settle()
        active = h.supervisor.worker
        assert active is not None
        h.supervisor._retire(active, StopReason.WALL_CLOCK)  # the active worker retires
        waiting = asyncio.get_running_loop().create_task(h.answer())  # waits for the successor
        await settle()
        h.save("v2")  # the successor (read v1) is dropped while the request waits for it
        h.booted.set()
        assert await waiting == "v2"  # served by a worker of v2, not cut by the successor's drop
        await settle()
        serving = h.supervisor.worker
        assert serving is not None and serving.status is WorkerStatus.ACTIVE
        assert await h.answer() == "v2"
    finally:
        await h.supervisor.shutdown(0)
