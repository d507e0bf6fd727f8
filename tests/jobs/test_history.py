"""Run history: every invocation and wait_until task is recorded, off the request path."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from edgeruntime.core.background import BackgroundTask, TaskOutcome
from edgeruntime.gateway.extensions import Invocation
from edgeruntime.jobs import history as history_module, sqlite as sqlite_store
from edgeruntime.jobs.history import MAX_BUFFERED, WRITE_BATCH, RunHistory
from edgeruntime.jobs.store import JobStore, Run, RunRow
from edgeruntime.testing import EdgeClient
from tests.helpers import HELLO, write_function

T0 = 1_800_000_000.0

WITH_BACKGROUND = """
import asyncio
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve, EdgeRuntime

async def fails() -> None:
    await asyncio.sleep(0)
    raise ValueError("background boom")

async def handler(req: Request) -> JSONResponse:
    if req.url.path.endswith("/crash"):
        raise RuntimeError("handler boom")
    EdgeRuntime.wait_until(asyncio.sleep(0))
    EdgeRuntime.wait_until(fails())
    return JSONResponse({"ok": True})

serve(handler)
"""


async def test_invocations_and_background_tasks_are_recorded(functions_dir: Path, store_url: str) -> None:
    write_function(functions_dir, "bg", WITH_BACKGROUND)
    async with EdgeClient(functions_dir, database_url=store_url) as client:
        r = await client.invoke("bg")
        assert r.status_code == 200
        execution_id = r.headers["x-edgeruntime-execution-id"]
        assert (await client.invoke("bg", path="/crash")).status_code == 500
        await client.jobs.queue.enqueue("bg", {})
        await client.run_jobs()
        try:
            await client.drain()
        except ExceptionGroup:
            pass
        await client.jobs.history.flush()
        runs = await client.jobs.store.runs("bg")
    invocations = [r for r in runs if r.kind == "invocation"]
    assert sorted((r.trigger, r.status, r.http_status) for r in invocations) == [
        ("http", "failed", 500),
        ("http", "succeeded", 200),
        ("queue", "succeeded", 200),
    ]
    background = [r for r in runs if r.kind == "background" and r.execution_id == execution_id]
    assert sorted(r.status for r in background) == ["completed", "failed"]
    [failed] = [r for r in background if r.status == "failed"]
    assert failed.error is not None and "background boom" in failed.error
    assert all(r.duration_ms is not None and r.duration_ms >= 0 for r in runs)


class SlowStore:
    """A store whose writes take a long time (the request must not wait for them)."""

    url = "slow://"

    def __init__(self, delay: float = 0.5) -> None:
        self.delay = delay
        self.batches: list[Sequence[RunRow]] = []

    async def record_run_rows(self, rows: Sequence[RunRow], *, batch_id: str | None = None) -> int:
        await asyncio.sleep(self.delay)
        self.batches.append(rows)
        return len(rows)

    @property
    def written(self) -> list[RunRow]:
        return [row for batch in self.batches for row in batch]


def _row(i: int) -> RunRow:
    return ("invocation", "f", "http", f"e{i}", "succeeded", T0 + i, 1.0, 200, None, None)


async def test_recording_never_blocks_and_batches() -> None:
    store = SlowStore()
    history = RunHistory(store, flush_interval=0.05)  # type: ignore[arg-type]
    history.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    total = 2 * WRITE_BATCH + 10
    for i in range(total):
        history.add(_row(i))
    assert loop.time() - started < 0.25  # appending is in-memory only
    await history.stop()
    assert store.written == [_row(i) for i in range(total)]
    assert [len(b) for b in store.batches] == [WRITE_BATCH, WRITE_BATCH, 10]


async def test_flushes_that_overlap_write_every_batch_once_and_lose_none() -> None:
    # The writer's own flush, a test's or the dashboard's flush and the one at stop may overlap:
    # each must write what is pending once, not take a batch another is writing.
    store = SlowStore(delay=0.02)
    history = RunHistory(store, flush_interval=60)  # type: ignore[arg-type]
    total = 3 * WRITE_BATCH + 7
    for i in range(total):
        history.add(_row(i))
    results = await asyncio.gather(*(history.flush() for _ in range(4)))
    assert results == [True] * 4
    assert store.written == [_row(i) for i in range(total)]
    assert [len(b) for b in store.batches] == [WRITE_BATCH, WRITE_BATCH, WRITE_BATCH, 7]


async def test_a_full_batch_wakes_the_writer_before_the_interval() -> None:
    store = SlowStore(delay=0)
    history = RunHistory(store, flush_interval=60)  # type: ignore[arg-type]
    history.start()
    try:
        for i in range(WRITE_BATCH + 1):
            history.add(_row(i))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if store.batches:
                break
        await asyncio.sleep(0.05)
        # The full batch at once; the one row left over waits for the interval (or the stop).
        assert [len(b) for b in store.batches] == [WRITE_BATCH]
    finally:
        await history.stop()
    assert [len(b) for b in store.batches] == [WRITE_BATCH, 1]


async def test_rows_that_arrive_during_a_write_wait_for_the_next_flush() -> None:
    store = SlowStore(delay=0.2)
    history = RunHistory(store, flush_interval=0.6)  # type: ignore[arg-type]
    history.start()
    try:
        for i in range(10):
            history.add(_row(i))
        await asyncio.sleep(0.7)  # the interval passed at 0.6: the 10 rows are being written
        assert store.batches == []
        for i in range(10, 13):  # arrive during that write (it ends at 0.8)
            history.add(_row(i))
        await asyncio.sleep(0.45)  # 1.15: chasing them would have written them by 1.0
        assert [len(b) for b in store.batches] == [10]
        await asyncio.sleep(0.75)  # 1.9: written at the next interval (1.4, done by 1.6)
        assert [len(b) for b in store.batches] == [10, 3]
    finally:
        await history.stop()


async def test_a_store_that_falls_behind_loses_the_oldest_records_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = SlowStore(delay=0)
    history = RunHistory(store)  # type: ignore[arg-type]  # not started: nothing drains the buffer
    with caplog.at_level(logging.WARNING, "edgeruntime.jobs"):
        for i in range(MAX_BUFFERED + 3):
            history.add(_row(i))
    assert history.dropped == 3
    [warning] = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert f"{MAX_BUFFERED} records are waiting for the store" in warning.getMessage()
    assert "the oldest are dropped until it catches up" in warning.getMessage()
    await history.flush()
    assert len(store.written) == MAX_BUFFERED
    assert store.written[0] == _row(3) and store.written[-1] == _row(MAX_BUFFERED + 2)
    assert "run history: caught up with the store, 3 dropped (the buffer was full)" in caplog.text


async def test_the_overflow_is_logged_once_until_the_store_catches_up(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history_module, "MAX_BUFFERED", WRITE_BATCH + 5)
    history = RunHistory(SlowStore(delay=0))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, "edgeruntime.jobs"):
        for i in range(WRITE_BATCH + 5 + 20_000):
            history.add(_row(i))
        assert history.dropped == 20_000
        assert len([r for r in caplog.records if "are waiting" in r.getMessage()]) == 1
        await history.flush()
        for i in range(WRITE_BATCH + 6):  # a second episode: logged again, once
            history.add(_row(i))
        await history.flush()
    assert [r.getMessage().split(";")[0].split(",")[0] for r in caplog.records] == [
        f"run history: {WRITE_BATCH + 5} records are waiting for the store",
        "run history: caught up with the store",
        f"run history: {WRITE_BATCH + 5} records are waiting for the store",
        "run history: caught up with the store",
    ]
    assert "20000 dropped" in caplog.records[1].getMessage()
    assert "1 dropped" in caplog.records[3].getMessage()


def _invocation(
    function: str,
    trigger: str,
    execution_id: str,
    status: int,
    started_at: float,
    duration_ms: float,
    error: str | None = None,
) -> Invocation:
    return Invocation(
        function=function,
        trigger=trigger,
        execution_id=execution_id,
        method="POST",
        path=f"/functions/v1/{function}",
        status=status,
        started_at=started_at,
        duration_ms=duration_ms,
        error=error,
    )


def _task(outcome: TaskOutcome, error: BaseException | None = None, cut_reason: str | None = None) -> BackgroundTask:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.cancel()
    return BackgroundTask(
        future,
        name="send_email",
        function="f",
        execution_id="e1",
        started_at=T0 + 1,
        ended_at=T0 + 1.25,
        outcome=outcome,
        error=error,
        cut_reason=cut_reason,
    )


async def test_observed_records_land_in_the_right_columns(store: JobStore) -> None:
    history = RunHistory(store, served={"f"})
    history.on_invocation(_invocation("f", "http", "e1", 202, T0, 1.5))
    history.on_invocation(_invocation("f", "queue", "e2", 200, T0 + 2, 2.5, "wall_clock"))
    history.on_invocation(_invocation("f", "cron", "e3", 503, T0 + 3, 3.5))
    history.on_invocation(_invocation("other", "http", "e4", 404, T0 + 4, 0.1))
    history.on_background(_task(TaskOutcome.COMPLETED))
    history.on_background(_task(TaskOutcome.FAILED, error=ValueError("boom")))
    history.on_background(_task(TaskOutcome.CUT, error=TimeoutError(), cut_reason="wall_clock"))
    await history.flush()
    assert list(reversed(await store.runs())) == [
        Run("invocation", "f", "http", "e1", "succeeded", T0, 1.5, 202),
        Run("invocation", "f", "queue", "e2", "failed", T0 + 2, 2.5, 200, "wall_clock"),
        Run("invocation", "f", "cron", "e3", "failed", T0 + 3, 3.5, 503),
        Run("background", "f", "wait_until", "e1", "completed", T0 + 1, 250.0, None, None, "send_email"),
        Run("background", "f", "wait_until", "e1", "failed", T0 + 1, 250.0, None, "ValueError('boom')", "send_email"),
        Run("background", "f", "wait_until", "e1", "cut", T0 + 1, 250.0, None, "wall_clock", "send_email"),
    ]


async def test_requests_for_unknown_functions_are_not_runs(functions_dir: Path) -> None:
    write_function(
        functions_dir,
        "hello",
        "from starlette.responses import Response\nfrom edgeruntime import serve\nserve(lambda req: Response('hi'))\n",
    )
    async with EdgeClient(functions_dir) as client:
        assert (await client.invoke("hello")).status_code == 200
        for name in ("nope", "..", "x" * 200):
            assert (await client.invoke(name)).status_code == 404
        await client.jobs.history.flush()
        assert [run.function for run in await client.jobs.store.runs()] == ["hello"]


async def test_functions_added_while_serving_are_recorded(functions_dir: Path) -> None:
    write_function(functions_dir, "hello", HELLO)
    async with EdgeClient(functions_dir) as client:
        write_function(functions_dir, "later", HELLO)
        client.app.refresh()
        assert (await client.invoke("later")).status_code == 200
        await client.jobs.history.flush()
        assert [run.function for run in await client.jobs.store.runs()] == ["later"]


async def test_records_made_while_the_sqlite_file_is_locked_are_written_once_it_is_free(
    hello_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 100)  # a write waits this long for the lock
    path = tmp_path / "jobs.db"
    sent: list[str] = []
    async with EdgeClient(hello_dir, database_url=f"sqlite:///{path}") as client:

        async def invoke(count: int) -> None:
            for _ in range(count):
                r = await client.invoke("hello")
                assert r.status_code == 200
                sent.append(r.headers["x-edgeruntime-execution-id"])
                await asyncio.sleep(0.02)

        await invoke(10)
        # Another process holds the write lock longer than the busy timeout, for ~2 s.
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        locked_at = time.monotonic()
        try:
            while time.monotonic() - locked_at < 2.0:
                await invoke(5)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        await invoke(10)
        deadline = time.monotonic() + 20
        recorded: list[str] = []
        while time.monotonic() < deadline:
            recorded = [r.execution_id for r in reversed(await client.jobs.store.runs(limit=10_000))]
            if len(recorded) >= len(sent):
                break
            await asyncio.sleep(0.1)
    assert recorded == sent  # every one, once, in order
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.exc_info for r in problems] == [None, None]  # one line when it failed, one when back
    assert problems[0].getMessage().startswith("run history: writing to the store failed: database ")
    assert "database is locked" in problems[0].getMessage()
    assert "record(s) written late" in problems[1].getMessage()


async def test_a_record_the_store_refuses_is_dropped_alone(store: JobStore, caplog: pytest.LogCaptureFixture) -> None:
    history = RunHistory(store)
    rows = [_row(i) for i in range(20)]
    rows[11] = ("invocation", None, "http", "bad", "succeeded", T0, 1.0, 200, None, None)  # type: ignore[assignment]
    for row in rows:
        history.add(row)
    assert await history.flush() is True
    assert [r.execution_id for r in reversed(await store.runs())] == [f"e{i}" for i in range(20) if i != 11]
    assert history.rejected == 1 and history.buffered == 0
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.startswith("run history: the store refused a record (1 so far), dropped: ")
    assert "'bad'" in line


async def test_stop_gives_up_on_a_store_that_stays_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 50)
    path = tmp_path / "jobs.db"
    store = sqlite_store.SQLiteStore(path)
    await store.migrate()
    history = RunHistory(store)
    history.start()
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        for i in range(5):
            history.add(_row(i))
        started = time.monotonic()
        await history.stop(timeout_sec=1.5)
        assert time.monotonic() - started < 5
    finally:
        locker.execute("ROLLBACK")
        locker.close()
        await store.close()
    assert "the store is still unavailable at shutdown; 5 record(s) not written" in caplog.text


POISON = """
import asyncio
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve, EdgeRuntime

async def handler(req: Request) -> JSONResponse:
    # A name Postgres cannot store (text may not hold NUL): its record is refused.
    EdgeRuntime.wait_until(asyncio.create_task(asyncio.sleep(0), name="evil\\x00name"))
    return JSONResponse({"ok": True})

serve(handler)
"""


async def test_a_function_cannot_get_other_functions_records_dropped(
    hello_dir: Path, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A hostile function makes a record the store refuses: before, the whole batch it sat in
    # (up to 2000 records of every function) was lost with it.
    write_function(hello_dir, "poison", POISON)
    async with EdgeClient(hello_dir, database_url=store_url) as client:
        sent = []
        for name in ["hello"] * 5 + ["poison"] + ["hello"] * 5:
            r = await client.invoke(name)
            assert r.status_code == 200
            sent.append((name, r.headers["x-edgeruntime-execution-id"]))
        await client.drain()
        await client.jobs.history.flush()
        runs = list(reversed(await client.jobs.store.runs(limit=100)))
        history = client.jobs.history
    assert [(r.function, r.execution_id) for r in runs if r.kind == "invocation"] == sent
    background = [r for r in runs if r.kind == "background"]
    rejected = history.rejected
    if store_url.startswith("postgresql"):
        assert (background, rejected) == ([], 1)
        assert "run history: the store refused a record (1 so far), dropped: " in caplog.text
    else:  # SQLite stores it as it is
        assert ([r.name for r in background], rejected) == (["evil\x00name"], 0)
