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
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from edgeruntime.functions.discovery import discover
from edgeruntime.gateway.extensions import Extension
from edgeruntime.jobs.backends import open_store
from edgeruntime.jobs.clock import Clock, SystemClock
from edgeruntime.jobs.config import JobsConfig
from edgeruntime.jobs.history import RunHistory
from edgeruntime.jobs.queue import JobQueue, QueueRunner, activate
from edgeruntime.jobs.scheduler import Scheduler, cron_jobs
from edgeruntime.jobs.store import JobStore

if TYPE_CHECKING:
    from edgeruntime.gateway.app import EdgeApp
    from edgeruntime.gateway.extensions import Invocation

__all__ = ["JobSystem", "attach"]

logger = logging.getLogger("edgeruntime.jobs")

PRUNE_INTERVAL_SEC = 3600.0


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
        self.store = store or open_store(settings.database_url, settings.functions_dir)
        self.clock: Clock = clock or SystemClock()
        #: False: nothing runs by itself; tests deliver with `run_jobs()` and `trigger_cron()`.
        self.background = background
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.queue = JobQueue(self.store, self.config, self.clock)
        self.runner = QueueRunner(
            app, self.store, self.config, self.clock, self.instance_id, backoff_scale=backoff_scale
        )
        self.scheduler = Scheduler(
            app, self.store, self.crons, self.clock, self.instance_id, lease_sec=self.config.lease_sec
        )
        # app.functions is updated in place when functions are added or removed, so the recorder
        # sees the current set with one dict lookup per request.
        self.history = RunHistory(self.store, served=app.functions)
        #: The gateway's observer: records invocations of functions this app serves (a request
        #: for any other name is no run).
        self.on_invocation: Callable[[Invocation], None] = self.history.on_invocation
        self.observe_invocation = self.on_invocation
        self.observe_background = self.history.on_background
        self._previous: JobQueue | None = None
        self._prune_task: asyncio.Task[None] | None = None
        self._migrated = False

    def worker_env(self) -> dict[str, str]:
        """Functions in worker processes (process isolation) open the same store to enqueue."""
        return {"EDGERUNTIME_DATABASE_URL": self.store.url}

    async def prepare(self) -> None:
        """Open the store and bring its schema up to date now, so a bad database fails `serve`
        before it listens; `start` then has nothing left to migrate. Runs on the server's loop."""
        await self.store.migrate()
        self._migrated = True

    async def start(self) -> None:
        if not self._migrated:
            await self.store.migrate()
            self._migrated = True
        self._previous = activate(self.queue)
        self.history.start()
        if self.background:
            self.queue.on_enqueue = self.runner.wake
            self.runner.start()
            self.scheduler.start()
            self._prune_task = asyncio.get_running_loop().create_task(self._prune_loop(), name="edgeruntime-prune")

    async def _prune_loop(self) -> None:
        while True:
            await self.prune()
            await asyncio.sleep(PRUNE_INTERVAL_SEC)

    async def prune(self) -> int:
        """Delete history older than `[jobs] retention_days`; returns rows deleted."""
        try:
            return await self.store.prune(before=self.clock.now() - self.config.retention_days * 86400)
        except Exception:
            logger.exception("jobs: pruning history failed")
            return 0

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
        await self.scheduler.stop(timeout)
        await self.runner.stop(timeout)

    async def stop(self) -> None:
        """Write the last run records (background work cut at shutdown included) and close the store."""
        await self.quiesce()
        await self.history.stop()
        activate(self._previous)
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
