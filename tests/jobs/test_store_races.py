"""Races and edge cases of the store: a lease expiring on the last attempt, a failed job retried
twice (one after the other, or by two instances at once), two ticks of one `overlap = "skip"` cron
claimed at once on Postgres. Each drives the store API with explicit `now` values."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from edgeruntime.jobs.backends import open_store
from edgeruntime.jobs.postgres import PostgresStore
from edgeruntime.jobs.store import CronTick, JobStatus, JobStore, Outcome, TickStatus
from tests.helpers import run_cli
from tests.jobs.backends import until_waiting_for_a_lock

T0 = 1_800_000_000.0
LEASE_EXPIRED = "lease expired on the last attempt (the instance running it stopped or hung)"


async def test_a_lease_expiring_on_the_last_attempt_moves_the_job_to_failed_jobs(store: JobStore) -> None:
    job_id = await store.enqueue("work", '{"n":1}', run_at=T0, max_attempts=2, idempotency_key=None, now=T0)
    [first] = await store.claim("dead-1", 10, now=T0, lease_sec=5)
    [second] = await store.claim("dead-2", 10, now=T0 + 6, lease_sec=5)
    assert (first.attempt, second.attempt) == (1, 2)
    # The instance running the last attempt stopped: the job is not delivered a third time.
    assert await store.claim("alive", 10, now=T0 + 12, lease_sec=5) == []
    assert await store.claim("alive", 10, now=T0 + 100, lease_sec=5) == []
    job = await store.job(job_id)
    assert job is not None
    assert (job.status, job.attempt, job.max_attempts) == (JobStatus.FAILED, 2, 2)
    assert job.last_error == LEASE_EXPIRED
    assert await store.count_jobs() == {"failed": 1}
    assert (await store.queue_stats()).in_flight == ()
    [failed] = await store.failed_jobs()
    assert (failed.job_id, failed.function, failed.payload, failed.attempts) == (job_id, "work", '{"n":1}', 2)
    assert (failed.error, failed.http_status, failed.response, failed.failed_at) == (LEASE_EXPIRED, None, None, T0 + 12)
    assert failed.retried_as is None
    # The hung instance comes back: its outcome is stale and changes nothing.
    assert await store.finish([Outcome(job_id, 2, True, 200)], now=T0 + 13) == 0
    assert await store.finish([Outcome(job_id, 2, False, 500, None, "HTTP 500")], now=T0 + 13) == 0
    assert len(await store.failed_jobs()) == 1
    # It can be retried like any failed job, attempts starting over.
    new_id = await store.retry_failed(failed.id, now=T0 + 20)
    [again] = await store.claim("alive", 10, now=T0 + 20, lease_sec=5)
    assert (again.id, again.attempt, again.max_attempts) == (new_id, 1, 2)


async def test_a_job_failed_by_a_claim_takes_no_slot_of_it(store: JobStore) -> None:
    last = await store.enqueue("last", "{}", run_at=T0, max_attempts=1, idempotency_key=None, now=T0)
    more = await store.enqueue("more", "{}", run_at=T0, max_attempts=3, idempotency_key=None, now=T0)
    assert len(await store.claim("dead", 10, now=T0, lease_sec=5)) == 2
    fresh = await store.enqueue("fresh", "{}", run_at=T0, max_attempts=1, idempotency_key=None, now=T0)
    # Two slots, two jobs to deliver: the job on its last attempt is failed and takes no slot.
    claimed = await store.claim("alive", 2, now=T0 + 6, lease_sec=5)
    assert sorted((j.id, j.attempt) for j in claimed) == [(more, 2), (fresh, 1)]
    assert [(f.job_id, f.attempts, f.error) for f in await store.failed_jobs()] == [(last, 1, LEASE_EXPIRED)]
    assert await store.count_jobs() == {"failed": 1, "running": 2}


async def _failed_job(store: JobStore) -> int:
    job_id = await store.enqueue("work", '{"x":1}', run_at=T0, max_attempts=1, idempotency_key=None, now=T0)
    [job] = await store.claim("w", 1, now=T0, lease_sec=30)
    assert await store.finish([Outcome(job.id, 1, False, 500, "x", "HTTP 500: x")], now=T0 + 1) == 1
    [failed] = await store.failed_jobs()
    assert failed.job_id == job_id
    return failed.id


async def test_a_failed_job_retried_twice_is_queued_once(store: JobStore) -> None:
    failed_id = await _failed_job(store)
    first = await store.retry_failed(failed_id, now=T0 + 2)
    assert await store.retry_failed(failed_id, now=T0 + 3) == first
    assert await store.count_jobs() == {"failed": 1, "queued": 1}
    failed = await store.failed_job(failed_id)
    assert failed is not None and failed.retried_as == first


async def test_a_failed_job_retried_by_two_instances_at_once_is_queued_once(store_url: str) -> None:
    a, b = open_store(store_url), open_store(store_url)
    try:
        await a.migrate()
        failed_id = await _failed_job(a)
        # Both dashboards checked `retried_as` (None) before either retried.
        ids = await asyncio.gather(a.retry_failed(failed_id, now=T0 + 2), b.retry_failed(failed_id, now=T0 + 2))
        assert ids[0] == ids[1]
        assert await a.count_jobs() == {"failed": 1, "queued": 1}
        failed = await a.failed_job(failed_id)
        assert failed is not None and failed.retried_as == ids[0]
    finally:
        await a.close()
        await b.close()


async def test_the_cli_retries_a_failed_job_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = open_store(url)
    try:
        await store.migrate()
        failed_id = await _failed_job(store)
    finally:
        await store.close()
    first = await asyncio.to_thread(run_cli, "jobs", "retry", str(failed_id), "--database-url", url, "--json")
    assert first.returncode == 0, first.stderr
    job_id = json.loads(first.stdout)["job_id"]
    again = await asyncio.to_thread(run_cli, "jobs", "retry", str(failed_id), "--database-url", url)
    assert again.returncode == 2
    assert again.stderr.strip() == f"edgeruntime: error: failed job {failed_id} was already retried as job {job_id}"
    store = open_store(url)
    try:
        assert await store.count_jobs() == {"failed": 1, "queued": 1}
    finally:
        await store.close()


@pytest.mark.postgres
async def test_two_ticks_of_a_skip_overlap_cron_claimed_at_once_run_one(postgres_url: str) -> None:
    """Instance A claims the scheduled tick; instance B's "Run now" comes while A's insert is not
    yet committed. B must wait for A and then skip, not run beside it."""

    a, b = PostgresStore(postgres_url, pool_size=1), PostgresStore(postgres_url, pool_size=1)
    try:
        await a.migrate()
        async with b._conn() as conn:
            b_pid = conn.info.backend_pid
        a_inserted, b_done = asyncio.Event(), asyncio.Event()

        async with a._conn() as conn:
            execute = conn.execute

            async def pausing_execute(query: Any, *args: Any, **kwargs: Any) -> Any:
                cur = await execute(query, *args, **kwargs)
                if str(query).startswith("INSERT INTO edgeruntime_cron_ticks"):
                    a_inserted.set()  # A's transaction is open, its tick not committed
                    await asyncio.wait_for(until_waiting_for_a_lock(postgres_url, b_pid, b_done), 10)
                return cur

            conn.execute = pausing_execute  # type: ignore[method-assign]

        async def claim_b() -> CronTick | None:
            await a_inserted.wait()
            try:
                return await b.claim_tick(
                    "c",
                    "manual:x",
                    scheduled_for=T0,
                    trigger="manual",
                    instance="B",
                    now=T0,
                    lease_sec=30,
                    skip_overlap=True,
                )
            finally:
                b_done.set()

        ta, tb = await asyncio.gather(
            a.claim_tick(
                "c",
                "2027-01-15T08:00:00.000Z",
                scheduled_for=T0,
                trigger="schedule",
                instance="A",
                now=T0,
                lease_sec=30,
                skip_overlap=True,
            ),
            claim_b(),
        )
        assert ta is not None and tb is not None
        assert (ta.status, tb.status) == (TickStatus.RUNNING, TickStatus.SKIPPED)
    finally:
        await a.close()
        await b.close()
