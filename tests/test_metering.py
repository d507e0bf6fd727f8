"""Inline CPU metering (step by step, thread CPU time) and the event loop watchdog."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from edgeruntime.metering import CpuMeter, LoopWatchdog, metered, run_metered
from edgeruntime.testing import EdgeClient
from tests.helpers import write_function


async def busy(ms: float, steps: int) -> str:
    for _ in range(steps):
        end = time.thread_time() + ms / 1000 / steps
        while time.thread_time() < end:
            pass
        await asyncio.sleep(0)
    return "done"


async def test_meter_counts_cpu_of_each_step() -> None:
    meter = CpuMeter("f")
    assert await metered(busy(60, 6), meter) == "done"
    assert 50 <= meter.used_ms < 1000


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
