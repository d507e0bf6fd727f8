"""The cron scheduler: every instance runs it; each tick fires once across all of them.

A tick is claimed by inserting a row unique on (cron job, scheduled instant); only the instance
whose insert wins delivers it. A tick whose previous run is still going is recorded as skipped
(`overlap = "skip"`). After downtime only the latest missed tick runs, if it is at most
10 minutes old.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from edgeruntime.config.project import CronConfig
from edgeruntime.exceptions import ConfigError, JobsError
from edgeruntime.jobs.clock import Clock
from edgeruntime.jobs.config import CATCHUP_WINDOW_SEC
from edgeruntime.jobs.delivery import deliver
from edgeruntime.jobs.outage import Outage, describe, escaped, store_unavailable
from edgeruntime.jobs.schedule import Schedule, validate_cron
from edgeruntime.jobs.store import JobStore, TickStatus

if TYPE_CHECKING:
    from edgeruntime.gateway.app import EdgeApp

__all__ = ["CRON_HEADER", "SCHEDULED_FOR_HEADER", "CronJob", "CronRun", "Scheduler", "cron_jobs", "iso"]

logger = logging.getLogger("edgeruntime.jobs")

CRON_HEADER = "x-edgeruntime-cron"
SCHEDULED_FOR_HEADER = "x-edgeruntime-scheduled-for"
#: The scheduler wakes at least this often, so a clock step is noticed.
MAX_SLEEP_SEC = 1.0


def iso(instant: float) -> str:
    """ISO 8601 UTC with milliseconds, e.g. `2026-01-01T10:00:00.000Z`."""
    return datetime.fromtimestamp(instant, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class CronJob:
    """A `[cron.<name>]` entry with its parsed schedule."""

    config: CronConfig
    schedule: Schedule

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True)
class CronRun:
    """One tick handled by this instance: delivered, or skipped because the last run was going."""

    cron: str
    key: str
    scheduled_for: float
    status: TickStatus
    http_status: int | None = None
    body: str | None = None

    @property
    def status_code(self) -> int | None:
        """The function's HTTP status (None when skipped), as on an httpx response."""
        return self.http_status

    @property
    def text(self) -> str:
        return self.body or ""

    def json(self) -> Any:
        """The function's response body, parsed."""
        return json.loads(self.text)


@dataclass(frozen=True)
class _Finish:
    """The outcome of one tick, as `JobStore.finish_tick` writes it (`at`: when it finished)."""

    cron: str
    status: TickStatus
    http_status: int | None
    error: str | None
    at: float


def cron_jobs(crons: Mapping[str, CronConfig], functions: set[str] | None = None) -> dict[str, CronJob]:
    """Validate every `[cron.<name>]` (schedule, time zone, target function): ConfigError on the first bad one."""
    jobs: dict[str, CronJob] = {}
    for name, cron in crons.items():
        schedule = validate_cron(cron)
        if functions is not None and cron.function not in functions:
            raise ConfigError(f"[cron.{name}] function = {cron.function!r}: no such function")
        jobs[name] = CronJob(cron, schedule)
    return jobs


class Scheduler:
    """Fires the cron jobs of one app (see the module docstring)."""

    def __init__(
        self,
        app: EdgeApp,
        store: JobStore,
        jobs: Mapping[str, CronJob],
        clock: Clock,
        instance_id: str,
        lease_sec: float = 30.0,
    ) -> None:
        self.app = app
        #: A running tick is leased like a job (the queue runner's heartbeat renews it).
        self.lease_sec = lease_sec
        self.store = store
        self.jobs = dict(jobs)
        self.clock = clock
        self.instance_id = instance_id
        self._last: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[CronRun | None]] = set()
        #: Called with every tick this instance fired or skipped (metrics).
        self.observers: list[Callable[[CronRun], None]] = []
        # A store that is down fails every tick of every job: logged once, then once a minute.
        self._outage = Outage(logger, "cron: claiming ticks")
        #: The running ticks this instance holds, by id: from their claim until their outcome is
        #: written. The queue runner's heartbeat renews these leases, and no other tick's.
        self._held: set[int] = set()
        #: Outcomes whose `finish_tick` failed (the store unavailable), by tick id: written on the
        #: loop's next turns, before the next fire or at stop. Until then the tick is held: its run
        #: counts as going (`overlap = "skip"`), as it would for ever were the outcome dropped.
        self._unfinished: dict[int, _Finish] = {}
        self._finish_outage = Outage(logger, "cron: recording tick outcomes")

    def held_ticks(self) -> frozenset[int]:
        """The ids of the running ticks this instance holds (delivering, or with an outcome not yet
        written): the ones whose leases the queue runner's heartbeat renews."""
        return frozenset(self._held)

    def _observe(self, run: CronRun) -> CronRun:
        for observer in self.observers:
            try:
                observer(run)
            except Exception:
                logger.exception("cron observer failed")
        return run

    def _job(self, name: str) -> CronJob:
        job = self.jobs.get(name)
        if job is None:
            known = ", ".join(sorted(self.jobs)) or "none configured"
            raise JobsError(f"no cron job {name!r} (known: {known})")
        return job

    async def fire(
        self,
        name: str,
        scheduled_for: float,
        *,
        trigger: str = "schedule",
        key: str | None = None,
        unless_paused: bool = False,
    ) -> CronRun | None:
        """Claim and deliver one tick; None when another instance claimed it first, or (with
        `unless_paused`: a scheduled tick) when the job is paused at the claim.

        The tick's outcome is written before this returns; when the store is unavailable for that,
        it is kept and written later (`finish_pending`), the tick held (its lease renewed) until then.
        """
        job = self._job(name)
        if self._unfinished:
            # An outcome not yet written leaves its tick running: an `overlap = "skip"` job's tick
            # would be skipped for it.
            await self.finish_pending()
        now = self.clock.now()
        tick = await self.store.claim_tick(
            name,
            key or iso(scheduled_for),
            scheduled_for=scheduled_for,
            trigger=trigger,
            instance=self.instance_id,
            now=now,
            lease_sec=self.lease_sec,
            skip_overlap=job.config.overlap == "skip",
            unless_paused=unless_paused,
        )
        if tick is None:
            return None
        if tick.status is TickStatus.SKIPPED:
            logger.warning("cron %s: tick %s skipped, the previous run is still going", name, iso(scheduled_for))
            return self._observe(CronRun(name, tick.key, scheduled_for, TickStatus.SKIPPED))
        self._held.add(tick.id)
        body = json.dumps({**job.config.body, "executedAt": iso(scheduled_for)}).encode()
        headers = {CRON_HEADER: name, SCHEDULED_FOR_HEADER: iso(scheduled_for)}
        status, http_status, text, error = TickStatus.FAILED, None, None, None
        try:
            result = await deliver(self.app, job.config.function, body, headers, trigger="cron")
            http_status, text = result.status, result.body
            status = TickStatus.SUCCEEDED if result.ok else TickStatus.FAILED
            error = None if result.ok else result.describe()
        except Exception as exc:
            logger.exception("cron %s: delivery failed", name)
            error = f"{type(exc).__name__}: {exc}"
        finally:
            await self._finish(tick.id, _Finish(name, status, http_status, error, self.clock.now()))
        return self._observe(CronRun(name, tick.key, scheduled_for, status, http_status, text))

    async def _finish(self, tick_id: int, finish: _Finish) -> bool:
        """Write a tick's outcome and let the tick go; False when the store is unavailable, and the
        outcome is kept for the next try (logged through the outage). An outcome the store refuses
        (a text it cannot hold) is written with its error escaped to ASCII, or else dropped."""
        try:
            await self.store.finish_tick(tick_id, finish.status, finish.http_status, finish.error, now=finish.at)
        except Exception as exc:
            if store_unavailable(exc):
                return self._keep(tick_id, finish, exc)
            if not await self._finish_refused(tick_id, finish, exc):
                return False
        self._unfinished.pop(tick_id, None)
        self._held.discard(tick_id)
        self._finish_outage.recovered()
        return True

    async def _finish_refused(self, tick_id: int, finish: _Finish, refused: Exception) -> bool:
        """`finish_tick` refused `finish` for what it writes: try its error escaped to ASCII, else
        drop it (its tick stays running until its lease runs out). False when the store turned out
        unavailable: the outcome is kept."""
        if finish.error is not None:
            bare = replace(finish, error=escaped(finish.error))
            try:
                await self.store.finish_tick(tick_id, bare.status, bare.http_status, bare.error, now=bare.at)
            except Exception as exc:
                if store_unavailable(exc):
                    return self._keep(tick_id, finish, exc)
            else:
                logger.error(
                    "cron %s: the store refused the outcome of tick %d (%s); recorded with the error escaped",
                    finish.cron,
                    tick_id,
                    describe(refused),
                )
                return True
        logger.error(
            "cron %s: the store refused the outcome of tick %d (%s); dropped (the tick counts as running"
            " until its lease runs out)",
            finish.cron,
            tick_id,
            describe(refused),
        )
        return True

    def _keep(self, tick_id: int, finish: _Finish, exc: Exception) -> bool:
        self._unfinished[tick_id] = finish
        self._finish_outage.failed(
            exc, f"cron {finish.cron}: the outcome of tick {tick_id} kept, retrying every {MAX_SLEEP_SEC:g} s"
        )
        if self._task is not None and self._task.done() and not self._task.cancelled():
            # The loop returned (no job enabled; this was a "Run now"): it retries the outcome.
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="edgeruntime-cron")
        return False

    async def finish_pending(self) -> int:
        """Write the tick outcomes kept when the store was unavailable (oldest first, up to the first
        that fails again); returns how many are still kept. The loop calls it on each turn (at least
        every `MAX_SLEEP_SEC`), `fire` before claiming and `stop` last."""
        for tick_id, finish in list(self._unfinished.items()):
            if self._unfinished.get(tick_id) is not finish:
                continue  # written meanwhile (a fire and the loop may both be at it)
            if not await self._finish(tick_id, finish):
                break
        return len(self._unfinished)

    async def run_now(self, name: str, at: float | None = None) -> CronRun:
        """Run a cron job now. With `at`, as the scheduled tick at or before `at` (which it then
        consumes); without, as a manual run that leaves the schedule's ticks alone."""
        job = self._job(name)
        if at is None:
            run = await self.fire(name, self.clock.now(), trigger="manual", key=f"manual:{uuid.uuid4()}")
        else:
            run = await self.fire(name, job.schedule.latest(at))
        if run is None:
            raise JobsError(f"cron {name}: the tick at {at} was already run")
        return run

    def due(self, now: float) -> list[tuple[CronJob, float]]:
        """Ticks to fire at `now`: the latest tick of each job not yet handled here, if recent enough."""
        out = []
        for job in self.jobs.values():
            if not job.config.enabled:
                continue
            tick = job.schedule.latest(now)
            if tick > self._last.get(job.name, -math.inf) and now - tick <= CATCHUP_WINDOW_SEC:
                self._last[job.name] = tick
                out.append((job, tick))
        return out

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._unfinished:
                await self.finish_pending()
            now = self.clock.now()
            for job, tick in self.due(now):
                task = loop.create_task(self._fire_logged(job.name, tick), name=f"edgeruntime-cron-{job.name}")
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            enabled = [j for j in self.jobs.values() if j.config.enabled]
            if not enabled and not self._unfinished:
                return
            upcoming = min((j.schedule.next(now) for j in enabled), default=math.inf)
            await asyncio.sleep(max(0.0, min(upcoming - self.clock.now(), MAX_SLEEP_SEC)))

    async def _fire_logged(self, name: str, tick: float) -> CronRun | None:
        try:
            # A paused job (dashboard, any instance) lets its scheduled ticks pass; "Run now" still works.
            # This look, a read, spares a paused job's ticks the claim's write; the claim looks again,
            # for a pause written since.
            if name in await self.store.paused_crons():
                logger.info("cron %s: tick %s not fired, the job is paused", name, iso(tick))
                return None
            run = await self.fire(name, tick, unless_paused=True)
            self._outage.recovered()
            return run
        except Exception as exc:
            self._outage.failed(exc, f"cron {name}: tick {iso(tick)} not fired")
            if self._last.get(name) == tick:
                # Not fired: `due` offers it again (next turn of the loop) while it is recent
                # enough. The store's key for the tick keeps it from running twice.
                del self._last[name]
            return None

    def start(self) -> None:
        if self._task is None and self.jobs:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="edgeruntime-cron")

    async def stop(self, timeout: float) -> None:
        """Stop firing ticks; give runs in flight `timeout` seconds, then write the kept outcomes."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._running:
            await asyncio.wait(set(self._running), timeout=timeout)
            for task in set(self._running):
                task.cancel()
        if self._unfinished and (left := await self.finish_pending()):
            logger.error(
                "cron: %d tick outcome(s) could not be written at stop; those ticks count as running"
                " until their leases run out",
                left,
            )
