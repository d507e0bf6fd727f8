"""The jobs system of one app: store, run history, cron scheduler and queue runner together.

It is an extension of the gateway (:mod:`edgeruntime.gateway.extensions`): it records every
invocation and wait_until task, starts the scheduler and the queue runner with the app and stops
them with it, and makes `edgeruntime.jobs.enqueue` write to this app's store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edgeruntime.functions.discovery import discover
from edgeruntime.gateway.extensions import Extension
from edgeruntime.jobs.backends import open_store
from edgeruntime.jobs.clock import Clock, ClockOffset, ServerClock, SystemClock, skew_limit
from edgeruntime.jobs.config import JobsConfig
from edgeruntime.jobs.history import RunHistory
from edgeruntime.jobs.outage import Outage, describe
from edgeruntime.jobs.queue import JobQueue, QueueRunner, activate, deactivate
from edgeruntime.jobs.scheduler import Scheduler, cron_jobs
from edgeruntime.jobs.store import JobStore, redact_url

if TYPE_CHECKING:
    from edgeruntime.gateway.app import EdgeApp
    from edgeruntime.gateway.extensions import Invocation

__all__ = ["JobSystem", "attach"]

logger = logging.getLogger("edgeruntime.jobs")

PRUNE_INTERVAL_SEC = 3600.0
#: How often a history size cap (`[jobs] retention_max_mb` / `retention_max_rows`) is checked: a
#: burst may overshoot it by what it writes in this time. A check under the cap reads a few
#: numbers (SQLite: page counts; Postgres: the id range and the table's size, and a sample of the
#: newest rows only once its files are over the cap).
TRIM_INTERVAL_SEC = 10.0
#: How often a serving instance on a shared database (Postgres) compares its clock with the
#: server's: a clock can be stepped, or drift, at any time.
CLOCK_CHECK_INTERVAL_SEC = 60.0
#: While the clocks stay apart, the warning is repeated this often.
CLOCK_WARN_REPEAT_SEC = 3600.0


class JobSystem(Extension):
    """Everything jobs-related for one app (see the module docstring)."""

    def __init__(
        self,
        app: EdgeApp,
        *,
        store: JobStore | None = None,
        clock: Clock | None = None,
        background: bool = True,
        backoff_scale: float = 1.0,
    ) -> None:
        settings = app.settings
        self.app = app
        self.config = JobsConfig.from_table(settings.config.jobs, settings.config.path)
        crons = settings.config.cron
        self.crons = cron_jobs(crons, set(discover(settings.functions_dir)) if crons else None)
        self.store = store or open_store(
            settings.database_url,
            settings.functions_dir,
            source=settings.database_url_source,
            announce=app.announce,  # a serving process of several: its supervisor opened it first
        )
        if (clock is None or isinstance(clock, SystemClock)) and hasattr(self.store, "clock_offset"):
            # Instances sharing the database agree on time only if they all read the server's.
            clock = ServerClock(clock)
        #: What leases, due times and cron instants are read from: on Postgres, unless a test
        #: passes a clock of its own (`FakeClock`), the database server's (`ServerClock`).
        self.clock: Clock = clock or SystemClock()
        #: False: nothing runs by itself; tests deliver with `run_jobs()` and `trigger_cron()`.
        self.background = background
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.queue = JobQueue(self.store, self.config, self.clock)
        self.scheduler = Scheduler(
            app, self.store, self.crons, self.clock, self.instance_id, lease_sec=self.config.lease_sec
        )
        # The runner's heartbeat renews the leases of the jobs it runs and of the scheduler's ticks.
        self.runner = QueueRunner(
            app,
            self.store,
            self.config,
            self.clock,
            self.instance_id,
            backoff_scale=backoff_scale,
            held_ticks=self.scheduler.held_ticks,
        )
        # app.functions is updated in place when functions are added or removed, so the recorder
        # sees the current set with one dict lookup per request.
        self.history = RunHistory(self.store, served=app.functions)
        #: The gateway's observer: records invocations of functions this app serves (a request
        #: for any other name is no run).
        self.on_invocation: Callable[[Invocation], None] = self.history.on_invocation
        self.observe_invocation = self.on_invocation
        self.observe_background = self.history.on_background
        # Worker processes (process isolation) enqueue through the server and never see the store.
        self.enqueue = self.queue.enqueue
        self._prune_task: asyncio.Task[None] | None = None
        self._migrated = False
        self._prune_outage = Outage(logger, "jobs: pruning history")
        self._trim_outage = Outage(logger, "jobs: trimming history to its size cap")
        self._clock_task: asyncio.Task[None] | None = None
        #: Whether this instance's clock was last found too far from the database server's, and when that was said.
        self._skewed = False
        self._skew_logged_at = 0.0

    def private_paths(self) -> list[Path]:
        """A SQLite store's files, hidden from worker processes (they enqueue through the server):
        its directory when it is edgeruntime's own (``.edgeruntime/``), else the file and its journals."""
        database = getattr(self.store, "path", None)
        if not isinstance(database, Path):
            return []
        if database.parent.name == ".edgeruntime":
            return [database.parent]
        return [database.with_name(database.name + suffix) for suffix in ("", "-wal", "-shm", "-journal")]

    async def prepare(self) -> None:
        """Open the store, bring its schema up to date and prove it accepts writes now, so a bad
        or read-only database fails `serve` (one line, exit status 2) before it listens; `start`
        then has nothing left to do. Runs on the server's loop."""
        await self.store.migrate()
        await self.store.check_writable()
        self._migrated = True

    async def start(self) -> None:
        if not self._migrated:
            await self.prepare()
        if isinstance(self.clock, ServerClock) or (self.background and hasattr(self.store, "clock_offset")):
            await self.check_clock()  # before the scheduler and the runner read the time
        activate(self.queue)
        self.history.start()
        if self.background:
            self.queue.on_enqueue = self.runner.wake
            self.runner.start()
            self.scheduler.start()
            loop = asyncio.get_running_loop()
            self._prune_task = loop.create_task(self._prune_loop(), name="edgeruntime-prune")
            if hasattr(self.store, "clock_offset"):
                self._clock_task = loop.create_task(self._clock_loop(), name="edgeruntime-clock-check")

    async def _prune_loop(self) -> None:
        capped = self.config.retention_max_mb is not None or self.config.retention_max_rows is not None
        loop = asyncio.get_running_loop()
        next_prune = loop.time()
        while True:
            if loop.time() >= next_prune:
                await self.prune()
                next_prune = loop.time() + PRUNE_INTERVAL_SEC
            elif capped:
                await self.trim()
            until_prune = next_prune - loop.time()
            await asyncio.sleep(max(0.0, min(TRIM_INTERVAL_SEC, until_prune) if capped else until_prune))

    async def prune(self) -> int:
        """Delete history older than `[jobs] retention_days`, then enforce the size cap (if one is
        set) and give the space back where the store can; returns rows deleted."""
        try:
            deleted = await self.store.prune(before=self.clock.now() - self.config.retention_days * 86400)
        except Exception as exc:
            self._prune_outage.failed(exc, f"next try in {PRUNE_INTERVAL_SEC:.0f} s")
            return 0
        self._prune_outage.recovered()
        return deleted + await self.trim()

    async def trim(self) -> int:
        """Delete the oldest history beyond `[jobs] retention_max_rows` / `retention_max_mb`;
        returns rows deleted."""
        try:
            deleted = await self.store.trim_history(
                max_rows=self.config.retention_max_rows, max_mb=self.config.retention_max_mb
            )
        except Exception as exc:
            self._trim_outage.failed(exc)
            return 0
        self._trim_outage.recovered()
        if deleted:
            logger.debug("jobs: %d oldest run record(s) deleted to keep the history under its size cap", deleted)
        return deleted

    async def _clock_loop(self) -> None:
        while True:
            await asyncio.sleep(CLOCK_CHECK_INTERVAL_SEC)
            await self.check_clock()

    async def check_clock(self) -> ClockOffset | None:
        """Measure this instance's clocks against the database server's: a `ServerClock` follows
        the server's from then on; the host's (a `ServerClock`'s host, else the clock itself) is
        warned of when further apart than `skew_limit`, and returned. A serving instance does it at
        start and every minute. None for a store whose processes all read one host's clock
        (SQLite), or when the database cannot be reached (its other users report that)."""
        measure = getattr(self.store, "clock_offset", None)
        if measure is None:
            return None
        clock = self.clock
        try:
            if isinstance(clock, ServerClock):
                steady: ClockOffset = await measure(clock.steady)
                clock.follow(steady)
                offset = clock.host_offset(steady)
            else:
                offset = await measure(clock.now)
        except Exception as exc:
            logger.debug("jobs: comparing this instance's clock with the database server's failed: %s", describe(exc))
            return None
        limit = skew_limit(self.config.lease_sec)
        now = time.monotonic()
        if offset.beyond(limit):
            if not self._skewed or now - self._skew_logged_at >= CLOCK_WARN_REPEAT_SEC:
                self._skew_logged_at = now
                self._warn_skew(offset, limit)
            self._skewed = True
        elif self._skewed and abs(offset.seconds) + offset.error <= limit:  # not on the edge: back for sure
            self._skewed = False
            logger.warning(
                "jobs: this %s clock agrees with the database server's again (%.1f s apart)",
                "host's" if isinstance(self.clock, ServerClock) else "instance's",
                abs(offset.seconds),
            )
        return offset

    def _warn_skew(self, offset: ClockOffset, limit: float) -> None:
        url = redact_url(str(getattr(self.store, "url", "")))
        if isinstance(self.clock, ServerClock):
            logger.warning(
                "jobs: this host's clock is %.1f s %s the database server's (%s), more than %.1f s: leases, due"
                " times and cron ticks follow the server's clock, so instances sharing the database still agree"
                " on them, but the time function code reads (time.time(), datetime.now()) and the times of run"
                " records and log lines written here are off by as much; synchronise this host's clock (NTP)",
                abs(offset.seconds),
                "ahead of" if offset.seconds > 0 else "behind",
                url,
                limit,
            )
            return
        if offset.seconds > 0:
            direction = "ahead of"
            harm = (
                "so this one can take jobs and cron ticks other instances are still running for lost and"
                " deliver them again, and runs cron ticks and delayed jobs early"
            )
        else:
            direction = "behind"
            harm = (
                "so other instances can take the jobs and cron ticks this one is running for lost and"
                " deliver them again, and the jobs it delays come due early"
            )
        logger.warning(
            "jobs: this instance's clock is %.1f s %s the database server's (%s), more than the %.1f s"
            " leases allow ([jobs] lease_sec = %g): instances sharing a database judge leases and due"
            " times by their own clocks, %s; synchronise this host's clock (NTP)",
            abs(offset.seconds),
            direction,
            url,
            limit,
            self.config.lease_sec,
            harm,
        )

    async def quiesce(self) -> None:
        """Stop firing ticks and claiming jobs; let deliveries in flight finish (graceful timeout).

        Runs before the functions drain, so no new work reaches a worker that is shutting down.
        """
        timeout = self.app.settings.graceful_exit_timeout_sec
        if self._prune_task is not None:
            self._prune_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prune_task
            self._prune_task = None
        if self._clock_task is not None:
            self._clock_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock_task
            self._clock_task = None
        await self.scheduler.stop(timeout)
        await self.runner.stop(timeout)

    async def stop(self) -> None:
        """Write the last run records (background work cut at shutdown included) and close the store."""
        await self.quiesce()
        await self.history.stop()
        deactivate(self.queue)
        await self.store.close()


def attach(
    app: EdgeApp,
    *,
    store: JobStore | None = None,
    clock: Clock | None = None,
    background: bool = True,
    backoff_scale: float = 1.0,
) -> JobSystem:
    """A jobs system registered with `app`; ConfigError for an invalid `[cron.*]` or `[jobs]` entry."""
    system = JobSystem(app, store=store, clock=clock, background=background, backoff_scale=backoff_scale)
    app.add_extension(system)
    return system
