"""The column lists and row-to-record mapping that both SQL backends share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgeruntime.jobs.store import CronTick, FailedJob, Job, JobStatus, Lease, Run, RunRow, TickStatus

__all__ = [
    "CRON_PAUSED",
    "FAILED_COLUMNS",
    "JOB_COLUMNS",
    "LEASE_COLUMNS",
    "PRUNE_STATEMENTS",
    "RUN_COLUMNS",
    "TICK_COLUMNS",
    "WRITE_PROBES",
    "FIRST_OF_BATCH",
    "failed_from_row",
    "job_from_row",
    "lease_from_row",
    "run_filters",
    "run_from_row",
    "run_row",
    "tick_from_row",
]

JOB_COLUMNS = "id, function, payload, attempts, max_attempts, status, run_at, idempotency_key, last_error, created_at"
TICK_COLUMNS = "id, cron, tick_key, scheduled_for, status, trigger, http_status, error, started_at, finished_at"
FAILED_COLUMNS = "id, job_id, function, payload, attempts, error, http_status, response, failed_at, retried_as"
RUN_COLUMNS = "kind, function, trigger, execution_id, status, started_at, duration_ms, http_status, error, name"
LEASE_COLUMNS = "id, function, attempts, max_attempts, worker_id, updated_at, lease_until"

#: One row when cron job %s is paused: a scheduled tick is not claimed then.
CRON_PAUSED = "SELECT 1 FROM edgeruntime_cron_pauses WHERE cron = %s"

#: The first row of a run-history batch, with the batch's id: inserts nothing when a row with that
#: id is there already (the batch was written before, though its writer never heard so).
FIRST_OF_BATCH = (
    f"INSERT INTO edgeruntime_runs ({RUN_COLUMNS}, batch) VALUES ({', '.join(['%s'] * 11)}) ON CONFLICT DO NOTHING"
)


def job_from_row(row: Sequence[Any]) -> Job:
    return Job(
        id=row[0],
        function=row[1],
        payload=row[2],
        attempt=row[3],
        max_attempts=row[4],
        status=JobStatus(row[5]),
        run_at=row[6],
        idempotency_key=row[7],
        last_error=row[8],
        created_at=row[9],
    )


def tick_from_row(row: Sequence[Any]) -> CronTick:
    return CronTick(row[0], row[1], row[2], row[3], TickStatus(row[4]), row[5], row[6], row[7], row[8], row[9])


def failed_from_row(row: Sequence[Any]) -> FailedJob:
    return FailedJob(*row)


def run_from_row(row: Sequence[Any]) -> Run:
    return Run(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9])


def run_row(run: Run) -> RunRow:
    """The row `record_run_rows` writes for `run` (its fields in `RUN_COLUMNS` order)."""
    return (
        run.kind,
        run.function,
        run.trigger,
        run.execution_id,
        run.status,
        run.started_at,
        run.duration_ms,
        run.http_status,
        run.error,
        run.name,
    )


def lease_from_row(row: Sequence[Any]) -> Lease:
    return Lease(*row)


def run_filters(
    function: str | None,
    kind: str | None,
    trigger: str | None,
    status: str | None,
    execution_ids: Sequence[str] | None,
) -> tuple[str, list[Any]]:
    """A WHERE clause (with `%s` placeholders) and its arguments for `JobStore.runs`."""
    clauses: list[str] = []
    args: list[Any] = []
    for column, value in (("function", function), ("kind", kind), ("trigger", trigger), ("status", status)):
        if value:
            clauses.append(f"{column} = %s")
            args.append(value)
    if execution_ids is not None:
        ids = list(execution_ids)
        if not ids:
            return "WHERE 1 = 0", []
        clauses.append(f"execution_id IN ({', '.join('%s' for _ in ids)})")
        args.extend(ids)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), args


#: One insert, update and delete in each table the runtime writes, in a transaction that is then
#: rolled back: proves at start that the store accepts writes (file mode, read-only role or
#: transaction, missing privileges). Id -1: never a real row, and no sequence value is used up.
WRITE_PROBES = (
    "INSERT INTO edgeruntime_runs (id, kind, function, trigger, execution_id, status, started_at)"
    " VALUES (-1, 'probe', 'probe', 'probe', 'probe', 'probe', 0)",
    "INSERT INTO edgeruntime_jobs (id, function, payload, status, max_attempts, run_at, created_at, updated_at)"
    " VALUES (-1, 'probe', '{}', 'probe', 1, 0, 0, 0)",
    "INSERT INTO edgeruntime_failed_jobs (id, job_id, function, payload, attempts, failed_at)"
    " VALUES (-1, -1, 'probe', '{}', 1, 0)",
    "INSERT INTO edgeruntime_cron_ticks (id, cron, tick_key, scheduled_for, trigger, status, instance, started_at)"
    " VALUES (-1, 'probe', 'probe', 0, 'probe', 'probe', 'probe', 0)",
    "INSERT INTO edgeruntime_cron_pauses (cron, paused_at) VALUES ('edgeruntime probe', 0)",
    "UPDATE edgeruntime_jobs SET status = 'probed' WHERE id = -1",
    "UPDATE edgeruntime_failed_jobs SET retried_as = -1 WHERE id = -1",
    "UPDATE edgeruntime_cron_ticks SET status = 'probed' WHERE id = -1",
    "DELETE FROM edgeruntime_runs WHERE id = -1",
    "DELETE FROM edgeruntime_jobs WHERE id = -1",
    "DELETE FROM edgeruntime_failed_jobs WHERE id = -1",
    "DELETE FROM edgeruntime_cron_ticks WHERE id = -1",
    "DELETE FROM edgeruntime_cron_pauses WHERE cron = 'edgeruntime probe'",
)

#: Retention: history, succeeded jobs and finished ticks older than the cut-off (both dialects).
PRUNE_STATEMENTS = (
    "DELETE FROM edgeruntime_runs WHERE started_at < %s",
    "DELETE FROM edgeruntime_jobs WHERE status = 'succeeded' AND updated_at < %s",
    "DELETE FROM edgeruntime_cron_ticks WHERE status <> 'running' AND started_at < %s",
)
