"""Jobs: run history, cron and a durable retrying queue (SQLite by default, Postgres to scale out).

From function code::

    import edgeruntime.jobs

    job_id = await edgeruntime.jobs.enqueue("send-email", {"to": "a@example.com"}, delay=60)
"""

from __future__ import annotations

from edgeruntime.jobs.backends import open_store
from edgeruntime.jobs.clock import Clock, FakeClock, SystemClock
from edgeruntime.jobs.config import JobsConfig
from edgeruntime.jobs.queue import JobResult, enqueue
from edgeruntime.jobs.scheduler import CronRun
from edgeruntime.jobs.store import CronTick, FailedJob, Job, JobStatus, JobStore, Run, TickStatus
from edgeruntime.jobs.system import JobSystem, attach

__all__ = [
    "Clock",
    "CronRun",
    "CronTick",
    "FailedJob",
    "FakeClock",
    "Job",
    "JobResult",
    "JobStatus",
    "JobStore",
    "JobSystem",
    "JobsConfig",
    "Run",
    "SystemClock",
    "TickStatus",
    "attach",
    "enqueue",
    "open_store",
]
