"""Cron: trigger_cron through the request path, tick claims, overlap skip, catch-up, the loop."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edgeruntime.config.settings import Settings
from edgeruntime.exceptions import ConfigError, JobsError, StoreUnavailable
from edgeruntime.gateway.app import EdgeApp
from edgeruntime.jobs import CronRun, FakeClock, TickStatus, attach
from edgeruntime.testing import EdgeClient
from tests.helpers import write_function

ECHO = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve

async def handler(req: Request) -> JSONResponse:
    return JSONResponse({"body": await req.json(), "cron": req.headers.get("x-edgeruntime-cron"),
                         "scheduled_for": req.headers.get("x-edgeruntime-scheduled-for"),
                         "auth": req.headers.get("authorization", "")[:7], "method": req.method})

serve(handler)
"""

SLOW = """
import asyncio
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve

async def handler(req: Request) -> JSONResponse:
    await asyncio.sleep(float((await req.json()).get("sleep", 0)))
    return JSONResponse({"ok": True})

serve(handler)
"""

CONFIG = """
[cron.daily-report]
function = "echo"
schedule = "0 10 * * *"
body = { source = "cron" }

[cron.every-2s]
function = "echo"
schedule = "2 seconds"

[cron.slow]
function = "slow"
schedule = "* * * * *"
body = { sleep = 0.5 }
"""


@pytest.fixture
def cron_dir(functions_dir: Path) -> Path:
    write_function(functions_dir, "echo", ECHO)
    write_function(functions_dir, "slow", SLOW)
    (functions_dir.parent / "config.toml").write_text(CONFIG, encoding="utf-8")
    return functions_dir


async def test_trigger_cron_posts_body_and_headers_with_service_role(cron_dir: Path, store_url: str) -> None:
    async with EdgeClient(cron_dir, database_url=store_url) as client:
        at = datetime(2027, 3, 1, 10, 0, 30, tzinfo=UTC)
        run = await client.trigger_cron("daily-report", at=at)
        assert run.status is TickStatus.SUCCEEDED and run.http_status == run.status_code == 200
        assert run.json()["cron"] == "daily-report"
        assert run.body is not None
        seen = json.loads(run.body)
        assert seen == {
            "body": {"source": "cron", "executedAt": "2027-03-01T10:00:00.000Z"},
            "cron": "daily-report",
            "scheduled_for": "2027-03-01T10:00:00.000Z",
            "auth": "Bearer ",
            "method": "POST",
        }
        # The scheduled tick is consumed: the scheduler (or a second trigger) cannot run it again.
        with pytest.raises(JobsError, match="already run"):
            await client.trigger_cron("daily-report", at=at)
        [tick] = await client.jobs.store.ticks("daily-report")
        assert (tick.key, tick.status, tick.http_status) == ("2027-03-01T10:00:00.000Z", TickStatus.SUCCEEDED, 200)


async def test_manual_run_does_not_consume_the_schedule(cron_dir: Path) -> None:
    clock = FakeClock(datetime(2027, 3, 1, 10, 0, 1, tzinfo=UTC))
    async with EdgeClient(cron_dir, clock=clock) as client:
        manual = await client.trigger_cron("daily-report")
        assert manual.key.startswith("manual:")
        due = client.jobs.scheduler.due(clock.now())
        assert [(j.name, t) for j, t in due if j.name == "daily-report"] == [
            ("daily-report", datetime(2027, 3, 1, 10, tzinfo=UTC).timestamp())
        ]


async def test_unknown_cron_job(cron_dir: Path) -> None:
    async with EdgeClient(cron_dir) as client:
        with pytest.raises(JobsError, match="no cron job 'nope'"):
            await client.trigger_cron("nope")


async def test_overlap_skip_records_skipped_tick(cron_dir: Path, store_url: str) -> None:
    async with EdgeClient(cron_dir, database_url=store_url) as client:
        scheduler = client.jobs.scheduler
        first = asyncio.create_task(scheduler.fire("slow", 1_800_000_000))
        await asyncio.sleep(0.2)
        second = await scheduler.fire("slow", 1_800_000_060)
        assert second is not None and second.status is TickStatus.SKIPPED
        assert (await first) is not None
        statuses = {t.key: t.status for t in await client.jobs.store.ticks("slow")}
        assert sorted(statuses.values()) == [TickStatus.SKIPPED, TickStatus.SUCCEEDED]


async def test_overlap_allow_runs_a_tick_while_the_previous_run_is_still_going(cron_dir: Path) -> None:
    # DESIGN 5/6: `overlap = "skip"` (the default) or `"allow"`.
    config = (cron_dir.parent / "config.toml").read_text()
    (cron_dir.parent / "config.toml").write_text(
        config + '\n[cron.slow-allowed]\nfunction = "slow"\nschedule = "* * * * *"\nbody = { sleep = 0.5 }\n'
        'overlap = "allow"\n'
    )
    async with EdgeClient(cron_dir) as client:
        scheduler = client.jobs.scheduler
        first = asyncio.create_task(scheduler.fire("slow-allowed", 1_800_000_000))
        await asyncio.sleep(0.2)
        second = await scheduler.fire("slow-allowed", 1_800_000_060)
        assert second is not None and second.status is TickStatus.SUCCEEDED
        done = await first
        assert done is not None and done.status is TickStatus.SUCCEEDED
        statuses = [t.status for t in await client.jobs.store.ticks("slow-allowed")]
        assert statuses == [TickStatus.SUCCEEDED, TickStatus.SUCCEEDED]


def test_catch_up_runs_only_the_latest_missed_tick_within_10_minutes(cron_dir: Path) -> None:
    settings = Settings.build(cron_dir, database_url=f"sqlite:///{cron_dir.parent / 'db.sqlite'}")
    app = EdgeApp(settings)
    system = attach(app, background=False)
    ten = datetime(2027, 3, 1, 10, tzinfo=UTC).timestamp()
    # Down from 09:00 to 10:09:59: of the missed ticks only 10:00 (and the latest minute/2-s ticks) run.
    due = {job.name: tick for job, tick in system.scheduler.due(ten + 599)}
    assert due["daily-report"] == ten
    assert due["every-2s"] == ten + 598
    assert due["slow"] == ten + 540
    # Nothing twice from the same instance.
    assert "daily-report" not in {job.name for job, _ in system.scheduler.due(ten + 600)}
    # After more than 10 minutes the missed daily tick is dropped.
    fresh = attach(EdgeApp(settings), background=False)
    assert "daily-report" not in {job.name for job, _ in fresh.scheduler.due(ten + 601)}


async def test_scheduler_loop_fires_on_the_grid(cron_dir: Path) -> None:
    (cron_dir.parent / "config.toml").write_text(
        '[cron.tick]\nfunction = "echo"\nschedule = "1 seconds"\n', encoding="utf-8"
    )
    settings = Settings.build(cron_dir, database_url=f"sqlite:///{cron_dir.parent / 'db.sqlite'}")
    app = EdgeApp(settings)
    system = attach(app)
    await app.startup()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ticks = [t for t in await system.store.ticks("tick") if t.status is TickStatus.SUCCEEDED]
            if len(ticks) >= 3:
                break
            await asyncio.sleep(0.1)
    finally:
        await app.shutdown()
    assert len(ticks) >= 3
    for tick in ticks:
        assert tick.scheduled_for == int(tick.scheduled_for)  # on the 1-second grid
        assert 0 <= tick.started_at - tick.scheduled_for < 1.0  # generous: shared machine


async def test_paused_job_lets_scheduled_ticks_pass_and_observers_see_fired_ones(cron_dir: Path) -> None:
    (cron_dir.parent / "config.toml").write_text(
        '[cron.tick]\nfunction = "echo"\nschedule = "1 seconds"\n', encoding="utf-8"
    )
    settings = Settings.build(cron_dir, database_url=f"sqlite:///{cron_dir.parent / 'db.sqlite'}")
    app = EdgeApp(settings)
    system = attach(app)
    seen: list[TickStatus] = []
    three = asyncio.Event()

    def observe(run: CronRun) -> None:
        seen.append(run.status)
        if len(seen) >= 3:
            three.set()

    system.scheduler.observers.append(observe)
    await system.store.migrate()
    await system.store.set_cron_paused("tick", True, now=time.time())
    await app.startup()
    try:
        await asyncio.sleep(2.5)  # two or three ticks pass while paused
        assert await system.store.ticks("tick") == [] and seen == []
        manual = await system.scheduler.run_now("tick")  # "Run now" works while paused
        assert manual.status is TickStatus.SUCCEEDED
        await system.store.set_cron_paused("tick", False, now=time.time())
        await asyncio.wait_for(three.wait(), 10)
    finally:
        await app.shutdown()
    assert seen[:3] == [TickStatus.SUCCEEDED] * 3


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ('"61 * * * *"', "[cron.bad] schedule = '61 * * * *': Bad minute"),
        ('"every day"', "[cron.bad] schedule = 'every day': expected 5 fields"),
        ('"90 seconds"', "[cron.bad] schedule = '90 seconds': an `N seconds` schedule needs 1 to 59"),
        ('"0 10 * * *"\ntimezone = "Mars/Olympus"', "[cron.bad] timezone = 'Mars/Olympus': unknown time zone"),
    ],
)
def test_invalid_schedule_is_config_error(functions_dir: Path, schedule: str, message: str) -> None:
    write_function(functions_dir, "echo", ECHO)
    (functions_dir.parent / "config.toml").write_text(
        f'[cron.bad]\nfunction = "echo"\nschedule = {schedule}\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError) as info:
        EdgeClient(functions_dir)
    assert str(info.value).startswith(message)


def test_cron_for_unknown_function_is_config_error(functions_dir: Path) -> None:
    write_function(functions_dir, "echo", ECHO)
    (functions_dir.parent / "config.toml").write_text(
        '[cron.x]\nfunction = "missing"\nschedule = "@daily"\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError, match=r"\[cron.x\] function = 'missing': no such function"):
        EdgeClient(functions_dir)


async def test_a_tick_the_store_could_not_claim_is_offered_again(cron_dir: Path) -> None:
    """The store is down at the moment of a tick: the tick is tried again (the latest missed tick
    within 10 minutes still runs), not dropped for good by this instance."""
    clock = FakeClock(datetime(2027, 3, 1, 10, 0, 1, tzinfo=UTC))
    async with EdgeClient(cron_dir, clock=clock) as client:
        scheduler = client.jobs.scheduler
        store = scheduler.store
        claim = store.claim_tick
        failures = [StoreUnavailable("the store is down")]

        async def claim_once_down(*args: Any, **kwargs: Any) -> Any:
            if failures:
                raise failures.pop()
            return await claim(*args, **kwargs)

        store.claim_tick = claim_once_down  # type: ignore[method-assign]
        ten = datetime(2027, 3, 1, 10, tzinfo=UTC).timestamp()
        [(job, tick)] = [(j, t) for j, t in scheduler.due(clock.now()) if j.name == "daily-report"]
        assert tick == ten
        assert await scheduler._fire_logged(job.name, tick) is None  # the store was down
        clock.advance(1)
        [(job, again)] = [(j, t) for j, t in scheduler.due(clock.now()) if j.name == "daily-report"]
        assert again == ten
        run = await scheduler._fire_logged(job.name, again)
        assert run is not None and run.status is TickStatus.SUCCEEDED
        assert "daily-report" not in {j.name for j, _ in scheduler.due(clock.now())}
