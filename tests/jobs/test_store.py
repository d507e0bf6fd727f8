"""The store's behaviour, the same on SQLite and Postgres: claims, leases, fencing, ticks, history."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgeruntime.exceptions import ConfigError
from edgeruntime.jobs.backends import open_store
from edgeruntime.jobs.store import JobStatus, JobStore, Outcome, Run, RunRow, TickStatus

T0 = 1_800_000_000.0


async def test_migrate_is_idempotent(store: JobStore) -> None:
    await store.migrate()
    assert await store.count_jobs() == {}


async def test_enqueue_claim_succeed(store: JobStore) -> None:
    job_id = await store.enqueue("work", '{"n":1}', run_at=T0, max_attempts=3, idempotency_key=None, now=T0)
    [job] = await store.claim("w1", 10, now=T0, lease_sec=30)
    assert (job.id, job.function, job.payload, job.attempt, job.max_attempts) == (job_id, "work", '{"n":1}', 1, 3)
    assert await store.claim("w2", 10, now=T0, lease_sec=30) == []
    assert await store.finish([Outcome(job.id, 1, True, 200)], now=T0 + 1) == 1
    assert await store.count_jobs() == {"succeeded": 1}


async def test_delayed_job_is_not_due_before_run_at(store: JobStore) -> None:
    await store.enqueue("work", "{}", run_at=T0 + 60, max_attempts=1, idempotency_key=None, now=T0)
    assert await store.claim("w", 10, now=T0 + 59, lease_sec=30) == []
    assert len(await store.claim("w", 10, now=T0 + 60, lease_sec=30)) == 1


async def test_idempotency_key_returns_existing_job(store: JobStore) -> None:
    a = await store.enqueue("work", "{}", run_at=T0, max_attempts=1, idempotency_key="k1", now=T0)
    b = await store.enqueue("work", '{"other":1}', run_at=T0, max_attempts=1, idempotency_key="k1", now=T0)
    assert a == b
    assert await store.count_jobs() == {"queued": 1}


async def test_claim_respects_limit_and_never_hands_a_job_twice(store: JobStore) -> None:
    for i in range(25):
        await store.enqueue("work", str(i), run_at=T0, max_attempts=1, idempotency_key=None, now=T0)
    batches = await asyncio.gather(*(store.claim(f"w{i}", 10, now=T0, lease_sec=30) for i in range(4)))
    ids = [j.id for batch in batches for j in batch]
    assert all(len(b) <= 10 for b in batches)
    assert len(ids) == len(set(ids)) == 25


async def test_expired_lease_is_reclaimed_and_stale_attempt_is_fenced(store: JobStore) -> None:
    await store.enqueue("work", "{}", run_at=T0, max_attempts=4, idempotency_key=None, now=T0)
    [first] = await store.claim("dead", 10, now=T0, lease_sec=5)
    assert await store.claim("alive", 10, now=T0 + 4, lease_sec=5) == []
    [second] = await store.claim("alive", 10, now=T0 + 6, lease_sec=5)
    assert (second.id, second.attempt) == (first.id, 2)
    # The first worker comes back: its attempt number no longer matches, nothing is written.
    assert await store.finish([Outcome(first.id, 1, True, 200)], now=T0 + 7) == 0
    assert await store.count_jobs() == {"running": 1}
    assert await store.finish([Outcome(second.id, 2, True, 200)], now=T0 + 7) == 1


async def test_heartbeat_keeps_the_lease(store: JobStore) -> None:
    # Two attempts: a lease expiring on the last one fails the job instead (tests/jobs/test_store_races.py).
    await store.enqueue("work", "{}", run_at=T0, max_attempts=2, idempotency_key=None, now=T0)
    [job] = await store.claim("w1", 10, now=T0, lease_sec=5)
    assert await store.heartbeat("w1", job_ids=[job.id], tick_ids=[], now=T0 + 4, lease_sec=5) == 1
    assert await store.claim("w2", 10, now=T0 + 8, lease_sec=5) == []
    assert len(await store.claim("w2", 10, now=T0 + 9.5, lease_sec=5)) == 1


async def test_retry_then_failed_jobs_then_retry_failed(store: JobStore) -> None:
    await store.enqueue("flaky", '{"x":1}', run_at=T0, max_attempts=2, idempotency_key=None, now=T0)
    [job] = await store.claim("w", 1, now=T0, lease_sec=30)
    await store.finish([Outcome(job.id, 1, False, 500, "boom", "HTTP 500: boom", retry_at=T0 + 10)], now=T0)
    assert await store.claim("w", 1, now=T0 + 9, lease_sec=30) == []
    [job] = await store.claim("w", 1, now=T0 + 10, lease_sec=30)
    assert job.attempt == 2 and job.last_error == "HTTP 500: boom"
    await store.finish([Outcome(job.id, 2, False, 502, "bad gateway", "HTTP 502: bad gateway")], now=T0 + 11)
    [failed] = await store.failed_jobs()
    assert (failed.job_id, failed.function, failed.payload, failed.attempts) == (job.id, "flaky", '{"x":1}', 2)
    assert (failed.error, failed.http_status, failed.response) == ("HTTP 502: bad gateway", 502, "bad gateway")
    assert await store.count_jobs() == {"failed": 1}
    new_id = await store.retry_failed(failed.id, now=T0 + 20)
    [again] = await store.claim("w", 1, now=T0 + 20, lease_sec=30)
    assert (again.id, again.attempt, again.payload) == (new_id, 1, '{"x":1}')
    [failed] = await store.failed_jobs()
    assert failed.retried_as == new_id
    with pytest.raises(KeyError):
        await store.retry_failed(9999, now=T0)


async def test_tick_is_claimed_once(store: JobStore) -> None:
    claims = await asyncio.gather(
        *(
            store.claim_tick(
                "c",
                "2027-01-01T00:00:00.000Z",
                scheduled_for=T0,
                trigger="schedule",
                instance=f"i{i}",
                now=T0,
                lease_sec=30,
                skip_overlap=True,
            )
            for i in range(5)
        )
    )
    won = [c for c in claims if c is not None]
    assert len(won) == 1 and won[0].status is TickStatus.RUNNING


async def _tick(store: JobStore, key: str, at: float, instance: str = "i") -> TickStatus:
    tick = await store.claim_tick(
        "c", key, scheduled_for=at, trigger="schedule", instance=instance, now=at, lease_sec=5, skip_overlap=True
    )
    assert tick is not None
    return tick.status


async def test_tick_skipped_while_previous_runs(store: JobStore) -> None:
    assert await _tick(store, "k1", T0) is TickStatus.RUNNING
    assert await _tick(store, "k2", T0 + 1) is TickStatus.SKIPPED
    [first] = [t for t in await store.ticks("c") if t.key == "k1"]
    await store.finish_tick(first.id, TickStatus.SUCCEEDED, 200, None, now=T0 + 2)
    assert await _tick(store, "k3", T0 + 3) is TickStatus.RUNNING
    statuses = [t.status for t in await store.ticks("c")]
    assert statuses == [TickStatus.RUNNING, TickStatus.SKIPPED, TickStatus.SUCCEEDED]


async def test_run_of_a_dead_instance_stops_blocking_when_its_lease_ends(store: JobStore) -> None:
    assert await _tick(store, "k1", T0, instance="dies") is TickStatus.RUNNING
    [tick] = await store.ticks("c")
    # Another instance's beat renews nothing here, even naming the tick.
    await store.heartbeat("alive", job_ids=[], tick_ids=[tick.id], now=T0 + 4, lease_sec=5)
    assert await _tick(store, "k2", T0 + 4.5) is TickStatus.SKIPPED
    assert await _tick(store, "k3", T0 + 6) is TickStatus.RUNNING


async def test_heartbeat_renews_running_ticks(store: JobStore) -> None:
    assert await _tick(store, "k1", T0, instance="busy") is TickStatus.RUNNING
    [tick] = await store.ticks("c")
    await store.heartbeat("busy", job_ids=[], tick_ids=[tick.id], now=T0 + 4, lease_sec=5)
    assert await _tick(store, "k2", T0 + 8) is TickStatus.SKIPPED


async def test_run_history_and_prune(store: JobStore) -> None:
    await store.record_runs(
        [
            Run("invocation", "a", "http", "e1", "succeeded", T0, 1.5, 200),
            Run("background", "a", "wait_until", "e1", "failed", T0 + 100, 3.0, None, "ValueError()"),
        ]
    )
    runs = await store.runs("a")
    assert [(r.kind, r.status, r.error) for r in runs] == [
        ("background", "failed", "ValueError()"),
        ("invocation", "succeeded", None),
    ]
    await store.enqueue("work", "{}", run_at=T0, max_attempts=1, idempotency_key=None, now=T0)
    [job] = await store.claim("w", 1, now=T0, lease_sec=30)
    await store.finish([Outcome(job.id, 1, True, 200)], now=T0)
    assert await store.prune(before=T0 + 50) == 2
    assert [r.execution_id for r in await store.runs()] == ["e1"]
    assert await store.jobs(JobStatus.SUCCEEDED) == []


async def test_runs_filters_and_task_names(store: JobStore) -> None:
    await store.record_runs(
        [
            Run("invocation", "a", "http", "e1", "succeeded", T0, 1.5, 200),
            Run("background", "a", "wait_until", "e1", "cut", T0 + 1, 3.0, None, "shutdown", "send_email"),
            Run("invocation", "b", "queue", "e2", "failed", T0 + 2, 2.0, 500),
            Run("invocation", "a", "cron", "e3", "failed", T0 + 3, 2.0, 546, "wall_clock"),
        ]
    )
    assert [r.execution_id for r in await store.runs(kind="invocation")] == ["e3", "e2", "e1"]
    assert [r.execution_id for r in await store.runs("a", kind="invocation", status="failed")] == ["e3"]
    assert [r.execution_id for r in await store.runs(trigger="queue")] == ["e2"]
    [task] = await store.runs(kind="background", execution_ids=["e1", "e2"])
    assert (task.name, task.status, task.error) == ("send_email", "cut", "shutdown")
    assert await store.runs(execution_ids=[]) == []
    assert len(await store.runs(limit=2)) == 2


@pytest.mark.parametrize("count", [1, 3, 1000])
async def test_run_rows_of_any_batch_size_are_written_in_order(store: JobStore, count: int) -> None:
    rows: list[RunRow] = [
        ("invocation", "a", "http", f"e{i}", "succeeded", T0 + i, 0.5 + i, 200 + i % 3, None, None)
        if i % 2
        else ("background", "b", "wait_until", f"e{i}", "cut", T0 + i, None, None, f"cut {i}", f"task{i}")
        for i in range(count)
    ]
    await store.record_run_rows(rows)
    await store.record_run_rows([])
    assert [Run(*row) for row in reversed(rows)] == await store.runs(limit=count + 1)


async def test_a_batch_with_a_bad_row_writes_nothing_and_the_store_stays_usable(store: JobStore) -> None:
    good: RunRow = ("invocation", "a", "http", "e1", "succeeded", T0, 1.0, 200, None, None)
    bad = ("invocation", None, "http", "e2", "succeeded", T0, 1.0, 200, None, None)  # function is NOT NULL
    with pytest.raises(Exception, match="(?i)null"):
        await store.record_run_rows([good, bad])  # type: ignore[list-item]
    assert await store.runs() == []
    await store.record_run_rows([good])
    assert [r.execution_id for r in await store.runs()] == ["e1"]


def _runs(count: int, start: int = 0) -> list[RunRow]:
    return [
        ("invocation", "a", "http", f"e{i}", "succeeded", T0 + i, 1.0, 200, None, None)
        for i in range(start, start + count)
    ]


async def test_a_batch_written_again_under_its_id_is_written_once(store: JobStore) -> None:
    # What the history does when a connection was lost with the COMMIT's outcome unknown.
    rows = _runs(5)
    assert await store.record_run_rows(rows, batch_id="instance-a-1") == 5
    assert await store.record_run_rows(rows, batch_id="instance-a-1") == 0
    assert await store.record_run_rows(_runs(1, start=5), batch_id="instance-a-2") == 1
    assert await store.record_run_rows(_runs(1, start=6)) == 1  # no id: written every time
    assert [r.execution_id for r in reversed(await store.runs())] == [f"e{i}" for i in range(7)]


async def test_the_write_check_passes_and_leaves_nothing_behind(store: JobStore) -> None:
    await store.check_writable()
    await store.check_writable()  # nothing left over to collide with
    assert await store.runs() == []
    assert await store.count_jobs() == {}
    assert await store.failed_jobs() == []
    assert await store.ticks() == []
    assert await store.paused_crons() == {}
    job_id = await store.enqueue("work", "{}", run_at=T0, max_attempts=1, idempotency_key=None, now=T0)
    assert job_id == 1  # the check used up no id


async def test_trimming_to_a_row_cap_keeps_the_newest_records(store: JobStore) -> None:
    await store.record_run_rows(_runs(1000))
    assert await store.trim_history(max_rows=1000) == 0
    assert await store.trim_history() == 0
    await store.record_run_rows(_runs(200, start=1000))
    # Over the cap: down to 90 % of it, so the next records do not make every check trim.
    assert await store.trim_history(max_rows=1000) == 300
    kept = [r.execution_id for r in await store.runs(limit=2000)]
    assert kept == [f"e{i}" for i in reversed(range(300, 1200))]
    assert await store.trim_history(max_rows=1000) == 0


async def test_job_lookup_delete_failed_and_queue_stats(store: JobStore) -> None:
    first = await store.enqueue("work", "{}", run_at=T0, max_attempts=1, idempotency_key=None, now=T0)
    await store.enqueue("work", "{}", run_at=T0 + 60, max_attempts=2, idempotency_key=None, now=T0 + 5)
    stats = await store.queue_stats()
    assert (stats.counts, stats.oldest_queued_at, stats.in_flight) == ({"queued": 2}, T0, ())
    [job] = await store.claim("w1", 1, now=T0 + 10, lease_sec=30)
    assert job.id == first
    stats = await store.queue_stats()
    [lease] = stats.in_flight
    assert (lease.job_id, lease.function, lease.attempt, lease.max_attempts) == (first, "work", 1, 1)
    assert (lease.worker_id, lease.claimed_at, lease.lease_until) == ("w1", T0 + 10, T0 + 40)
    assert stats.oldest_queued_at == T0 + 5
    found = await store.job(first)
    assert found is not None and found.status is JobStatus.RUNNING and found.attempt == 1
    assert await store.job(first + 1000) is None

    await store.finish([Outcome(first, 1, False, 500, "boom", "HTTP 500")], now=T0 + 11)
    [failed] = await store.failed_jobs()
    assert await store.failed_job(failed.id) == failed
    assert await store.failed_job(failed.id + 1000) is None
    assert await store.delete_failed(failed.id) is True
    assert await store.delete_failed(failed.id) is False
    assert await store.failed_jobs() == []


async def test_pause_and_resume_cron(store: JobStore) -> None:
    assert await store.paused_crons() == {}
    await store.set_cron_paused("nightly", True, now=T0)
    await store.set_cron_paused("nightly", True, now=T0 + 5)  # pausing twice keeps the first instant
    assert await store.paused_crons() == {"nightly": T0}
    await store.set_cron_paused("nightly", False, now=T0 + 10)
    await store.set_cron_paused("nightly", False, now=T0 + 10)
    assert await store.paused_crons() == {}


def test_bad_database_urls(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected sqlite:///path or postgresql://"):
        open_store("mysql://localhost/db")
    with pytest.raises(ConfigError, match="sqlite:///path/to/file.db"):
        open_store("sqlite://")
    assert open_store(None, tmp_path / "functions").url == f"sqlite:///{tmp_path / '.edgeruntime' / 'edgeruntime.db'}"


async def test_unreachable_postgres_is_one_line_config_error() -> None:
    store = open_store("postgresql://postgres@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(ConfigError, match=r"^database postgresql://postgres@127.0.0.1:1/none"):
        await store.migrate()


async def test_versioned_migrations_upgrade_an_older_database(tmp_path: Path) -> None:
    import sqlite3

    from edgeruntime.jobs import migrations

    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:  # a database written by version 1 of the schema
        conn.execute(migrations.SCHEMA_TABLE)
        for stmt in migrations.MIGRATIONS[0].sqlite:
            conn.execute(stmt)
        conn.execute("INSERT INTO edgeruntime_schema VALUES (1, 'then')")
    store = open_store(f"sqlite:///{path}")
    try:
        await store.migrate()
        await store.migrate()
        assert await store.claim_tick(
            "c", "k", scheduled_for=T0, trigger="schedule", instance="i", now=T0, lease_sec=5, skip_overlap=True
        )
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM edgeruntime_schema ORDER BY version")]
    assert versions == [m.version for m in migrations.MIGRATIONS] and len(versions) >= 2


async def test_instances_starting_together_migrate_once(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(3)]
    try:
        await asyncio.gather(*(s.migrate() for s in stores))
        assert await stores[0].count_jobs() == {}
    finally:
        for s in stores:
            await s.close()


def test_postgres_without_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if `edgeruntime[postgres]` were not installed
    with pytest.raises(ConfigError, match=r"pip install 'edgeruntime\[postgres\]'"):
        open_store("postgresql://postgres@127.0.0.1/test")


def test_sqlite_binds_none_as_null_through_a_registered_adapter() -> None:
    import contextlib
    import sqlite3

    import edgeruntime.jobs.sqlite  # noqa: F401  (importing it registers the adapter)

    assert (type(None), sqlite3.PrepareProtocol) in sqlite3.adapters
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        assert conn.execute("SELECT ? IS NULL, typeof(?)", (None, None)).fetchone() == (1, "null")
