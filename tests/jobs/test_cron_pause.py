"""A paused cron job fires no scheduled tick, even when the pause lands between the scheduler's
look at the pauses and its claim of the tick (the dashboard's pause, on another instance)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from edgeruntime.config.project import CronConfig
from edgeruntime.jobs import FakeClock
from edgeruntime.jobs.postgres import PostgresStore
from edgeruntime.jobs.scheduler import Scheduler, cron_jobs
from edgeruntime.jobs.store import CronTick, JobStore
from tests.jobs.backends import until_waiting_for_a_lock

T0 = 1_800_000_000.0  # on the 10-second grid


class PausedJustAfterTheLook:
    """A store on which cron job `c` is paused (by another instance) just after this instance read
    the paused jobs, before it claims the tick."""

    def __init__(self, inner: JobStore) -> None:
        self.inner = inner
        self.looked = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def paused_crons(self) -> dict[str, float]:
        paused = await self.inner.paused_crons()
        await self.inner.set_cron_paused("c", True, now=T0)
        self.looked.set()
        return paused


async def test_a_pause_between_the_look_and_the_claim_fires_no_tick(store: JobStore, delivered: list[str]) -> None:
    wrapped = PausedJustAfterTheLook(store)
    jobs = cron_jobs({"c": CronConfig("c", "f", "10 seconds")})
    scheduler = Scheduler(cast(Any, None), cast(JobStore, wrapped), jobs, FakeClock(T0), "A", lease_sec=30)
    scheduler.start()
    try:
        await asyncio.wait_for(wrapped.looked.wait(), 10)
    finally:
        await scheduler.stop(timeout=5)  # waits for the tick's task
    assert delivered == []
    assert await store.ticks("c") == []
    assert await store.paused_crons() == {"c": T0}


@pytest.mark.postgres
async def test_a_pause_written_while_a_tick_is_claimed_comes_before_the_claim_or_after_it(postgres_url: str) -> None:
    """Instance A claims a scheduled tick; instance B's pause is written while A's transaction is
    open, after A looked for a pause. Under READ COMMITTED A's look cannot see it, so the pause
    must wait for A's claim: a tick committed after a pause that returned would fire although the
    job was paused."""

    a, b = PostgresStore(postgres_url, pool_size=1), PostgresStore(postgres_url, pool_size=1)
    try:
        await a.migrate()
        async with b._conn() as conn:
            b_pid = conn.info.backend_pid
        a_inserted, b_done = asyncio.Event(), asyncio.Event()
        order: list[str] = []

        async with a._conn() as conn:
            execute = conn.execute

            async def pausing_execute(query: Any, *args: Any, **kwargs: Any) -> Any:
                cur = await execute(query, *args, **kwargs)
                if str(query).startswith("INSERT INTO edgeruntime_cron_ticks"):
                    a_inserted.set()  # A looked for a pause and inserted its tick, not yet committed
                    await asyncio.wait_for(until_waiting_for_a_lock(postgres_url, b_pid, b_done), 10)
                return cur

            conn.execute = pausing_execute  # type: ignore[method-assign]

        async def claim_a() -> CronTick | None:
            tick = await a.claim_tick(
                "c",
                "2027-01-15T08:00:00.000Z",
                scheduled_for=T0,
                trigger="schedule",
                instance="A",
                now=T0,
                lease_sec=30,
                skip_overlap=False,
                unless_paused=True,
            )
            order.append("claimed")
            return tick

        async def pause_b() -> None:
            await a_inserted.wait()
            try:
                await b.set_cron_paused("c", True, now=T0)
                order.append("paused")
            finally:
                b_done.set()

        tick, _ = await asyncio.wait_for(asyncio.gather(claim_a(), pause_b()), 30)
        assert tick is not None  # claimed before the pause, which waited for it
        assert order == ["claimed", "paused"]
        # Any claim after the pause is refused.
        later = await b.claim_tick(
            "c",
            "2027-01-15T08:00:10.000Z",
            scheduled_for=T0 + 10,
            trigger="schedule",
            instance="B",
            now=T0 + 10,
            lease_sec=30,
            skip_overlap=True,
            unless_paused=True,
        )
        assert later is None
    finally:
        await a.close()
        await b.close()
