"""Versioned schema of the jobs store, applied at start on both backends.

Each migration is a list of statements per dialect; `edgeruntime_schema` records the versions
applied. A new version is appended here, never edited in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["MIGRATIONS", "Migration", "statements"]

Dialect = Literal["sqlite", "postgres"]


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


def _both(template: str) -> tuple[str, str]:
    """One CREATE TABLE for both dialects: `{pk}` is the auto-increment id column."""
    return (
        template.format(pk="id INTEGER PRIMARY KEY AUTOINCREMENT", real="REAL"),
        template.format(pk="id BIGSERIAL PRIMARY KEY", real="DOUBLE PRECISION"),
    )


_TABLES = [
    _both(
        """CREATE TABLE IF NOT EXISTS edgeruntime_jobs (
            {pk},
            function TEXT NOT NULL,
            payload TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL,
            run_at {real} NOT NULL,
            lease_until {real},
            worker_id TEXT,
            idempotency_key TEXT UNIQUE,
            last_error TEXT,
            last_status INTEGER,
            last_response TEXT,
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL
        )"""
    ),
    _both(
        """CREATE TABLE IF NOT EXISTS edgeruntime_failed_jobs (
            {pk},
            job_id BIGINT NOT NULL,
            function TEXT NOT NULL,
            payload TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            error TEXT,
            http_status INTEGER,
            response TEXT,
            failed_at {real} NOT NULL,
            retried_as BIGINT
        )"""
    ),
    _both(
        """CREATE TABLE IF NOT EXISTS edgeruntime_cron_ticks (
            {pk},
            cron TEXT NOT NULL,
            tick_key TEXT NOT NULL,
            scheduled_for {real} NOT NULL,
            trigger TEXT NOT NULL,
            status TEXT NOT NULL,
            instance TEXT NOT NULL,
            http_status INTEGER,
            error TEXT,
            started_at {real} NOT NULL,
            finished_at {real},
            UNIQUE (cron, tick_key)
        )"""
    ),
    _both(
        """CREATE TABLE IF NOT EXISTS edgeruntime_runs (
            {pk},
            kind TEXT NOT NULL,
            function TEXT NOT NULL,
            trigger TEXT NOT NULL,
            execution_id TEXT NOT NULL,
            status TEXT NOT NULL,
            http_status INTEGER,
            started_at {real} NOT NULL,
            duration_ms {real},
            error TEXT
        )"""
    ),
]

_INDEXES = (
    "CREATE INDEX IF NOT EXISTS edgeruntime_jobs_due ON edgeruntime_jobs (status, run_at)",
    "CREATE INDEX IF NOT EXISTS edgeruntime_jobs_lease ON edgeruntime_jobs (status, lease_until)",
    "CREATE INDEX IF NOT EXISTS edgeruntime_cron_ticks_running ON edgeruntime_cron_ticks (cron, status)",
    "CREATE INDEX IF NOT EXISTS edgeruntime_runs_started ON edgeruntime_runs (started_at)",
)

_TICK_LEASES = (
    "CREATE INDEX IF NOT EXISTS edgeruntime_cron_ticks_lease ON edgeruntime_cron_ticks (lease_until)"
    " WHERE status = 'running'"
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "jobs, failed jobs, cron ticks, run history",
        tuple(t[0] for t in _TABLES) + _INDEXES,
        tuple(t[1] for t in _TABLES) + _INDEXES,
    ),
    Migration(
        2,
        "cron tick leases: a run counts as going only while its instance heartbeats",
        ("ALTER TABLE edgeruntime_cron_ticks ADD COLUMN lease_until REAL",),
        ("ALTER TABLE edgeruntime_cron_ticks ADD COLUMN IF NOT EXISTS lease_until DOUBLE PRECISION",),
    ),
    # Version 3, not 2: version 2 (cron tick leases) comes from the jobs branch, merged first.
    Migration(
        3,
        "wait_until task names, paused cron jobs, run history lookups by execution",
        (
            "ALTER TABLE edgeruntime_runs ADD COLUMN name TEXT",
            "CREATE TABLE IF NOT EXISTS edgeruntime_cron_pauses (cron TEXT PRIMARY KEY, paused_at REAL NOT NULL)",
            "CREATE INDEX IF NOT EXISTS edgeruntime_runs_execution ON edgeruntime_runs (execution_id)",
        ),
        (
            "ALTER TABLE edgeruntime_runs ADD COLUMN IF NOT EXISTS name TEXT",
            "CREATE TABLE IF NOT EXISTS edgeruntime_cron_pauses (cron TEXT PRIMARY KEY,"
            " paused_at DOUBLE PRECISION NOT NULL)",
            "CREATE INDEX IF NOT EXISTS edgeruntime_runs_execution ON edgeruntime_runs (execution_id)",
        ),
    ),
    # Every invocation writes a run row: an index costs each of them (~2 µs a row on SQLite, on
    # one core), while this one served only the hourly prune, which may as well scan.
    Migration(
        4,
        "run history without the started_at index (runs are listed by id; only pruning filtered on it)",
        ("DROP INDEX IF EXISTS edgeruntime_runs_started",),
        ("DROP INDEX IF EXISTS edgeruntime_runs_started",),
    ),
    # The first row of each batch the run history writes carries the batch's id, so a batch
    # written again after a lost connection (its COMMIT may have landed) is not written twice.
    # Partial: the other rows are NULL and cost the index nothing.
    Migration(
        5,
        "run history batch ids: a batch retried after a lost connection is written once",
        (
            "ALTER TABLE edgeruntime_runs ADD COLUMN batch TEXT",
            "CREATE UNIQUE INDEX IF NOT EXISTS edgeruntime_runs_batch ON edgeruntime_runs (batch)"
            " WHERE batch IS NOT NULL",
        ),
        (
            "ALTER TABLE edgeruntime_runs ADD COLUMN IF NOT EXISTS batch TEXT",
            "CREATE UNIQUE INDEX IF NOT EXISTS edgeruntime_runs_batch ON edgeruntime_runs (batch)"
            " WHERE batch IS NOT NULL",
        ),
    ),
    # Every instance's queue poll ends the running ticks whose lease ran out: with this index it
    # reads the few running ticks, not the whole table (a 1-second cron job keeps 600,000 a week).
    Migration(
        6,
        "running cron ticks by lease: a tick whose instance died is ended once its lease runs out",
        (_TICK_LEASES,),
        (_TICK_LEASES,),
    ),
)

SCHEMA_TABLE = "CREATE TABLE IF NOT EXISTS edgeruntime_schema (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"


def statements(dialect: Dialect, applied: set[int]) -> list[tuple[int, tuple[str, ...]]]:
    """The migrations not yet applied, in order, as (version, statements)."""
    return [(m.version, getattr(m, dialect)) for m in MIGRATIONS if m.version not in applied]
