"""The worker lifecycle (per_worker and per_request), in both isolations, with small limits."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from edgeruntime.core.background import TaskOutcome
from edgeruntime.core.events import StopReason
from edgeruntime.limits import Limits
from edgeruntime.testing import EdgeClient
from edgeruntime.workers.lifecycle import WorkerLifecycle
from tests.helpers import write_function
from tests.probes import environ_for, events_of, eventually, write_probe

WORKER_LIMIT = {
    "code": "WORKER_LIMIT",
    "message": "Worker failed to respond due to a resource limit (please check logs)",
}


@pytest.fixture(params=["inline", "process"])
def isolation(request: pytest.FixtureRequest) -> str:
    # The clients below run with sandbox none: the probe records its events in a file of the test's.
    value: str = request.param
    return value


async def boot_of(client: EdgeClient, **params: object) -> str:
    r = await client.invoke("probe", params=params)
    assert r.status_code == 200, r.text
    boot: str = r.json()["boot"]
    return boot


def supervisor_shutdowns(client: EdgeClient, name: str = "probe") -> list[StopReason]:
    return list(client.app.functions[name].shutdowns)


async def test_half_wall_clock_retires_and_idle_worker_is_early_dropped(
    functions_dir: Path, isolation: str, caplog: pytest.LogCaptureFixture
) -> None:
    events = write_probe(functions_dir)
    async with EdgeClient(
        functions_dir,
        isolation=isolation,
        sandbox="none",
        environ=environ_for(events),
        limits={"wall_clock_limit_sec": 1.0},
    ) as client:
        first = await boot_of(client)
        await asyncio.sleep(0.7)
        second = await boot_of(client)
        assert second != first
        await eventually(lambda: f"{first} beforeunload early_drop" in events_of(events), what="early_drop")
        await eventually(lambda: StopReason.EARLY_DROP in supervisor_shutdowns(client), what="EarlyDrop")
    assert "wall clock duration warning: isolate:" in caplog.text
    assert "early termination has been triggered: isolate:" in caplog.text
    assert "reason: EarlyDrop" in caplog.text
    # beforeunload fires once per reason: the early-dropped worker never saw wall_clock (it was gone at 0.5 s).
    assert f"{first} beforeunload wall_clock" not in events_of(events)


async def test_full_wall_clock_ends_worker_in_flight_546_background_cut(
    functions_dir: Path, isolation: str, caplog: pytest.LogCaptureFixture
) -> None:
    events = write_probe(functions_dir)
    async with EdgeClient(
        functions_dir,
        isolation=isolation,
        sandbox="none",
        environ=environ_for(events),
        limits={"wall_clock_limit_sec": 1.0},
    ) as client:
        started = time.monotonic()
        first = await boot_of(client, bg_sleep=30)
        r = await client.invoke("probe", params={"sleep": 30})
        elapsed = time.monotonic() - started
        assert r.status_code == 546
        assert r.json() == WORKER_LIMIT
        assert r.headers["sb-error-code"] == "WORKER_LIMIT"
        assert elapsed < 10
        cut = await eventually(lambda: [t for t in client.finished if t.outcome is TaskOutcome.CUT])
        assert cut[0].cut_reason == "WallClockTime"
        assert cut[0].name == "background"
        assert events_of(events).count(f"{first} beforeunload wall_clock") == 1
        assert f"{first} background done" not in events_of(events)
        assert StopReason.WALL_CLOCK in supervisor_shutdowns(client)
        # The next request is served by a fresh worker.
        assert await boot_of(client) != first
    assert "wall clock duration reached: isolate:" in caplog.text
    assert "(in_flight_req_exists = true)" in caplog.text
    assert "reason: WallClockTime" in caplog.text
    assert "request has been cancelled by supervisor" in caplog.text


TIMED_UNLOAD = """
import asyncio
import os
import time
from pathlib import Path
from starlette.responses import JSONResponse
from edgeruntime import Deno, EdgeRuntime, serve

BOOTED = time.monotonic()
TIMES = Path(Deno.env.get("EVENTS_FILE") or os.devnull)

def unload(event):
    with TIMES.open("a") as f:
        f.write(f"{event.reason} {time.monotonic() - BOOTED}\\n")

EdgeRuntime.on("beforeunload", unload)

@serve
async def handler(req):
    await asyncio.sleep(30)
    return JSONResponse({})
"""


async def test_beforeunload_fires_once_at_90_percent_of_the_wall_clock_before_the_worker_ends(
    functions_dir: Path, isolation: str
) -> None:
    # DESIGN 4: "`beforeunload` fires once at 90 % of wall clock" (per_worker): not at the end, with the 546.
    write_function(functions_dir, "timed", TIMED_UNLOAD)
    events = functions_dir.parent / "events.log"
    async with EdgeClient(
        functions_dir,
        isolation=isolation,
        sandbox="none",
        environ=environ_for(events),
        limits={"wall_clock_limit_sec": 2.0},
    ) as client:
        r = await client.invoke("timed")
        assert r.status_code == 546
        unloads = await eventually(lambda: events_of(events), what="beforeunload")
        await asyncio.sleep(0.2)
    assert len(events_of(events)) == 1, events_of(events)
    reason, at = unloads[0].split()
    assert reason == "wall_clock"
    # The worker's clock starts just before its module is imported: 1.8 s after it, less that start.
    assert 1.4 <= float(at) < 1.95, at


async def test_retired_worker_with_background_work_is_dropped_only_when_it_ends(
    functions_dir: Path, isolation: str
) -> None:
    events = write_probe(functions_dir)
    async with EdgeClient(
        functions_dir,
        isolation=isolation,
        sandbox="none",
        environ=environ_for(events),
        limits={"wall_clock_limit_sec": 2.0},
    ) as client:
        first = await boot_of(client, bg_sleep=1.3)
        await asyncio.sleep(1.1)
        assert await boot_of(client) != first  # retired at 1 s, still running its background work
        await eventually(lambda: f"{first} beforeunload early_drop" in events_of(events), what="early_drop")
        lines = events_of(events)
        assert lines.index(f"{first} background done") < lines.index(f"{first} beforeunload early_drop")
        assert [t.outcome for t in client.finished] == [TaskOutcome.COMPLETED]


async def test_shutdown_dispatches_termination_and_cuts_what_is_left(functions_dir: Path, isolation: str) -> None:
    events = write_probe(functions_dir)
    client = EdgeClient(functions_dir, isolation=isolation, sandbox="none", environ=environ_for(events))
    async with client:
        first = await boot_of(client, bg_sleep=30)
    assert f"{first} beforeunload termination" in events_of(events)
    assert [(t.outcome, t.cut_reason) for t in client.finished] == [(TaskOutcome.CUT, "TerminationRequested")]
    assert list(client.app.functions["probe"].shutdowns) == [StopReason.TERMINATION]


async def test_cpu_soft_limit_retires(functions_dir: Path, isolation: str, caplog: pytest.LogCaptureFixture) -> None:
    events = write_probe(functions_dir)
    async with EdgeClient(
        functions_dir,
        isolation=isolation,
        sandbox="none",
        environ=environ_for(events),
        limits={"cpu_soft_limit_ms": 100, "cpu_hard_limit_ms": 5000},
    ) as client:
        first = await boot_of(client, burn_ms=250)
        # The process monitor reads CPU time every few ms: the next request after that is new.
        await eventually(lambda: client.app.functions["probe"].worker is None, what="retirement")
        assert await boot_of(client) != first
        await eventually(lambda: f"{first} beforeunload early_drop" in events_of(events), what="early_drop")
    assert "CPU time soft limit reached: isolate:" in caplog.text


async def test_cpu_hard_limit_ends_worker(
    functions_dir: Path, isolation: str, caplog: pytest.LogCaptureFixture
) -> None:
    events = write_probe(functions_dir)
    async with EdgeClient(
        functions_dir,
        isolation=isolation,
        sandbox="none",
        environ=environ_for(events),
        limits={"cpu_soft_limit_ms": 100, "cpu_hard_limit_ms": 200},
    ) as client:
        first = await boot_of(client)
        started = time.monotonic()
        # A function that awaits now and then (a process is killed even in `while True`: test_process).
        r = await client.invoke("probe", params={"burn_ms": 60_000})
        assert r.status_code == 546, r.text
        assert r.json() == WORKER_LIMIT
        assert time.monotonic() - started < 10
        assert f"{first} beforeunload cpu" in events_of(events)
        assert StopReason.CPU in supervisor_shutdowns(client)
        assert await boot_of(client) != first
    assert "CPU time hard limit reached: isolate:" in caplog.text
    assert "reason: CPUTime" in caplog.text


async def test_retire_hand_over_under_continuous_load_loses_no_request(functions_dir: Path, isolation: str) -> None:
    events = write_probe(functions_dir)
    statuses: list[int] = []
    boots: set[str] = set()
    async with EdgeClient(
        functions_dir,
        isolation=isolation,
        sandbox="none",
        environ=environ_for(events),
        limits={"wall_clock_limit_sec": 1.0},
    ) as client:
        deadline = time.monotonic() + 2.6

        async def user() -> None:
            while time.monotonic() < deadline:
                r = await client.invoke("probe", params={"sleep": 0.03})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    boots.add(r.json()["boot"])

        await asyncio.gather(*(user() for _ in range(4)))
        await eventually(lambda: StopReason.EARLY_DROP in supervisor_shutdowns(client), what="EarlyDrop")
        assert StopReason.WALL_CLOCK not in supervisor_shutdowns(client)
    assert len(statuses) > 20
    assert set(statuses) == {200}
    assert len(boots) >= 3  # retired at 0.5 s, then every 0.5 s of each new worker's life


async def test_per_request_budget_covers_its_background_work(functions_dir: Path, isolation: str) -> None:
    events = write_probe(functions_dir)
    async with EdgeClient(
        functions_dir,
        isolation=isolation,
        sandbox="none",
        policy="per_request",
        environ=environ_for(events),
        limits={"wall_clock_limit_sec": 1.0},
    ) as client:
        first = await boot_of(client, bg_sleep=30)
        await asyncio.sleep(0.6)
        # Arrives before the first request's budget runs out and gets its own (its work ends at ~1.3 s).
        second = await boot_of(client, bg_sleep=0.7)
        cut = await eventually(lambda: [t for t in client.finished if t.outcome is TaskOutcome.CUT])
        assert cut[0].cut_reason == "WallClockTime"
        await client.drain(timeout=10)
        completed = [t for t in client.finished if t.outcome is TaskOutcome.COMPLETED]
        assert len(completed) == 1
        assert second == first  # the worker was neither retired nor ended
        # A request that runs longer than its own budget gets 546; the worker keeps serving.
        r = await client.invoke("probe", params={"sleep": 30})
        assert r.status_code == 546
        assert await boot_of(client) == first
        assert supervisor_shutdowns(client) == []


async def test_per_request_beforeunload_fires_at_90_percent_with_the_reason_and_the_execution_id(
    functions_dir: Path, isolation: str
) -> None:
    events = write_probe(functions_dir)
    async with EdgeClient(
        functions_dir,
        isolation=isolation,
        sandbox="none",
        policy="per_request",
        environ=environ_for(events),
        limits={"wall_clock_limit_sec": 1.0},
    ) as client:
        first = await client.invoke("probe", params={"bg_sleep": 30})
        assert first.status_code == 200
        boot, execution_id = first.json()["boot"], first.headers["x-edgeruntime-execution-id"]
        quick = await client.invoke("probe")  # ends long before its budget: no beforeunload
        unloads = await eventually(
            lambda: [line for line in events_of(events) if "beforeunload" in line], what="beforeunload"
        )
        assert unloads == [f"{boot} beforeunload wall_clock {execution_id}"]
        cut = await eventually(lambda: [t for t in client.finished if t.outcome is TaskOutcome.CUT])
        assert cut[0].cut_reason == "WallClockTime"
        await asyncio.sleep(0.3)
        assert [line for line in events_of(events) if "beforeunload" in line] == unloads  # once
        assert quick.headers["x-edgeruntime-execution-id"] not in "\n".join(events_of(events))
        assert supervisor_shutdowns(client) == []  # the worker itself goes on


async def test_per_request_cpu_budget(functions_dir: Path, isolation: str) -> None:
    events = write_probe(functions_dir)
    async with EdgeClient(
        functions_dir,
        isolation=isolation,
        sandbox="none",
        policy="per_request",
        environ=environ_for(events),
        limits={"cpu_soft_limit_ms": 100, "cpu_hard_limit_ms": 200},
    ) as client:
        first = await boot_of(client)
        r = await client.invoke("probe", params={"burn_ms": 60_000})
        assert r.status_code == 546
        # Each request has its own budget: three requests of 120 ms each are fine on one worker.
        for _ in range(3):
            assert await boot_of(client, burn_ms=120) == first


async def test_per_request_cpu_charged_after_the_request_ended_does_not_fail_it(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = write_probe(functions_dir)
    async with EdgeClient(
        functions_dir,
        policy="per_request",
        environ=environ_for(events),
        limits={"cpu_soft_limit_ms": 100, "cpu_hard_limit_ms": 200},
    ) as client:
        # Its only step is charged at the next turn of the event loop, after the request ended.
        first = await boot_of(client, burn_once_ms=300)
        assert await boot_of(client) == first
    assert "CPU time hard limit reached" not in caplog.text


async def test_limits_apply_per_function(functions_dir: Path) -> None:
    events = write_probe(functions_dir)
    (functions_dir.parent / "config.toml").write_text("[functions.probe]\nwall_clock_limit_sec = 1\n")
    async with EdgeClient(functions_dir, environ=environ_for(events)) as client:
        r = await client.invoke("probe", params={"sleep": 30})
        assert r.status_code == 546
        assert client.app.functions["hello"].limits.wall_clock_limit_sec == 400
        assert (await client.invoke("hello")).status_code == 200


async def test_limit_hit_by_one_function_leaves_others_serving(functions_dir: Path, isolation: str) -> None:
    events = write_probe(functions_dir)
    (functions_dir.parent / "config.toml").write_text("[functions.probe]\nwall_clock_limit_sec = 1\n")
    async with EdgeClient(functions_dir, isolation=isolation, sandbox="none", environ=environ_for(events)) as client:
        slow = asyncio.ensure_future(client.invoke("probe", params={"sleep": 30}))
        for _ in range(5):
            assert (await client.invoke("hello")).status_code == 200
        r: httpx.Response = await slow
        assert r.status_code == 546
        assert (await client.invoke("hello")).status_code == 200


@pytest.mark.e2e
async def test_real_server_hand_over_and_wall_clock(functions_dir: Path) -> None:
    from tests.helpers import SERVICE_ROLE, ServerProcess

    write_probe(functions_dir)
    statuses: list[int] = []
    boots: set[str] = set()
    with ServerProcess(functions_dir, "--no-watch", "--limit", "wall_clock_limit_sec=1") as server:
        async with httpx.AsyncClient(headers=SERVICE_ROLE, timeout=30) as http:
            deadline = time.monotonic() + 1.8

            async def user() -> None:
                while time.monotonic() < deadline:
                    r = await http.get(server.url("probe"), params={"sleep": 0.02})
                    statuses.append(r.status_code)
                    boots.add(r.json()["boot"])

            await asyncio.gather(*(user() for _ in range(3)))
            r = await http.get(server.url("probe"), params={"sleep": 30})
            assert r.status_code == 546
        assert server.terminate() == 0
    assert set(statuses) == {200}
    assert len(boots) >= 2
    assert "wall clock duration warning: isolate:" in server.output
    assert "early termination has been triggered: isolate:" in server.output
    assert "in_flight_req_exists = true)" in server.output


async def test_a_successor_is_prepared_at_80_percent_of_what_retires_the_worker() -> None:
    calls: list[str] = []

    def lifecycle(limits: Limits) -> WorkerLifecycle:
        calls.clear()
        return WorkerLifecycle(
            "probe",
            "w1",
            limits,
            "per_worker",
            retire=lambda reason: calls.append(f"retire {reason.key}"),
            end=lambda reason: calls.append(f"end {reason}"),
            beforeunload=lambda reason: calls.append(f"beforeunload {reason}"),
            in_flight=lambda: 0,
            prepare=lambda: calls.append("prepare"),
        )

    limits = Limits(cpu_soft_limit_ms=100, cpu_hard_limit_ms=200, memory_limit_mb=100)
    by_cpu = lifecycle(limits)
    assert 80 in by_cpu.cpu_thresholds()
    by_cpu.observe_cpu(79)
    assert calls == []
    by_cpu.observe_cpu(80)
    by_cpu.observe_cpu(90)
    assert calls == ["prepare"]
    by_cpu.observe_cpu(100)
    assert calls == ["prepare", "retire cpu"]

    by_memory = lifecycle(limits)  # the memory alert retires at 50 MB (half the limit)
    by_memory.observe_memory(39)
    assert calls == []
    by_memory.observe_memory(40)
    by_memory.observe_memory(50)
    assert calls == ["prepare", "retire memory"]

    by_wall_clock = lifecycle(Limits(wall_clock_limit_sec=1.0))
    by_wall_clock.start()
    try:
        await eventually(lambda: calls, what="prepare")
        assert calls == ["prepare"]  # at 0.4 s; retired at 0.5 s
        await eventually(lambda: len(calls) == 2, what="retirement")
        assert calls == ["prepare", "retire wall_clock"]
    finally:
        by_wall_clock.stop()
