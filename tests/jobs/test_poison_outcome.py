"""An outcome the store cannot write never blocks the others.

Postgres text cannot hold NUL: a function answering a job or a cron tick with a non-2xx status and
a body containing one (any binary body) made `finish` raise DataError for the whole batch, which
the runner kept and put in front of every later flush, so no outcome of that instance was recorded
again. The Postgres store now writes such text with U+FFFD for NUL (SQLite keeps NUL as it is);
and the runner keeps a batch only when the store is unavailable, otherwise writes its outcomes one
at a time and drops (logging it) only one the store refuses.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from edgeruntime.exceptions import ConfigError, StoreUnavailable
from edgeruntime.jobs import FakeClock, JobsConfig, TickStatus
from edgeruntime.jobs.outage import store_unavailable
from edgeruntime.jobs.queue import JobResult, QueueRunner
from edgeruntime.jobs.store import JobStatus, JobStore, Outcome
from edgeruntime.testing import EdgeClient
from tests.helpers import write_function

# A failure whose body is binary: a NUL, and a byte that is not UTF-8 (decoded as U+FFFD).
POISON = """
from starlette.requests import Request
from starlette.responses import Response
from edgeruntime import serve

async def handler(req: Request) -> Response:
    return Response(b"bad\\x00binary\\xff", status_code=500, media_type="application/octet-stream")

serve(handler)
"""

OK = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve

async def handler(req: Request) -> JSONResponse:
    return JSONResponse({"ok": True})

serve(handler)
"""

CONFIG = """
[cron.poison]
function = "poison"
schedule = "0 10 * * *"
"""


@pytest.fixture
def poison_dir(functions_dir: Path) -> Path:
    write_function(functions_dir, "poison", POISON)
    write_function(functions_dir, "ok", OK)
    (functions_dir.parent / "config.toml").write_text(CONFIG, encoding="utf-8")
    return functions_dir


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


# -- the Postgres store writes a function's text with its NULs replaced ------------------------


@pytest.mark.postgres
async def test_a_failing_answer_with_a_nul_is_recorded_and_later_outcomes_too(
    poison_dir: Path, postgres_url: str
) -> None:
    async with EdgeClient(poison_dir, database_url=postgres_url) as client:
        store, queue, runner = client.jobs.store, client.jobs.queue, client.jobs.runner
        runner.backoff_scale = 0.0  # the retry is due at once
        queue.on_enqueue = runner.wake
        runner.start()
        try:
            poison = await queue.enqueue("poison", max_attempts=2)
            first = await queue.enqueue("ok")

            async def settled(job_id: int, status: JobStatus) -> bool:
                job = await store.job(job_id)
                return job is not None and job.status == status

            async def both() -> bool:
                return await settled(poison, JobStatus.FAILED) and await settled(first, JobStatus.SUCCEEDED)

            await _until(both)
            later = await queue.enqueue("ok")
            await _until(lambda: settled(later, JobStatus.SUCCEEDED))
        finally:
            await runner.stop(timeout=1.0)
        assert runner._outcomes == []
        job = await store.job(poison)
        assert job is not None and (job.attempt, job.last_error) == (2, "HTTP 500: bad\ufffdbinary\ufffd")
        [failed] = await store.failed_jobs()
        assert (failed.job_id, failed.attempts, failed.http_status) == (poison, 2, 500)
        assert (failed.error, failed.response) == ("HTTP 500: bad\ufffdbinary\ufffd", "bad\ufffdbinary\ufffd")


async def test_a_cron_tick_failing_with_a_nul_is_finished(poison_dir: Path, store_url: str) -> None:
    """The tick is recorded failed (on Postgres it stayed `running`, renewed by the heartbeat, and
    an `overlap = "skip"` cron job was skipped for good)."""
    async with EdgeClient(poison_dir, database_url=store_url) as client:
        run = await client.trigger_cron("poison")
        assert (run.status, run.http_status) == (TickStatus.FAILED, 500)
        [tick] = await client.jobs.store.ticks("poison")
        nul = "\x00" if store_url.startswith("sqlite") else "\ufffd"  # SQLite keeps NUL as it is
        assert (tick.status, tick.http_status, tick.error) == (
            TickStatus.FAILED,
            500,
            f"HTTP 500: bad{nul}binary\ufffd",
        )


async def test_outcome_texts_with_a_nul_round_trip(store: JobStore) -> None:
    """A retry and a final failure with NUL in the response and the error: SQLite keeps NUL, Postgres
    writes U+FFFD; the failed job is moved to failed jobs either way."""
    nul = "\x00" if store.url.startswith("sqlite") else "\ufffd"
    ids = [await store.enqueue("f", "{}", run_at=0.0, max_attempts=2, idempotency_key=None, now=0.0) for _ in range(3)]
    assert len(await store.claim("A", 10, now=1.0, lease_sec=30)) == 3
    outcomes = [
        Outcome(ids[0], 1, False, 500, "body\x00one", "HTTP 500: body\x00one", retry_at=5.0),
        Outcome(ids[1], 1, False, 502, "\x00", "Boom: \x00"),
        Outcome(ids[2], 1, True, 200),
    ]
    assert await store.finish(outcomes, now=2.0) == 3
    retrying, failed_job, succeeded = [await store.job(i) for i in ids]
    assert retrying is not None and (retrying.status, retrying.last_error) == (
        JobStatus.QUEUED,
        f"HTTP 500: body{nul}one",
    )
    assert failed_job is not None and (failed_job.status, failed_job.last_error) == (JobStatus.FAILED, f"Boom: {nul}")
    assert succeeded is not None and succeeded.status == JobStatus.SUCCEEDED
    [failed] = await store.failed_jobs()
    assert (failed.job_id, failed.http_status, failed.error, failed.response) == (ids[1], 502, f"Boom: {nul}", nul)


# -- the runner: one refused outcome never holds back the others --------------------------------


class StubStore:
    """`finish` only (all `_flush` calls): refuses any batch holding an outcome `refuse` says
    so of, with that error (nothing of such a batch is written, as in one transaction)."""

    url = "stub://"

    def __init__(self, refuse: Callable[[Outcome], Exception | None]) -> None:
        self.refuse = refuse
        self.written: list[Outcome] = []
        self.calls = 0

    async def finish(self, outcomes: Sequence[Outcome], *, now: float) -> int:
        self.calls += 1
        for o in outcomes:
            error = self.refuse(o)
            if error is not None:
                raise error
        self.written.extend(outcomes)
        return len(outcomes)


def _runner(store: StubStore) -> QueueRunner:
    return QueueRunner(cast(Any, None), cast(JobStore, store), JobsConfig(), FakeClock(1_800_000_000.0), "A")


def _pair(job_id: int, *, ok: bool = True, response: str | None = None) -> tuple[Outcome, JobResult]:
    error = None if ok else f"HTTP 500: {response}"
    outcome = Outcome(job_id, 1, ok, 200 if ok else 500, response, error, None if ok else 1_800_000_010.0)
    return outcome, JobResult(job_id, f"fn-{job_id}", 1, "succeeded" if ok else "retrying", outcome.http_status, error)


async def test_flush_drops_only_the_outcome_the_store_refuses(caplog: pytest.LogCaptureFixture) -> None:
    store = StubStore(lambda o: ValueError("cannot store this") if o.job_id == 2 else None)
    runner = _runner(store)
    runner._outcomes = [_pair(1), _pair(2, ok=False, response="x"), _pair(3)]
    with caplog.at_level(logging.ERROR, "edgeruntime.jobs"):
        await runner._flush()
    assert [o.job_id for o in store.written] == [1, 3]
    assert runner._outcomes == [] and not runner._finish_outage.failing
    [line] = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert "job 2 (fn-2) attempt 1" in line and "ValueError: cannot store this" in line and "dropped" in line
    # Later outcomes are written at once.
    runner._outcomes = [_pair(4)]
    await runner._flush()
    assert [o.job_id for o in store.written] == [1, 3, 4]


async def test_flush_writes_a_refused_outcome_without_its_texts(caplog: pytest.LogCaptureFixture) -> None:
    """The job still moves on (retried, or failed): it is not left leased by this instance."""

    def refuse(o: Outcome) -> Exception | None:
        texts = (o.response or "") + (o.error or "")
        return sqlite3.DataError("text cannot hold NUL") if "\x00" in texts or "\udc80" in texts else None

    store = StubStore(refuse)
    runner = _runner(store)
    runner._outcomes = [_pair(1), _pair(2, ok=False, response="a\x00b\udc80"), _pair(3)]
    with caplog.at_level(logging.ERROR, "edgeruntime.jobs"):
        await runner._flush()
    assert [(o.job_id, o.ok, o.response, o.error) for o in store.written] == [
        (1, True, None, None),
        (2, False, None, "HTTP 500: a\\x00b\\udc80"),
        (3, True, None, None),
    ]
    assert store.written[1].retry_at == 1_800_000_010.0 and runner._outcomes == []
    assert any("job 2 (fn-2) attempt 1: the store refused" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "outage",
    [
        StoreUnavailable("database is down"),
        sqlite3.OperationalError("database is locked"),
        ConfigError("database postgresql://x: connection refused"),
        ConnectionResetError("reset"),
    ],
    ids=["unavailable", "sqlite-locked", "cannot-connect", "oserror"],
)
async def test_flush_keeps_the_batch_while_the_store_isstore_unavailable(outage: Exception) -> None:
    down = True
    store = StubStore(lambda o: outage if down else None)
    runner = _runner(store)
    batch = [_pair(1), _pair(2, ok=False, response="x"), _pair(3)]
    runner._outcomes = list(batch)
    await runner._flush()
    # Kept whole, in order, without trying each outcome alone.
    assert (store.written, runner._outcomes, store.calls) == ([], batch, 1)
    assert runner._finish_outage.failing
    down = False
    runner._outcomes.append(_pair(4))
    await runner._flush()
    assert [o.job_id for o in store.written] == [1, 2, 3, 4]
    assert runner._outcomes == [] and not runner._finish_outage.failing


async def test_flush_keeps_the_rest_when_the_store_goes_away_while_writing_alone() -> None:
    refused = ValueError("cannot store this")
    outage = StoreUnavailable("database is down")
    store = StubStore(lambda o: refused if o.job_id == 1 else outage if o.job_id == 3 else None)
    runner = _runner(store)
    runner._outcomes = [_pair(1), _pair(2), _pair(3), _pair(4)]
    await runner._flush()
    assert [o.job_id for o in store.written] == [2]
    assert [o.job_id for o, _ in runner._outcomes] == [3, 4] and runner._finish_outage.failing


def test_which_errors_mean_the_store_isstore_unavailable() -> None:
    psycopg = pytest.importorskip("psycopg")
    assert store_unavailable(psycopg.OperationalError("connection lost"))
    assert store_unavailable(psycopg.errors.ReadOnlySqlTransaction("read-only transaction"))
    assert store_unavailable(psycopg.errors.InsufficientPrivilege("permission denied"))
    assert store_unavailable(sqlite3.OperationalError("attempt to write a readonly database"))
    assert not store_unavailable(psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"))
    assert not store_unavailable(psycopg.IntegrityError("violates not-null constraint"))
    assert not store_unavailable(sqlite3.IntegrityError("NOT NULL constraint failed"))
    assert not store_unavailable(UnicodeEncodeError("utf-8", "\udc80", 0, 1, "surrogates not allowed"))
