"""The jobs store: one interface over SQLite and PostgreSQL, and the records it holds.

Times are POSIX seconds (floats) handed in by the caller's clock, so a fake clock in tests moves
every deadline (run_at, leases, retention) the same way on both backends.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "CronTick",
    "FailedJob",
    "Job",
    "JobStatus",
    "JobStore",
    "LEASE_EXPIRED",
    "Lease",
    "Outcome",
    "QueueStats",
    "Run",
    "RunRow",
    "TICK_LEASE_EXPIRED",
    "TRIM_TARGET",
    "TickStatus",
    "redact_url",
]


#: A history over its cap is trimmed to this fraction of it, so the records of the next minutes fit
#: without a trim at every check.
TRIM_TARGET = 0.9

#: The error of a job whose lease expired on its last attempt (`JobStore.claim` fails it).
LEASE_EXPIRED = "lease expired on the last attempt (the instance running it stopped or hung)"
#: The error of a cron tick whose lease expired while it was running (`JobStore.claim` and
#: `JobStore.claim_tick` fail it): its instance crashed, hung or lost the store for longer.
TICK_LEASE_EXPIRED = "lease expired: the instance running it stopped or hung, and its outcome is unknown"


class JobStatus(enum.StrEnum):
    """Where a queued job is."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    #: Moved to failed jobs after its last attempt (the row in `jobs` keeps the history).
    FAILED = "failed"


class TickStatus(enum.StrEnum):
    """What became of one cron tick."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: The previous run of the same cron job was still going (`overlap = "skip"`).
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Job:
    """One queued job as claimed by a runner (`attempt` is this delivery's number, from 1)."""

    id: int
    function: str
    payload: str
    attempt: int
    max_attempts: int
    status: JobStatus = JobStatus.RUNNING
    run_at: float = 0.0
    idempotency_key: str | None = None
    last_error: str | None = None
    created_at: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """The result of one delivery, handed back to the store to finish the attempt.

    `retry_at` None and `ok` False moves the job to failed jobs.
    """

    job_id: int
    attempt: int
    ok: bool
    http_status: int | None = None
    response: str | None = None
    error: str | None = None
    retry_at: float | None = None


@dataclass(frozen=True)
class FailedJob:
    """A job whose last attempt failed: its payload, the error and the last response."""

    id: int
    job_id: int
    function: str
    payload: str
    attempts: int
    error: str | None
    http_status: int | None
    response: str | None
    failed_at: float
    retried_as: int | None = None


@dataclass(frozen=True)
class CronTick:
    """One claimed cron tick (`key` is the scheduled instant, or `manual:<id>` for a manual run)."""

    id: int
    cron: str
    key: str
    scheduled_for: float
    status: TickStatus
    trigger: str = "schedule"
    http_status: int | None = None
    error: str | None = None
    started_at: float = 0.0
    finished_at: float | None = None


@dataclass(frozen=True)
class Run:
    """One run-history record: an invocation (HTTP, cron, queue) or a wait_until task."""

    kind: str
    function: str
    trigger: str
    execution_id: str
    status: str
    started_at: float
    duration_ms: float | None
    http_status: int | None = None
    error: str | None = None
    #: The wait_until task's name (background records only).
    name: str | None = None


#: One run-history record as the stores write it: `Run`'s fields, in order (the columns of
#: `edgeruntime.jobs.rows.RUN_COLUMNS`). The recorder builds these directly, one per request.
RunRow = tuple[str, str, str, str, str, float, float | None, int | None, str | None, str | None]


@dataclass(frozen=True)
class Lease:
    """A job in flight: who holds it, since when (`claimed_at`) and until when."""

    job_id: int
    function: str
    attempt: int
    max_attempts: int
    worker_id: str | None
    claimed_at: float
    lease_until: float | None


@dataclass(frozen=True)
class QueueStats:
    """The queue at a glance: jobs per status, the oldest queued job and the jobs in flight."""

    counts: dict[str, int]
    oldest_queued_at: float | None
    in_flight: tuple[Lease, ...]


class JobStore(Protocol):
    """Run history, cron ticks, the job queue and failed jobs, on one database."""

    url: str

    async def migrate(self) -> None:
        """Create or upgrade the schema (safe when several instances start at once).

        ConfigError naming the database when it cannot be opened or its schema cannot be written.
        """

    async def check_writable(self) -> None:
        """Prove the store accepts writes: one in each table the runtime writes, rolled back.

        ConfigError naming the file (or the URL without its password) when it does not: a
        read-only file, a read-only transaction or role, missing privileges.
        """

    async def close(self) -> None: ...

    # -- queue ---------------------------------------------------------------------------
    async def enqueue(
        self,
        function: str,
        payload: str,
        *,
        run_at: float,
        max_attempts: int,
        idempotency_key: str | None,
        now: float,
    ) -> int:
        """Insert a job (committed on return); with a known idempotency key, the existing id.

        StoreUnavailable when the store cannot be reached or written now (the same call may work later).
        """

    async def claim(self, worker_id: str, limit: int, *, now: float, lease_sec: float) -> list[Job]:
        """Lease up to `limit` due jobs (queued and due, or running with an expired lease and attempts
        left). In the same transaction, a job whose lease expired on its last attempt is failed: status
        failed and a failed-jobs row (no HTTP status or response), as `finish` fails a last attempt;
        and a running cron tick whose lease expired, of any cron job, is ended: status failed, error
        `TICK_LEASE_EXPIRED`, finished at `now` (every instance polls: the first to look ends it)."""

    async def heartbeat(
        self,
        worker_id: str,
        *,
        job_ids: Collection[int],
        tick_ids: Collection[int],
        now: float,
        lease_sec: float,
    ) -> int:
        """Extend the leases of the jobs `job_ids` and cron ticks `tick_ids` that are running and
        still leased to `worker_id` (the ones this instance runs); returns how many jobs.

        Only these: a job or tick leased to `worker_id` that the instance does not run (a claim
        whose reply was lost, a tick whose finish is not written) keeps its lease running out. With
        both empty, no statement is run.
        """

    async def finish(self, outcomes: Sequence[Outcome], *, now: float) -> int:
        """Record outcomes; an outcome whose attempt is stale (re-claimed) is ignored. Returns applied."""

    async def jobs(self, status: JobStatus | None = None, limit: int = 100) -> list[Job]: ...

    async def count_jobs(self) -> dict[str, int]: ...

    async def failed_jobs(self, limit: int = 100) -> list[FailedJob]: ...

    async def retry_failed(self, failed_id: int, *, now: float) -> int:
        """Queue a failed job again (attempts start over); returns the new job id. A failed job already
        retried is not queued again: its `retried_as` is returned (decided inside the write transaction,
        so two retries at once, on two instances, queue one job). KeyError when there is none."""

    async def failed_job(self, failed_id: int) -> FailedJob | None:
        """One failed job by id."""

    async def delete_failed(self, failed_id: int) -> bool:
        """Remove a failed job; False when there is none with that id."""

    async def job(self, job_id: int) -> Job | None:
        """One job by id (any status)."""

    async def queue_stats(self, limit: int = 100) -> QueueStats:
        """Counts per status, the oldest queued job's creation time and up to `limit` leases."""

    # -- cron ----------------------------------------------------------------------------
    async def claim_tick(
        self,
        cron: str,
        key: str,
        *,
        scheduled_for: float,
        trigger: str,
        instance: str,
        now: float,
        lease_sec: float,
        skip_overlap: bool,
        unless_paused: bool = False,
    ) -> CronTick | None:
        """Insert the tick unique on (cron, key); None when another instance has it.

        The tick is leased to `instance` for `lease_sec` (renewed by `heartbeat`). With
        `skip_overlap`, a running tick of the same cron job whose lease is alive makes this one
        `skipped`; a run whose instance died stops counting once its lease runs out, and is ended
        here as `claim` ends it (failed, `TICK_LEASE_EXPIRED`). With
        `unless_paused` (a scheduled tick), nothing is inserted and None returned when the cron job
        is paused: decided with the claim, so a pause that `set_cron_paused` has written is never
        missed, and one written after it comes after the claim.
        """

    async def finish_tick(
        self, tick_id: int, status: TickStatus, http_status: int | None, error: str | None, *, now: float
    ) -> None:
        """Record a tick's outcome; it replaces a `TICK_LEASE_EXPIRED` verdict written meanwhile
        (the instance was hung or cut from the store, not gone: this is what the run did)."""

    async def ticks(self, cron: str | None = None, limit: int = 100) -> list[CronTick]: ...

    async def paused_crons(self) -> dict[str, float]:
        """The paused cron jobs and when each was paused."""

    async def set_cron_paused(self, cron: str, paused: bool, *, now: float) -> None:
        """Pause (no scheduled ticks fire, on any instance) or resume a cron job.

        A tick being claimed meanwhile is claimed before the pause or refused (`claim_tick`'s
        `unless_paused`): once this returns, no scheduled tick of the job is claimed.
        """

    # -- run history ---------------------------------------------------------------------
    async def record_runs(self, runs: Sequence[Run]) -> None:
        """Write run records in one transaction (as rows: see `record_run_rows`)."""

    async def record_run_rows(self, rows: Sequence[RunRow], *, batch_id: str | None = None) -> int:
        """Write run rows in one transaction: the run history's write path. Returns rows written.

        With a `batch_id`, a batch is written at most once: writing it again (after a connection
        was lost with the outcome of its COMMIT unknown) writes nothing and returns 0.
        StoreUnavailable when the store cannot be reached or written now (the same call may
        succeed later); any other error means these rows cannot be written.
        """

    async def runs(
        self,
        function: str | None = None,
        limit: int = 100,
        *,
        kind: str | None = None,
        trigger: str | None = None,
        status: str | None = None,
        execution_ids: Sequence[str] | None = None,
    ) -> list[Run]:
        """The newest records first, filtered by whichever of the arguments are given."""

    async def prune(self, *, before: float) -> int:
        """Delete history, finished jobs and old ticks older than `before`; returns rows deleted."""

    async def trim_history(self, *, max_rows: int | None = None, max_mb: float | None = None) -> int:
        """Keep the run history under a size cap: returns how many of the oldest records were deleted.

        Over `max_rows` records, or over `max_mb` MiB (SQLite: the database file; Postgres: the
        history table's live rows, estimated), the oldest records are deleted down to
        `TRIM_TARGET` of the cap. SQLite also gives free pages back to the file system (see
        `edgeruntime.jobs.sqlite`); without a cap that is all it does.
        """


def redact_url(url: str) -> str:
    """`url` with its password replaced by `***`, for error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url
