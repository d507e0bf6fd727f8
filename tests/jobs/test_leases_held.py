"""The heartbeat renews the leases of what this instance runs, and nothing else leased to it.

It used to renew every job leased to the instance's worker id and every running tick it claimed.
A claim that committed but whose reply was lost (the connection dropped after COMMIT) left a job
leased to the instance that it never ran, renewed for as long as the instance lived: never
delivered. A tick whose `finish_tick` failed (a store blip; the error was swallowed) stayed
running, renewed the same way: every later tick of an `overlap = "skip"` cron job was skipped, on
every instance, until this one stopped. The runner now renews the jobs it delivers and the
scheduler's ticks only, and the scheduler keeps a tick's outcome it could not write and writes it
on a later try.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import pytest

import edgeruntime.jobs.queue as queue_module
import edgeruntime.jobs.scheduler as scheduler_module
from edgeruntime.config.project import CronConfig
from edgeruntime.exceptions import StoreUnavailable
from edgeruntime.jobs import FakeClock, JobsConfig, TickStatus
from edgeruntime.jobs.delivery import Delivery
from edgeruntime.jobs.queue import QueueRunner
from edgeruntime.jobs.scheduler import Scheduler, cron_jobs
from edgeruntime.jobs.store import JobStatus, JobStore

T0 = 1_800_000_000.0


class Wrapped:
    """A store whose `heartbeat` calls are counted and whose methods named in `fail` raise the
    error given, once each; everything else goes to `inner`."""

    def __init__(self, inner: JobStore, fail: Mapping[str, Exception] | None = None) -> None:
        self.inner = inner
        self.fail = dict(fail or {})
        self.beats = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name == "heartbeat":

            async def beat(*args: Any, **kwargs: Any) -> Any:
                self.beats += 1
                return await attr(*args, **kwargs)

            return beat
        if name in self.fail:
            error = self.fail.pop(name)

            async def boom(*args: Any, **kwargs: Any) -> Any:
                raise error

            return boom
        return attr


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


# -- jobs: a claim whose reply was lost ---------------------------------------------------------


async def test_a_job_leased_here_but_not_run_is_not_renewed(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job a lost claim reply leased to this instance keeps its lease running out and goes to
    another worker; a tick the instance runs is renewed by the same heartbeats."""
    clock = FakeClock(T0)
    lease = 3.0
    job_id = await store.enqueue("f", "{}", run_at=T0, max_attempts=3, idempotency_key=None, now=T0)
    # The claim committed under the runner's worker id, but the runner never saw its reply.
    [orphan] = await store.claim("A", 10, now=T0, lease_sec=lease)
    assert orphan.id == job_id
    tick = await store.claim_tick(
        "c", "k1", scheduled_for=T0, trigger="schedule", instance="A", now=T0, lease_sec=lease, skip_overlap=True
    )
    assert tick is not None and tick.status is TickStatus.RUNNING
    wrapped = Wrapped(store)
    # Heartbeats every 0.05 s (real time); the fake clock says how far the leases go.
    monkeypatch.setattr(queue_module, "HEARTBEATS_PER_LEASE", 60)
    config = JobsConfig(lease_sec=lease, poll_interval_ms=20)
    runner = QueueRunner(cast(Any, None), cast(JobStore, wrapped), config, clock, "A", held_ticks=lambda: [tick.id])
    clock.set(T0 + 2)
    runner.start()
    try:

        async def beaten() -> bool:
            return wrapped.beats >= 3

        await _until(beaten)
    finally:
        await runner.stop(timeout=1.0)
    assert runner.held_jobs() == frozenset()
    # Past the claim's lease (T0 + 3), within a renewed one (T0 + 2 + 3).
    clock.set(T0 + 4)
    [again] = await store.claim("B", 10, now=clock.now(), lease_sec=30)
    assert (again.id, again.attempt) == (job_id, 2)
    # The tick the runner was told of was renewed: a run still going.
    later = await store.claim_tick(
        "c", "k2", scheduled_for=T0 + 4, trigger="schedule", instance="B", now=T0 + 4, lease_sec=30, skip_overlap=True
    )
    assert later is not None and later.status is TickStatus.SKIPPED


async def test_heartbeat_renews_only_the_ids_named(store: JobStore) -> None:
    """Leased to the worker and named: renewed; leased to it but not named, or named but leased to
    another worker: not. Nothing named: nothing renewed."""
    ids = [await store.enqueue("f", "{}", run_at=T0, max_attempts=3, idempotency_key=None, now=T0) for _ in range(3)]
    assert len(await store.claim("A", 2, now=T0, lease_sec=5)) == 2
    assert len(await store.claim("B", 1, now=T0, lease_sec=5)) == 1
    assert await store.heartbeat("A", job_ids=[], tick_ids=[], now=T0 + 4, lease_sec=5) == 0
    assert await store.heartbeat("A", job_ids=[ids[0], ids[2]], tick_ids=[], now=T0 + 4, lease_sec=5) == 1
    reclaimed = await store.claim("C", 10, now=T0 + 6, lease_sec=5)
    assert sorted(j.id for j in reclaimed) == [ids[1], ids[2]]


async def test_heartbeat_takes_more_ids_than_a_statement_holds(store: JobStore) -> None:
    """SQLite binds at most 999 values per statement before 3.32: the ids go in chunks."""
    ids = [await store.enqueue("f", "{}", run_at=T0, max_attempts=3, idempotency_key=None, now=T0) for _ in range(3)]
    assert len(await store.claim("A", 10, now=T0, lease_sec=5)) == 3
    named = [*range(10_000, 12_500), *ids]
    assert await store.heartbeat("A", job_ids=named, tick_ids=named, now=T0 + 4, lease_sec=5) == 3
    assert await store.claim("C", 10, now=T0 + 6, lease_sec=5) == []


# -- cron: a tick whose finish failed -------------------------------------------------------


def _scheduler(store: JobStore | Wrapped, clock: FakeClock, instance: str) -> Scheduler:
    jobs = cron_jobs({"c": CronConfig("c", "f", "10 seconds", overlap="skip")})
    return Scheduler(cast(Any, None), cast(JobStore, store), jobs, clock, instance, lease_sec=30)


async def test_a_tick_whose_finish_failed_is_finished_later(store: JobStore, delivered: list[str]) -> None:
    """The outcome is kept (the tick held, its lease renewed) and written on the next try; another
    instance's next tick of the `overlap = "skip"` job then runs instead of being skipped."""
    clock = FakeClock(T0)
    a = _scheduler(Wrapped(store, {"finish_tick": OSError("connection refused (store restarting)")}), clock, "A")
    b = _scheduler(store, clock, "B")
    run = await a.fire("c", T0)
    assert run is not None and run.status is TickStatus.SUCCEEDED
    [tick] = await store.ticks("c")
    assert tick.status is TickStatus.RUNNING
    assert a.held_ticks() == frozenset({tick.id})
    assert await a.finish_pending() == 0
    [tick] = await store.ticks("c")
    assert (tick.status, tick.http_status, tick.finished_at) == (TickStatus.SUCCEEDED, 200, T0)
    assert a.held_ticks() == frozenset()
    clock.advance(10)
    later = await b.fire("c", T0 + 10)
    assert later is not None and later.status is TickStatus.SUCCEEDED
    assert len(delivered) == 2


async def test_the_scheduler_loop_writes_a_kept_tick_outcome(
    store: JobStore, delivered: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without another fire: the loop's next turn writes it."""
    monkeypatch.setattr(scheduler_module, "MAX_SLEEP_SEC", 0.05)
    clock = FakeClock(T0)
    a = _scheduler(Wrapped(store, {"finish_tick": StoreUnavailable("database is locked")}), clock, "A")
    a.start()
    try:

        async def finished() -> bool:
            ticks = await store.ticks("c")
            return bool(ticks) and ticks[0].status is TickStatus.SUCCEEDED

        await _until(finished)
    finally:
        await a.stop(timeout=1.0)
    assert a.held_ticks() == frozenset()
    assert delivered == [scheduler_module.iso(T0)]


async def test_a_kept_tick_outcome_is_written_at_stop(store: JobStore, delivered: list[str]) -> None:
    clock = FakeClock(T0)
    a = _scheduler(Wrapped(store, {"finish_tick": OSError("connection reset")}), clock, "A")
    await a.fire("c", T0)
    await a.stop(timeout=1.0)
    [tick] = await store.ticks("c")
    assert tick.status is TickStatus.SUCCEEDED


async def test_a_refused_tick_outcome_does_not_hold_the_tick(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """An outcome the store refuses for what it writes is not kept for ever: written with its error
    escaped (here the store takes that one)."""

    async def failing(app: Any, function: str, body: bytes, headers: Mapping[str, str], *, trigger: str) -> Delivery:
        return Delivery(500, "bad\u00e9")

    monkeypatch.setattr(scheduler_module, "deliver", failing)
    clock = FakeClock(T0)
    a = _scheduler(Wrapped(store, {"finish_tick": sqlite3.DataError("cannot store that text")}), clock, "A")
    run = await a.fire("c", T0)
    assert run is not None and run.status is TickStatus.FAILED
    assert a.held_ticks() == frozenset()
    [tick] = await store.ticks("c")
    assert (tick.status, tick.error) == (TickStatus.FAILED, "HTTP 500: bad\\xe9")


async def test_the_held_jobs_are_released_once_their_outcomes_are_written(store: JobStore) -> None:
    """A job the runner delivers is held (renewed) until its outcome is written, then let go."""
    await store.enqueue("f", "{}", run_at=T0, max_attempts=1, idempotency_key=None, now=T0)
    runner = QueueRunner(cast(Any, None), store, JobsConfig(), FakeClock(T0), "A")
    [result] = await runner.run_once()  # no app: the delivery fails, the outcome is written
    assert result.status == "failed"
    assert runner.held_jobs() == frozenset()
    assert [j.status for j in await store.jobs()] == [JobStatus.FAILED]
