"""Inline CPU metering (steps timed, charged once per loop iteration) and the event loop watchdog."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import threading
import time
import tracemalloc
import warnings
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from edgeruntime.core.background import TaskOutcome
from edgeruntime.core.metering import (
    CpuMeter,
    LoopWatchdog,
    install_task_factory,
    makes_plain_tasks,
    metered,
    run_metered,
    settle,
)
from edgeruntime.testing import EdgeClient
from tests.helpers import write_function
from tests.probes import eventually


def spin(ms: float) -> None:
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        pass


async def busy(ms: float, steps: int) -> str:
    for _ in range(steps):
        spin(ms / steps)
        await asyncio.sleep(0)
    return "done"


async def blocked(ms: float, steps: int) -> None:
    """Steps that hold the loop without using the CPU (a step the OS took the CPU from)."""
    for _ in range(steps):
        time.sleep(ms / 1000 / steps)  # noqa: ASYNC251 - off the CPU, on purpose
        await asyncio.sleep(0)


async def test_meter_counts_cpu_of_each_step() -> None:
    meter = CpuMeter("f")
    assert await metered(busy(60, 6), meter) == "done"
    await asyncio.sleep(0)  # the steps of a loop iteration are charged at the next one
    assert 50 <= meter.used_ms < 1000


async def test_time_off_the_cpu_within_a_step_is_not_charged() -> None:
    meter = CpuMeter("f")
    started = time.perf_counter()
    await metered(blocked(200, 4), meter)
    await asyncio.sleep(0)
    assert time.perf_counter() - started >= 0.2
    assert meter.used_ms < 50


async def test_settle_charges_the_steps_of_this_iteration_at_once() -> None:
    async def one_step() -> None:
        spin(30)

    meter = CpuMeter("f")
    await metered(one_step(), meter)
    assert meter.used_ms == 0  # not yet: at the next iteration of the loop
    settle()
    assert meter.used_ms >= 25
    used = meter.used_ms
    await asyncio.sleep(0)
    assert meter.used_ms == used  # charged once


def test_without_a_running_loop_each_step_is_charged_at_once() -> None:
    meter = CpuMeter("f")
    steps = run_metered(busy(40, 4), meter)
    steps.send(None)
    assert meter.used_ms >= 8
    with pytest.raises(StopIteration):
        while True:
            steps.send(None)
    assert meter.used_ms >= 35


async def test_meter_does_not_count_waiting() -> None:
    meter = CpuMeter("f")
    await run_metered(asyncio.sleep(0.2), meter)
    assert meter.used_ms < 50


async def test_threshold_callback_fires_at_a_step_boundary() -> None:
    seen: list[float] = []
    meter = CpuMeter("f", on_threshold=seen.append)
    meter.next_check_ms = 20
    await metered(busy(60, 6), meter)
    assert seen and seen[0] >= 20


async def test_a_crossed_threshold_acts_before_any_step_it_could_stop() -> None:
    events: list[str] = []

    def crossed(used_ms: float) -> None:
        events.append("threshold")
        meter.next_check_ms = float("inf")

    meter = CpuMeter("f", on_threshold=crossed)
    meter.next_check_ms = 10
    woken = asyncio.get_running_loop().create_future()

    async def waiter() -> None:
        await woken
        events.append("woken step")

    async def crossing() -> None:
        spin(20)
        woken.set_result(None)
        events.append("crossing step")
        await asyncio.sleep(0)
        events.append("next step")

    waiting = asyncio.ensure_future(run_metered(waiter(), meter))
    await asyncio.sleep(0.01)  # it waits; the crossing step is the first of its loop iteration
    await metered(crossing(), meter)
    await waiting
    # Even the step the crossing step woke (another request of the same worker, say) comes after.
    assert events == ["crossing step", "threshold", "woken step", "next step"]


def test_each_thread_is_charged_its_own_cpu() -> None:
    """Two event loops in two threads meter at once: one burns CPU, the other blocks."""
    barrier = threading.Barrier(2)
    used: dict[str, float] = {}
    fired_in: dict[str, int] = {}

    def run(name: str, work: Callable[[], Coroutine[Any, Any, object]]) -> None:
        def crossed(used_ms: float) -> None:
            fired_in[name] = threading.get_ident()
            meter.next_check_ms = float("inf")

        meter = CpuMeter(name, on_threshold=crossed)
        meter.next_check_ms = 20

        async def main() -> None:
            barrier.wait()
            await metered(work(), meter)
            await asyncio.sleep(0)
            used[name] = meter.used_ms

        asyncio.run(main())

    threads = {
        "burns": threading.Thread(target=run, args=("burns", lambda: busy(100, 10))),
        "blocks": threading.Thread(target=run, args=("blocks", lambda: blocked(100, 10))),
    }
    for thread in threads.values():
        thread.start()
    for thread in threads.values():
        thread.join(timeout=30)
    assert used["burns"] >= 70
    assert used["blocks"] < 20
    assert fired_in == {"burns": threads["burns"].ident}


async def test_errors_and_cancellation_pass_through() -> None:
    async def fails() -> None:
        await asyncio.sleep(0)
        raise KeyError("x")

    with pytest.raises(KeyError):
        await metered(fails(), CpuMeter("f"))
    task = asyncio.ensure_future(run_metered(asyncio.sleep(30), CpuMeter("f")))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _bytes_per_pending_task(make: Callable[[], asyncio.Future[None]]) -> float:
    """Python heap (tracemalloc) per task of `make`, each waiting in a sleep."""
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tasks = [make() for _ in range(500)]
        for _ in range(3):  # each task's first step, then the settling of its batch
            await asyncio.sleep(0)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return (after - before) / len(tasks)


async def test_a_pending_metered_task_costs_little_more_than_a_plain_one() -> None:
    """The metering of a task waiting for seconds (a `wait_until` task, say) is one small object,
    not a coroutine and a generator with their frames (~570 bytes a task)."""
    meter = CpuMeter("f")
    await _bytes_per_pending_task(lambda: asyncio.ensure_future(run_metered(asyncio.sleep(30), meter)))  # warm
    # tracemalloc counts what every thread allocates meanwhile (pytest-xdist's own thread reading
    # the next tests, say), which only adds: the least of three readings of each.
    plain = min([await _bytes_per_pending_task(lambda: asyncio.ensure_future(asyncio.sleep(30))) for _ in range(3)])
    charged = min(
        [
            await _bytes_per_pending_task(lambda: asyncio.ensure_future(run_metered(asyncio.sleep(30), meter)))
            for _ in range(3)
        ]
    )
    assert charged - plain < 200, (charged, plain)


async def test_a_metered_task_cancelled_before_its_first_step_closes_its_coroutine() -> None:
    ran: list[str] = []

    async def work() -> None:
        ran.append("started")

    task = asyncio.ensure_future(run_metered(work(), CpuMeter("f")))
    task.cancel()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine 'work' was never awaited" would be raised here
        with pytest.raises(asyncio.CancelledError):
            await task
        gc.collect()
    assert ran == []


async def test_closing_a_metered_coroutine_closes_the_one_it_drives() -> None:
    cleaned: list[str] = []

    async def work() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.append("finally")

    driven = metered(work(), CpuMeter("f"))
    driven.send(None)  # its first step: now waiting in the sleep
    driven.close()
    assert cleaned == ["finally"]
    with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
        driven.send(None)


async def test_watchdog_reports_a_blocked_loop(caplog: pytest.LogCaptureFixture) -> None:
    watchdog = LoopWatchdog(threshold_sec=0.3, interval_sec=0.05)
    watchdog.start()
    try:
        time.sleep(0.6)  # noqa: ASYNC251 - holds the loop on purpose
        await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # a healthy loop: no second report
    finally:
        watchdog.stop()
    assert len(watchdog.reports) == 1
    assert "has held the event loop" in caplog.text


async def test_inline_function_blocking_the_loop_is_logged(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_function(
        functions_dir,
        "blocker",
        """
        import time
        from starlette.responses import PlainTextResponse
        from edgeruntime import serve

        @serve
        async def handler(req):
            time.sleep(1.3)
            return PlainTextResponse("late")
        """,
    )
    async with EdgeClient(functions_dir) as client:
        assert (await client.invoke("blocker")).status_code == 200
        await asyncio.sleep(0.2)
    assert "function blocker has held the event loop for" in caplog.text


async def test_sync_handler_cpu_counts_against_the_worker(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_function(
        functions_dir,
        "sync",
        """
        import time
        import uuid
        from starlette.responses import JSONResponse
        from edgeruntime import serve

        BOOT = uuid.uuid4().hex

        @serve
        def handler(req):
            end = time.thread_time() + float(req.query_params.get("burn_ms", "0")) / 1000
            while time.thread_time() < end:
                pass
            return JSONResponse({"boot": BOOT})
        """,
    )
    async with EdgeClient(functions_dir, limits={"cpu_soft_limit_ms": 100, "cpu_hard_limit_ms": 5000}) as client:
        first = (await client.invoke("sync", params={"burn_ms": 150})).json()["boot"]
        assert client.app.functions["sync"].worker is None  # retired right after
        assert (await client.invoke("sync")).json()["boot"] != first
    assert "CPU time soft limit reached" in caplog.text


async def test_a_sync_handler_wrapped_by_with_cors_is_metered_and_runs_in_the_runtimes_threads(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`with_cors(handler)` runs a `def` handler as `serve` runs one: its CPU counts against the
    limits, in one of the runtime's threads for sync handlers (it ran in AnyIO's, unmetered)."""
    write_function(
        functions_dir,
        "sync",
        """
        import threading
        import time
        import uuid
        from starlette.responses import JSONResponse
        from edgeruntime import serve
        from edgeruntime.cors import with_cors

        BOOT = uuid.uuid4().hex

        def handler(req):
            end = time.thread_time() + float(req.query_params.get("burn_ms", "0")) / 1000
            while time.thread_time() < end:
                pass
            return JSONResponse({"boot": BOOT, "thread": threading.current_thread().name})

        serve(with_cors(handler))
        """,
    )
    async with EdgeClient(functions_dir, limits={"cpu_soft_limit_ms": 100, "cpu_hard_limit_ms": 5000}) as client:
        r = await client.invoke("sync", params={"burn_ms": 150})
        assert r.headers["access-control-allow-origin"] == "*"
        first = r.json()
        assert first["thread"] == "edgeruntime-sync-handler"
        assert client.app.functions["sync"].worker is None  # retired right after: its CPU counted
        assert (await client.invoke("sync")).json()["boot"] != first["boot"]
    assert "CPU time soft limit reached" in caplog.text


#: Hands CPU-burning work to wait_until in the shape `?shape=` names; records what listeners see.
SPAWNER = """
import asyncio
import gc
import os
import re
import os
import time
from pathlib import Path

from starlette.responses import JSONResponse
from edgeruntime import Deno, EdgeRuntime, serve

EVENTS = Path(Deno.env.get("EVENTS_FILE") or os.devnull)


def record(line):
    with EVENTS.open("a") as f:
        f.write(line + "\\n")


EdgeRuntime.on("unhandledrejection", lambda ev: record(f"unhandledrejection {type(ev.error).__name__}"))
EdgeRuntime.on("beforeunload", lambda ev: record(f"beforeunload {ev.reason} {ev.execution_id}"))


async def burn(ms):
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        step = time.thread_time() + 0.001
        while time.thread_time() < step:
            pass
        await asyncio.sleep(0)
    record("burn finished")


async def spawns():
    await asyncio.create_task(burn(5000))


async def fire_and_forget():
    asyncio.create_task(burn(5000))
    await asyncio.sleep(30)


async def handler(req):
    shape = req.query_params["shape"]
    if shape == "gather":
        EdgeRuntime.wait_until(asyncio.gather(burn(5000)))
    elif shape == "task":
        EdgeRuntime.wait_until(asyncio.ensure_future(burn(5000)))
    elif shape == "spawns":
        EdgeRuntime.wait_until(spawns())
    elif shape == "fire_and_forget":
        EdgeRuntime.wait_until(fire_and_forget())
    return JSONResponse({"shape": shape, "execution_id": req.headers.get("x-test-id")})


serve(handler)
"""


@pytest.mark.parametrize(
    ("isolation", "policy"), [("inline", "per_worker"), ("inline", "per_request"), ("process", "per_request")]
)
@pytest.mark.parametrize("shape", ["gather", "task", "spawns", "fire_and_forget"])
async def test_every_kind_of_awaitable_given_to_wait_until_is_metered_and_cut_at_the_cpu_limit(
    functions_dir: Path, caplog: pytest.LogCaptureFixture, isolation: str, policy: str, shape: str
) -> None:
    """`wait_until(asyncio.gather(burn()))`, a task, and the tasks a background coroutine creates:
    all their CPU is charged, and they are cut at the hard limit (recorded as cut, not failed)."""
    write_function(functions_dir, "spawner", SPAWNER)
    events = functions_dir.parent / "events.log"
    async with EdgeClient(
        functions_dir,
        isolation=isolation,
        sandbox="none",
        policy=policy,
        environ={**os.environ, "EVENTS_FILE": str(events)},
        limits={"cpu_soft_limit_ms": 250, "cpu_hard_limit_ms": 300},
    ) as client:
        started = time.monotonic()
        r = await client.invoke("spawner", params={"shape": shape})
        assert r.status_code == 200, r.text
        await eventually(lambda: client.finished, timeout=20, what="the end of the background work")
        # Without metering the 5 s of CPU would run to the end (or be cut only by the wall clock).
        assert time.monotonic() - started < 4.5
        [task] = client.finished
        assert (task.outcome, task.cut_reason, task.error) == (TaskOutcome.CUT, "CPUTime", None)
        assert client.failed == []
        await asyncio.sleep(0.3)  # a stray task would finish or report by now
        lines = events.read_text().splitlines() if events.exists() else []
        assert "burn finished" not in lines
        assert not [line for line in lines if line.startswith("unhandledrejection")]
    if isolation == "inline" and policy == "per_worker":  # the worker reports the CPU its work used
        [used] = re.findall(r"reason: CPUTime \(cpu_time_used (\d+) ms", caplog.text)
        assert 300 <= int(used) < 1500
    elif isolation == "inline":
        assert "CPU time hard limit reached: request:" in caplog.text
    if isolation == "inline":  # a worker process logs to its own output
        assert "Traceback" not in caplog.text
        assert "failed (execution" not in caplog.text


async def test_tasks_created_by_metered_code_are_metered_and_others_are_left_alone() -> None:
    loop = asyncio.get_running_loop()
    made: list[object] = []

    def previous_factory(loop: asyncio.AbstractEventLoop, coro: Any, **options: Any) -> asyncio.Future[Any]:
        made.append(coro)
        return asyncio.Task(coro, loop=loop, **options)

    loop.set_task_factory(previous_factory)
    try:
        meter = CpuMeter("f")

        async def spawner() -> None:
            await asyncio.create_task(busy(60, 6))

        await metered(spawner(), meter)
        settle()
        assert meter.used_ms >= 50  # the child task's CPU, not the parent's (it only waited)
        assert len(made) == 1 and type(made[0]).__name__ == "_Metered"  # chained, wrapped once
        await asyncio.create_task(busy(20, 2))  # not created by metered code: not wrapped
        assert getattr(made[1], "__qualname__", "") == "busy"
    finally:
        loop.set_task_factory(None)


def test_a_loop_makes_plain_tasks_unless_a_factory_of_its_own_is_under_the_meters() -> None:
    """Where the loop would make `asyncio.Task` anyway, the request path makes it itself."""

    def own_factory(loop: asyncio.AbstractEventLoop, coro: Any, **options: Any) -> asyncio.Task[Any]:
        return asyncio.Task(coro, loop=loop, **options)

    plain, wrapped = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert makes_plain_tasks(plain)
        install_task_factory(plain)
        assert makes_plain_tasks(plain)  # the meter's factory alone passes metered coroutines through
        wrapped.set_task_factory(own_factory)
        assert not makes_plain_tasks(wrapped)
        install_task_factory(wrapped)
        assert not makes_plain_tasks(wrapped)  # the meter's factory calls the one under it
    finally:
        plain.close()
        wrapped.close()
