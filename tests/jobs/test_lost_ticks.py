"""A cron tick whose instance crashed mid-run ends once its lease runs out, as a job does.

Its instance would have written its outcome; gone, nothing renews the tick's lease, and whichever
instance looks next (its queue poll, or the next claim of the same cron job) records the tick as
failed with the error below, instead of leaving it "running" in the dashboard and `cron list`
for ever.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from edgeruntime.config.settings import Settings
from edgeruntime.gateway.app import EdgeApp
from edgeruntime.jobs import TickStatus, attach
from edgeruntime.jobs.store import JobStore
from edgeruntime.testing import EdgeClient
from tests.helpers import HELLO, write_function

T0 = 1_800_000_000.0
TICK_LEASE_EXPIRED = "lease expired: the instance running it stopped or hung, and its outcome is unknown"


async def _crashed_tick(store: JobStore, cron: str = "c", key: str = "k1", *, now: float = T0, lease: float = 5) -> int:
    """A tick claimed by an instance that then crashed: it never heartbeats nor writes an outcome."""
    tick = await store.claim_tick(
        cron,
        key,
        scheduled_for=now,
        trigger="schedule",
        instance="crashed",
        now=now,
        lease_sec=lease,
        skip_overlap=True,
    )
    assert tick is not None and tick.status is TickStatus.RUNNING
    return tick.id


async def test_a_tick_whose_lease_ran_out_is_ended_by_the_next_poll_of_any_instance(store: JobStore) -> None:
    tick_id = await _crashed_tick(store)
    # Within its lease the run counts as going, whoever polls.
    assert await store.claim("alive", 10, now=T0 + 4, lease_sec=30) == []
    assert [t.status for t in await store.ticks("c")] == [TickStatus.RUNNING]
    assert await store.claim("alive", 10, now=T0 + 6, lease_sec=30) == []
    [tick] = await store.ticks("c")
    assert (tick.id, tick.status, tick.http_status, tick.error, tick.finished_at) == (
        tick_id,
        TickStatus.FAILED,
        None,
        TICK_LEASE_EXPIRED,
        T0 + 6,
    )
    # The crashed instance's heartbeat (it was only hung) renews nothing: the tick stays ended.
    await store.heartbeat("crashed", job_ids=[], tick_ids=[tick_id], now=T0 + 7, lease_sec=5)
    assert await store.claim("alive", 10, now=T0 + 8, lease_sec=30) == []
    [tick] = await store.ticks("c")
    assert (tick.status, tick.finished_at) == (TickStatus.FAILED, T0 + 6)
    # Ended, it is history like any other: pruned with its age.
    assert await store.prune(before=T0 + 1) == 1
    assert await store.ticks("c") == []


async def test_the_next_claim_of_the_same_cron_job_ends_it(store: JobStore) -> None:
    """Without a queue poll (`edgeruntime cron run`, a test's `trigger_cron`): the next tick's claim."""
    first = await _crashed_tick(store)
    other = await _crashed_tick(store, "other")
    at = T0 + 6
    later = await store.claim_tick(
        "c", "k2", scheduled_for=at, trigger="schedule", instance="alive", now=at, lease_sec=5, skip_overlap=True
    )
    assert later is not None and later.status is TickStatus.RUNNING
    by_id = {t.id: t for t in await store.ticks()}
    assert (by_id[first].status, by_id[first].error, by_id[first].finished_at) == (
        TickStatus.FAILED,
        TICK_LEASE_EXPIRED,
        T0 + 6,
    )
    assert by_id[other].status is TickStatus.RUNNING  # another job's: left to the polls
    assert by_id[later.id].status is TickStatus.RUNNING


async def test_a_late_outcome_of_the_instance_that_ran_it_replaces_the_verdict(store: JobStore) -> None:
    """An instance that was only hung, or cut from the store, writes the run's real outcome."""
    tick_id = await _crashed_tick(store)
    await store.claim("alive", 10, now=T0 + 6, lease_sec=30)
    await store.finish_tick(tick_id, TickStatus.SUCCEEDED, 200, None, now=T0 + 9)
    [tick] = await store.ticks("c")
    assert (tick.status, tick.http_status, tick.error, tick.finished_at) == (TickStatus.SUCCEEDED, 200, None, T0 + 9)


async def test_a_serving_instance_ends_the_tick_a_crashed_one_left_running(functions_dir: Path, store_url: str) -> None:
    """Real clock and loops: the tick of a job since disabled (no tick of it is claimed again)
    ends within a few polls of its lease running out, and the dashboard shows it failed."""
    write_function(functions_dir, "hello", HELLO)
    (functions_dir.parent / "config.toml").write_text(
        '[cron.nightly]\nfunction = "hello"\nschedule = "0 3 * * *"\nenabled = false\n', encoding="utf-8"
    )
    app = EdgeApp(Settings.build(functions_dir, database_url=store_url))
    system = attach(app)
    await app.startup()
    try:
        tick_id = await _crashed_tick(system.store, "nightly", now=time.time(), lease=0.5)
        for _ in range(200):  # 10 s at most
            [tick] = await system.store.ticks("nightly")
            if tick.status is not TickStatus.RUNNING:
                break
            await asyncio.sleep(0.05)
    finally:
        await app.shutdown()
    assert (tick.id, tick.status, tick.error) == (tick_id, TickStatus.FAILED, TICK_LEASE_EXPIRED)
    async with EdgeClient(functions_dir, database_url=store_url) as client:
        r = await client.request("GET", "/_edgeruntime/api/cron")
    [nightly] = r.json()["cron"]
    assert nightly["last_status"] == "failed"
    assert [(t["id"], t["status"], t["error"]) for t in nightly["ticks"]] == [(tick_id, "failed", TICK_LEASE_EXPIRED)]
