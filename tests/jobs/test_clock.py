"""Instances sharing a Postgres database follow the server's clock, whatever their hosts' clocks say."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from edgeruntime.config.settings import Settings
from edgeruntime.gateway.app import EdgeApp
from edgeruntime.jobs import FakeClock, JobStatus, JobSystem, SystemClock, TickStatus, attach
from edgeruntime.jobs.clock import ServerClock
from tests.helpers import write_function

SLOW = """
import asyncio
import os
from starlette.requests import Request
from starlette.responses import Response
from edgeruntime import serve

async def handler(req: Request) -> Response:
    kind = "tick" if req.headers.get("x-edgeruntime-cron") else "job"
    with open({log!r}, "a", encoding="utf-8") as f:
        f.write(f"{{kind}} {{req.headers.get('x-edgeruntime-attempt', '-')}}\\n")
    for _ in range(300):  # until the test releases it, at most 30 s
        if os.path.exists({release!r}):
            break
        await asyncio.sleep(0.1)
    return Response("done")

serve(handler)
"""

CONFIG = """
[cron.slow]
function = "slow"
schedule = "0 0 1 1 *"

[jobs]
poll_interval_ms = 100
"""


class SkewedClock:
    """A host clock `skew` seconds off the real one, ticking with it."""

    def __init__(self, skew: float) -> None:
        self.skew = skew

    def now(self) -> float:
        return time.time() + self.skew


def _lines(log: Path) -> list[str]:
    return sorted(log.read_text(encoding="utf-8").splitlines()) if log.exists() else []


async def _until_lines(log: Path, expected: list[str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _lines(log) != expected:
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {expected}, got {_lines(log)}"
        await asyncio.sleep(0.02)


def _instance(functions_dir: Path, url: str, skew: float) -> JobSystem:
    app = EdgeApp(Settings.build(functions_dir, database_url=url, watch=False))
    return attach(app, clock=ServerClock(SkewedClock(skew)))


@pytest.mark.postgres
async def test_instances_a_minute_apart_keep_each_others_leases(
    functions_dir: Path, postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An instance whose host clock is 60 s ahead of another's, sharing its database, neither takes
    the job the other is running (a 30 s lease) nor ends its running cron tick as lost."""
    log, release = tmp_path / "deliveries.log", tmp_path / "release"
    write_function(functions_dir, "slow", SLOW.format(log=str(log), release=str(release)))
    (functions_dir.parent / "config.toml").write_text(CONFIG, encoding="utf-8")
    behind, ahead = _instance(functions_dir, postgres_url, -30.0), _instance(functions_dir, postgres_url, 30.0)
    caplog.set_level(logging.WARNING, "edgeruntime.jobs")
    await behind.app.startup()
    try:
        job_id = await behind.queue.enqueue("slow", {})
        tick = asyncio.create_task(behind.scheduler.run_now("slow"))
        await _until_lines(log, ["job 1", "tick -"])  # both run by the instance behind
        await ahead.app.startup()
        try:
            assert abs(ahead.clock.now() - behind.clock.now()) < 1
            await asyncio.sleep(3)  # the instance ahead claims every 100 ms meanwhile
            assert _lines(log) == ["job 1", "tick -"]
            [running] = await ahead.store.ticks("slow")
            assert running.status is TickStatus.RUNNING, running
            release.touch()
            assert (await tick).status is TickStatus.SUCCEEDED
            deadline = time.monotonic() + 10
            while (job := await ahead.store.job(job_id)) is None or job.status is not JobStatus.SUCCEEDED:
                assert time.monotonic() < deadline, job
                await asyncio.sleep(0.05)
            assert job.attempt == 1
            assert _lines(log) == ["job 1", "tick -"]
            # The hosts' clocks are still wrong, for what does not read the server's: each says so.
            warned = [_host_apart(line) for line in _clock_lines(caplog)]
            assert [(round(seconds), way) for seconds, way in warned] == [(30, "behind"), (30, "ahead of")]
        finally:
            await ahead.app.shutdown(timeout=0)
    finally:
        release.touch()
        await behind.app.shutdown(timeout=5)


def _clock_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "clock" in r.getMessage() and r.levelno >= logging.WARNING]


def _host_apart(line: str) -> tuple[float, str]:
    """How far, and which way, a warning says this host's clock is from the server's."""
    assert line.endswith(
        " s: leases, due times and cron ticks follow the server's clock, so instances sharing the database"
        " still agree on them, but the time function code reads (time.time(), datetime.now()) and the times"
        " of run records and log lines written here are off by as much; synchronise this host's clock (NTP)"
    ), line
    seconds, rest = line.removeprefix("jobs: this host's clock is ").split(" s ", 1)
    return float(seconds), rest.split(" the database server's ")[0]


@pytest.mark.postgres
async def test_serving_on_postgres_follows_the_servers_clock_and_a_fake_clock_stays_as_it_is(
    hello_dir: Path, postgres_url: str, tmp_path: Path
) -> None:
    served = attach(EdgeApp(Settings.build(hello_dir, database_url=postgres_url, watch=False)))
    assert isinstance(served.clock, ServerClock) and isinstance(served.clock.host, SystemClock)
    await served.app.startup()
    try:
        # Measured before anything reads it; the server runs on this host, so the clocks agree.
        assert served.clock.measured and abs(served.clock.now() - time.time()) < 0.5
    finally:
        await served.app.shutdown(timeout=0)
    fake = FakeClock(0)
    assert attach(EdgeApp(Settings.build(hello_dir, database_url=postgres_url, watch=False)), clock=fake).clock is fake
    sqlite = EdgeApp(Settings.build(hello_dir, database_url=f"sqlite:///{tmp_path / 'jobs.db'}", watch=False))
    assert type(attach(sqlite).clock) is SystemClock  # one host, one clock


@pytest.mark.postgres
async def test_a_host_clock_stepped_while_serving_is_warned_and_leaves_the_jobs_time_alone(
    hello_dir: Path, postgres_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeruntime.jobs import system as system_module

    monkeypatch.setattr(system_module, "CLOCK_CHECK_INTERVAL_SEC", 0.05)
    host = SkewedClock(0.0)
    system = attach(EdgeApp(Settings.build(hello_dir, database_url=postgres_url, watch=False)), clock=ServerClock(host))
    caplog.set_level(logging.WARNING, "edgeruntime.jobs")
    await system.app.startup()
    try:
        host.skew = 120.0  # stepped: the jobs' time does not move
        assert abs(system.clock.now() - time.time()) < 0.5
        deadline = time.monotonic() + 10
        while not _clock_lines(caplog):
            assert time.monotonic() < deadline, "no warning"
            await asyncio.sleep(0.02)
        assert abs(system.clock.now() - time.time()) < 0.5
        host.skew = 0.0
        while len(_clock_lines(caplog)) < 2:
            assert time.monotonic() < deadline, "the clock's return not said"
            await asyncio.sleep(0.02)
    finally:
        await system.app.shutdown(timeout=0)
    warned, back = _clock_lines(caplog)
    seconds, way = _host_apart(warned)
    assert 119 < seconds < 121 and way == "ahead of"
    assert back.startswith("jobs: this host's clock agrees with the database server's again (")
