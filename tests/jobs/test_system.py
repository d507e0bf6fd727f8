"""The jobs system of one app while it serves: the history size cap is enforced (real time, SQLite);
an instance whose clock is apart from the Postgres server's says so, at start and when it is stepped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeruntime.config.settings import Settings
from edgeruntime.exceptions import ConfigError, JobsError
from edgeruntime.gateway.app import EdgeApp
from edgeruntime.jobs import FakeClock, enqueue
from edgeruntime.jobs.system import attach
from edgeruntime.testing import EdgeClient
from tests.helpers import HELLO, free_port, write_function


async def test_a_size_cap_is_enforced_while_serving(
    hello_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeruntime.jobs import system as system_module
    from edgeruntime.jobs.store import Run

    monkeypatch.setattr(system_module, "TRIM_INTERVAL_SEC", 0.1)
    (hello_dir.parent / "config.toml").write_text("[jobs]\nretention_max_rows = 100\n", encoding="utf-8")
    app = EdgeApp(Settings.build(hello_dir, database_url=f"sqlite:///{tmp_path / 'jobs.db'}", watch=False))
    system = attach(app)
    await app.startup()
    try:
        now = system.clock.now()
        await system.store.record_runs(
            [Run("invocation", "hello", "http", f"e{i}", "succeeded", now, 1.0, 200) for i in range(250)]
        )
        deadline = asyncio.get_running_loop().time() + 10
        runs = await system.store.runs(limit=1000)
        while len(runs) > 100 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            runs = await system.store.runs(limit=1000)
    finally:
        await app.shutdown(timeout=0)
    # Down to 90 % of the cap, the newest kept.
    assert [r.execution_id for r in runs] == [f"e{i}" for i in reversed(range(160, 250))]


def _skew_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "clock" in r.getMessage() and r.levelno >= logging.WARNING]


def _seconds(line: str) -> float:
    """The seconds a clock warning says the clocks are apart."""
    return float(line.removeprefix("jobs: this instance's clock is ").split(" s ")[0])


async def _until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"not within {timeout:g} s: {what}"
        await asyncio.sleep(0.02)


@pytest.mark.postgres
@pytest.mark.parametrize(("offset", "direction"), [(120.0, "ahead of"), (-120.0, "behind")])
async def test_a_clock_apart_from_the_postgres_servers_is_warned_at_start(
    hello_dir: Path, postgres_url: str, caplog: pytest.LogCaptureFixture, offset: float, direction: str
) -> None:
    """Instances on one database compare leases written by each other's clocks: one 120 s ahead
    takes the jobs of the others for lost after 1 s (a 30 s lease), one behind loses its own."""
    app = EdgeApp(Settings.build(hello_dir, database_url=postgres_url, watch=False))
    system = attach(app, clock=FakeClock(time.time() + offset))
    with caplog.at_level(logging.WARNING, "edgeruntime.jobs"):
        await app.startup()
        try:
            await _until(lambda: bool(_skew_lines(caplog)), "the warning")
        finally:
            await app.shutdown(timeout=0)
    [line] = _skew_lines(caplog)
    assert abs(offset) - 5 < _seconds(line) <= abs(offset) + 1, line
    assert line.endswith(
        f" s {direction} the database server's ({system.store.url}), more than the 5.0 s leases allow"
        " ([jobs] lease_sec = 30): instances sharing a database judge leases and due times by their own"
        f" clocks, {_HARM[direction]}; synchronise this host's clock (NTP)"
    )


_HARM = {
    "ahead of": "so this one can take jobs and cron ticks other instances are still running for lost and deliver"
    " them again, and runs cron ticks and delayed jobs early",
    "behind": "so other instances can take the jobs and cron ticks this one is running for lost and deliver"
    " them again, and the jobs it delays come due early",
}


@pytest.mark.postgres
async def test_a_clock_stepped_while_serving_is_warned_once_and_its_return_said(
    hello_dir: Path, postgres_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeruntime.jobs import system as system_module

    monkeypatch.setattr(system_module, "CLOCK_CHECK_INTERVAL_SEC", 0.05)
    clock = FakeClock(time.time())
    app = EdgeApp(Settings.build(hello_dir, database_url=postgres_url, watch=False))
    system = attach(app, clock=clock)
    with caplog.at_level(logging.WARNING, "edgeruntime.jobs"):
        await app.startup()
        try:
            offset = await system.check_clock()
            assert offset is not None and abs(offset.seconds) < 1, offset
            assert _skew_lines(caplog) == []
            clock.advance(60)  # stepped: the next check sees it
            await _until(lambda: bool(_skew_lines(caplog)), "the warning")
            await asyncio.sleep(0.3)  # several more checks, still apart: said once
            assert len(_skew_lines(caplog)) == 1
            clock.set(time.time())
            await _until(lambda: len(_skew_lines(caplog)) == 2, "the clock's return")
        finally:
            await app.shutdown(timeout=0)
    first, back = _skew_lines(caplog)
    assert 55 < _seconds(first) <= 61, first  # the fake clock stands still meanwhile
    assert " s ahead of the database server's " in first
    assert back.startswith("jobs: this instance's clock agrees with the database server's again (")


async def test_a_sqlite_store_has_no_clock_of_its_own_to_compare(hello_dir: Path, tmp_path: Path) -> None:
    app = EdgeApp(Settings.build(hello_dir, database_url=f"sqlite:///{tmp_path / 'jobs.db'}", watch=False))
    system = attach(app, clock=FakeClock(time.time() + 3600))
    await app.startup()
    try:
        assert await system.check_clock() is None
    finally:
        await app.shutdown(timeout=0)


ENQUEUER = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve
from edgeruntime.jobs import enqueue

async def handler(req: Request) -> JSONResponse:
    return JSONResponse({"job": await enqueue("hello", {})})

serve(handler)
"""


async def test_function_code_enqueues_to_the_client_opened_last_still_open_whatever_order_they_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGERUNTIME_DATABASE_URL", raising=False)  # no script fallback: only a running queue
    functions = []
    for name in ("a", "b"):
        write_function(tmp_path / name / "functions", "enqueue", ENQUEUER)
        functions.append(write_function(tmp_path / name / "functions", "hello", HELLO).parent.parent)
    a, b = EdgeClient(functions[0]), EdgeClient(functions[1])
    async with contextlib.AsyncExitStack() as b_open:
        async with a:
            await b_open.enter_async_context(b)
            assert (await b.invoke("enqueue")).status_code == 200
            assert [r.function for r in await b.run_jobs()] == ["hello"]
        # A exited first: B's functions still enqueue, to B's store.
        response = await b.invoke("enqueue")
        assert response.status_code == 200, response.text
        assert [r.function for r in await b.run_jobs()] == ["hello"]
        refused = f"postgresql://postgres@127.0.0.1:{free_port()}/none"  # nothing listens there
        with pytest.raises(ConfigError, match="connection failed"):
            async with EdgeClient(functions[0], database_url=refused):
                pass
        # A client that failed to open took nothing away.
        assert (await b.invoke("enqueue")).status_code == 200
        assert [r.function for r in await b.run_jobs()] == ["hello"]
    # All exited: no queue is running (A's closed one is not used).
    with pytest.raises(JobsError, match="no jobs store is running"):
        await enqueue("hello", {})
