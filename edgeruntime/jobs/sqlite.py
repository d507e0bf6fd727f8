"""The SQLite jobs store: the default, no set-up, safe for several processes on one host.

WAL journal, a 10 s busy timeout and `BEGIN IMMEDIATE` write transactions: a claim or a tick
insert takes the single writer lock, so two processes never lease the same job or tick. The
stdlib driver runs on one dedicated thread, off the event loop.

With a history size cap (`[jobs] retention_max_mb` / `retention_max_rows`) the file is switched to
`auto_vacuum = INCREMENTAL` (one VACUUM, once per file), so pages freed by deleting old history can
be given back to the file system: the file shrinks instead of only ceasing to grow.

A database file (and its directory) the store creates is private to the server's user: 0600
(SQLite gives its journals the same mode) in a 0700 directory.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import TypeVar

from edgeruntime.core.threads import give_way_to_event_loop
from edgeruntime.exceptions import ConfigError, StoreUnavailable
from edgeruntime.jobs import migrations
from edgeruntime.jobs.rows import (
    CRON_PAUSED,
    FAILED_COLUMNS,
    FIRST_OF_BATCH,
    JOB_COLUMNS,
    LEASE_COLUMNS,
    PRUNE_STATEMENTS,
    RUN_COLUMNS,
    TICK_COLUMNS,
    WRITE_PROBES,
    failed_from_row,
    job_from_row,
    lease_from_row,
    run_filters,
    run_from_row,
    run_row,
    tick_from_row,
)
from edgeruntime.jobs.store import (
    LEASE_EXPIRED,
    TICK_LEASE_EXPIRED,
    TRIM_TARGET,
    CronTick,
    FailedJob,
    Job,
    JobStatus,
    Outcome,
    QueueStats,
    Run,
    RunRow,
    TickStatus,
)

__all__ = ["SQLiteStore"]

logger = logging.getLogger("edgeruntime.jobs")

T = TypeVar("T")
BUSY_TIMEOUT_MS = 10_000
#: Ids per heartbeat statement: well under SQLite's limit on a statement's variables (999 before 3.32).
HEARTBEAT_CHUNK_IDS = 500

#: After a checkpoint the WAL file is cut back to this size: one large transaction (a trim, the
#: VACUUM that turns incremental vacuum on) would otherwise leave it as large as it once was.
JOURNAL_SIZE_LIMIT_BYTES = 8 * 1024 * 1024
#: Oldest history rows deleted per transaction when trimming, so the write lock is held briefly.
TRIM_CHUNK_ROWS = 10_000
#: Measure, delete, measure again: the bytes a record takes are learnt from the first round.
TRIM_ROUNDS = 6
#: Free pages given back per transaction (2 MiB of 4 KiB pages): each moves live pages from the
#: end of the file into the holes and holds the write lock meanwhile.
RELEASE_CHUNK_PAGES = 512
#: Free pages are given back once they are more than this share of the file (or the file is over
#: its cap); below it they are left for new records to reuse, which costs nothing.
RELEASE_FREE_SHARE = 0.25
AUTO_VACUUM_INCREMENTAL = 2


_FIRST_OF_BATCH = FIRST_OF_BATCH.replace("%s", "?")
_PAUSED = CRON_PAUSED.replace("%s", "?")
#: Running ticks whose lease ran out, failed: (error, finished_at, now). Reads the partial index of
#: running ticks (migration 6): `status = 'running'` must stay as the index has it.
_END_LOST_TICKS = (
    "UPDATE edgeruntime_cron_ticks SET status = 'failed', error = ?, finished_at = ?"
    " WHERE status = 'running' AND lease_until < ?"
)
#: What a batch of run rows can be refused for by its content; any other error is the store's.
_ROW_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError, sqlite3.InterfaceError)

#: Run rows per INSERT statement, at most (10 parameters each, well under SQLite's 32,766).
RUNS_PER_STATEMENT = 512

#: One multi-row INSERT per power of two up to RUNS_PER_STATEMENT: a batch of any size is written
#: with these few statements, so they stay prepared in the connection's statement cache. Preparing
#: an INSERT of n rows costs about as much as running it, and batch sizes vary from flush to flush.
_INSERT_RUNS = {
    n: f"INSERT INTO edgeruntime_runs ({RUN_COLUMNS}) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * n)
    for n in (1 << i for i in range(RUNS_PER_STATEMENT.bit_length()))
}


def _null(value: None) -> None:
    return value


# Binding None makes Python 3.11's sqlite3 look for an adapter, fail, and raise and clear an
# AttributeError on the way (~0.25 µs per NULL, and a run row has two). With this adapter found in
# the registry, None binds as NULL just as before, at a third of the cost. Process-wide but
# behaviour-neutral; an adapter for None registered before this one is kept.
if (type(None), sqlite3.PrepareProtocol) not in sqlite3.adapters:
    sqlite3.register_adapter(type(None), _null)


def _enter_wal(conn: sqlite3.Connection) -> str:
    """Switch to the WAL journal, waiting out other processes doing the same (up to the busy timeout);
    returns the journal mode SQLite answers, which is the old one where WAL cannot be used.

    Changing the journal mode of a new file needs it to itself, and SQLite answers "database is
    locked" at once, without its busy handler, while another connection holds it: instances
    starting together on a new file would otherwise fail at random.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class SQLiteStore:
    """The jobs store on one SQLite file (see the module docstring)."""

    def __init__(self, path: Path, url: str | None = None, *, announce: bool = True) -> None:
        """`announce=False`: a journal mode other than WAL is not said (another process says it)."""
        self.path = path
        self.url = url or f"sqlite:///{path}"
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="edgeruntime-sqlite", initializer=give_way_to_event_loop
        )
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        #: Whether the switch to incremental vacuum was tried (once per process, even if it failed).
        self._vacuum_tried = False
        self._over_cap_logged = False
        #: Whether a journal mode other than WAL was said (once per store, not at each reconnection).
        self._mode_logged = not announce

    # -- plumbing ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self._create_private()
                conn = sqlite3.connect(
                    self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
                )
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                mode = _enter_wal(conn)
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT_BYTES}")
            except (OSError, sqlite3.Error) as exc:
                raise ConfigError(f"database {self.path}: {self._open_error(exc)}") from None
            if mode != "wal" and not self._mode_logged:
                self._mode_logged = True
                self._log_journal_mode(conn, mode)
            self._conn = conn
        return self._conn

    def _create_private(self) -> None:
        """Create the database's directory (0700) and file (0600) where they do not exist: under
        process isolation with the `uid` sandbox every function runs as another user, and the
        store holds every run and job payload. SQLite gives its -wal and -shm files the database
        file's mode. What exists already keeps its mode (a directory the user made)."""
        if self.path.name in ("", ":memory:"):
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except FileExistsError:
            pass

    def _open_error(self, exc: OSError | sqlite3.Error) -> str:
        # SQLite says "attempt to write a readonly database" when it is the directory that is read-only.
        if getattr(exc, "sqlite_errorname", None) == "SQLITE_READONLY_DIRECTORY":
            return (
                f"cannot use it: its directory {self.path.parent} is not writable"
                " (SQLite creates the database's -wal and -shm files beside it)"
            )
        return str(exc)

    def _log_journal_mode(self, conn: sqlite3.Connection, mode: str) -> None:
        """Say, once, that the database is not in WAL: the store works, worse than the docs say."""
        main_file = next((str(row[2]) for row in conn.execute("PRAGMA database_list") if row[1] == "main"), "")
        if not main_file:
            logger.warning(
                "jobs: database %s is held in memory (journal mode '%s', not WAL): its jobs, cron ticks and"
                " run history are lost when this process stops, and no other process sees them (the"
                " `edgeruntime jobs` and `cron` commands, other serving processes of --workers, which"
                " each fire every cron tick); give a file: sqlite:///path/to/edgeruntime.db",
                self.path,
                mode,
            )
            return
        logger.warning(
            "jobs: database %s: SQLite kept the '%s' journal mode, not WAL (its file system gives no"
            " shared memory for WAL's index): readers and the writer block each other, so with several"
            " processes on it a write may wait up to %.0f s or fail with 'database is locked';"
            " put the file on a local disk",
            self.path,
            mode,
            BUSY_TIMEOUT_MS / 1000,
        )

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            with self._lock:
                return fn(self._connect())

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    @contextmanager
    def _write(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """A write transaction, committed at the end of the block; rolled back when the block or the
        COMMIT fails, so the connection is never left in it (see `_roll_back`)."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            self._roll_back(conn)
            raise

    def _roll_back(self, conn: sqlite3.Connection) -> None:
        """End the transaction `conn` is in, if it still is; the error that ended it is the caller's.

        A COMMIT that fails with "database is locked" (without WAL it waits for the file's readers)
        leaves the transaction open, holding the file's write locks: every later write of this
        connection would fail, and other connections would wait on it. A statement that fails with
        an I/O error or a full disk may have rolled the transaction back itself: a ROLLBACK then
        fails with "cannot rollback - no transaction is active", which would replace that error.
        """
        if not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            # Closing the connection ends its transaction; the next call opens another.
            with suppress(sqlite3.Error):
                conn.close()
            if self._conn is conn:
                self._conn = None

    async def migrate(self) -> None:
        def run(conn: sqlite3.Connection) -> None:
            try:
                applied = {r[0] for r in conn.execute("SELECT version FROM edgeruntime_schema")}
            except sqlite3.OperationalError:  # a new database: no schema table yet
                applied = set()
            if applied and not migrations.statements("sqlite", applied):
                return  # up to date, as at every start but the first: no write lock needed
            with self._write(conn):
                conn.execute(migrations.SCHEMA_TABLE)
                applied = {r[0] for r in conn.execute("SELECT version FROM edgeruntime_schema")}
                for version, stmts in migrations.statements("sqlite", applied):
                    for stmt in stmts:
                        conn.execute(stmt)
                    conn.execute(
                        "INSERT INTO edgeruntime_schema (version, applied_at) VALUES (?, ?)",
                        (version, datetime.now(UTC).isoformat()),
                    )

        try:
            await self._run(run)
        except sqlite3.Error as exc:
            raise ConfigError(f"database {self.path}: cannot create or upgrade its schema: {exc}") from None

    async def check_writable(self) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in WRITE_PROBES:
                    conn.execute(stmt)
            finally:
                self._roll_back(conn)

        try:
            await self._run(run)
        except sqlite3.Error as exc:
            raise ConfigError(f"database {self.path}: cannot write to it: {exc}") from None

    async def close(self) -> None:
        def run() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, run)
        self._executor.shutdown(wait=True)

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
        def run(conn: sqlite3.Connection) -> int:
            with self._write(conn):
                if idempotency_key is not None:
                    row = conn.execute(
                        "SELECT id FROM edgeruntime_jobs WHERE idempotency_key = ?", (idempotency_key,)
                    ).fetchone()
                    if row is not None:
                        return int(row[0])
                cur = conn.execute(
                    "INSERT INTO edgeruntime_jobs (function, payload, status, max_attempts, run_at,"
                    " idempotency_key, created_at, updated_at) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?)",
                    (function, payload, max_attempts, run_at, idempotency_key, now, now),
                )
                return int(cur.lastrowid or 0)

        try:
            return await self._run(run)
        except _ROW_ERRORS:
            raise
        except sqlite3.Error as exc:  # locked, read-only, disk I/O error or full: the caller may retry
            raise StoreUnavailable(f"enqueue: database {self.path}: {exc}") from exc
        except ConfigError as exc:  # the file could not be opened again
            raise StoreUnavailable(f"enqueue: {exc}") from exc

    async def claim(self, worker_id: str, limit: int, *, now: float, lease_sec: float) -> list[Job]:
        def run(conn: sqlite3.Connection) -> list[Job]:
            with self._write(conn):
                # A cron tick whose instance stopped or hung while running it is ended, by whichever
                # instance polls first.
                conn.execute(_END_LOST_TICKS, (TICK_LEASE_EXPIRED, now, now))
                # A job whose lease expired on its last attempt (its instance stopped or hung while
                # running it) is failed, as `finish` fails a last attempt, never delivered again.
                conn.execute(
                    "INSERT INTO edgeruntime_failed_jobs (job_id, function, payload, attempts, error,"
                    " http_status, response, failed_at) SELECT id, function, payload, attempts, ?, NULL, NULL, ?"
                    " FROM edgeruntime_jobs WHERE status = 'running' AND lease_until < ? AND attempts >= max_attempts"
                    " ORDER BY id",
                    (LEASE_EXPIRED, now, now),
                )
                conn.execute(
                    "UPDATE edgeruntime_jobs SET status = 'failed', lease_until = NULL, last_error = ?,"
                    " last_status = NULL, last_response = NULL, updated_at = ?"
                    " WHERE status = 'running' AND lease_until < ? AND attempts >= max_attempts",
                    (LEASE_EXPIRED, now, now),
                )
                rows = conn.execute(
                    "UPDATE edgeruntime_jobs SET status = 'running', attempts = attempts + 1, worker_id = ?,"
                    " lease_until = ?, updated_at = ? WHERE id IN ("
                    " SELECT id FROM edgeruntime_jobs WHERE status = 'queued' AND run_at <= ?"
                    " UNION ALL SELECT id FROM edgeruntime_jobs WHERE status = 'running' AND lease_until < ?"
                    " AND attempts < max_attempts LIMIT ?)"
                    f" RETURNING {JOB_COLUMNS}",
                    (worker_id, now + lease_sec, now, now, now, limit),
                ).fetchall()
            return sorted((job_from_row(r) for r in rows), key=lambda j: j.id)

        return await self._run(run)

    async def heartbeat(
        self,
        worker_id: str,
        *,
        job_ids: Collection[int],
        tick_ids: Collection[int],
        now: float,
        lease_sec: float,
    ) -> int:
        jobs, ticks = sorted(set(job_ids)), sorted(set(tick_ids))
        if not jobs and not ticks:
            return 0

        def run(conn: sqlite3.Connection) -> int:
            renewed = 0
            with self._write(conn):
                # In chunks: a statement takes at most SQLITE_MAX_VARIABLE_NUMBER (999 before 3.32) values.
                for i in range(0, len(jobs), HEARTBEAT_CHUNK_IDS):
                    chunk = jobs[i : i + HEARTBEAT_CHUNK_IDS]
                    cur = conn.execute(
                        "UPDATE edgeruntime_jobs SET lease_until = ?"
                        f" WHERE id IN ({', '.join('?' * len(chunk))}) AND worker_id = ? AND status = 'running'",
                        (now + lease_sec, *chunk, worker_id),
                    )
                    renewed += cur.rowcount
                for i in range(0, len(ticks), HEARTBEAT_CHUNK_IDS):
                    chunk = ticks[i : i + HEARTBEAT_CHUNK_IDS]
                    conn.execute(
                        "UPDATE edgeruntime_cron_ticks SET lease_until = ?"
                        f" WHERE id IN ({', '.join('?' * len(chunk))}) AND instance = ? AND status = 'running'",
                        (now + lease_sec, *chunk, worker_id),
                    )
            return renewed

        return await self._run(run)

    async def finish(self, outcomes: Sequence[Outcome], *, now: float) -> int:
        def run(conn: sqlite3.Connection) -> int:
            applied = 0
            with self._write(conn):
                for o in outcomes:
                    if o.ok:
                        cur = conn.execute(
                            "UPDATE edgeruntime_jobs SET status = 'succeeded', lease_until = NULL, last_status = ?,"
                            " updated_at = ? WHERE id = ? AND attempts = ? AND status = 'running'",
                            (o.http_status, now, o.job_id, o.attempt),
                        )
                    elif o.retry_at is not None:
                        cur = conn.execute(
                            "UPDATE edgeruntime_jobs SET status = 'queued', run_at = ?, lease_until = NULL,"
                            " worker_id = NULL, last_error = ?, last_status = ?, last_response = ?, updated_at = ?"
                            " WHERE id = ? AND attempts = ? AND status = 'running'",
                            (o.retry_at, o.error, o.http_status, o.response, now, o.job_id, o.attempt),
                        )
                    else:
                        cur = conn.execute(
                            "UPDATE edgeruntime_jobs SET status = 'failed', lease_until = NULL, last_error = ?,"
                            " last_status = ?, last_response = ?, updated_at = ?"
                            " WHERE id = ? AND attempts = ? AND status = 'running'",
                            (o.error, o.http_status, o.response, now, o.job_id, o.attempt),
                        )
                        if cur.rowcount:
                            conn.execute(
                                "INSERT INTO edgeruntime_failed_jobs (job_id, function, payload, attempts, error,"
                                " http_status, response, failed_at) SELECT id, function, payload, attempts, ?, ?, ?, ?"
                                " FROM edgeruntime_jobs WHERE id = ?",
                                (o.error, o.http_status, o.response, now, o.job_id),
                            )
                    applied += cur.rowcount
            return applied

        return await self._run(run)

    async def jobs(self, status: JobStatus | None = None, limit: int = 100) -> list[Job]:
        def run(conn: sqlite3.Connection) -> list[Job]:
            where, args = ("WHERE status = ?", [str(status)]) if status else ("", [])
            rows = conn.execute(
                f"SELECT {JOB_COLUMNS} FROM edgeruntime_jobs {where} ORDER BY id DESC LIMIT ?", (*args, limit)
            ).fetchall()
            return [job_from_row(r) for r in rows]

        return await self._run(run)

    async def count_jobs(self) -> dict[str, int]:
        def run(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute("SELECT status, COUNT(*) FROM edgeruntime_jobs GROUP BY status").fetchall()
            return {str(r[0]): int(r[1]) for r in rows}

        return await self._run(run)

    async def failed_jobs(self, limit: int = 100) -> list[FailedJob]:
        def run(conn: sqlite3.Connection) -> list[FailedJob]:
            rows = conn.execute(
                f"SELECT {FAILED_COLUMNS} FROM edgeruntime_failed_jobs ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
            return [failed_from_row(r) for r in rows]

        return await self._run(run)

    async def retry_failed(self, failed_id: int, *, now: float) -> int:
        def run(conn: sqlite3.Connection) -> int:
            with self._write(conn):
                row = conn.execute(
                    "SELECT f.function, f.payload, j.max_attempts, f.retried_as FROM edgeruntime_failed_jobs f"
                    " LEFT JOIN edgeruntime_jobs j ON j.id = f.job_id WHERE f.id = ?",
                    (failed_id,),
                ).fetchone()
                if row is None:
                    raise KeyError(failed_id)
                if row[3] is not None:  # retried already (by another instance, or just before)
                    return int(row[3])
                cur = conn.execute(
                    "INSERT INTO edgeruntime_jobs (function, payload, status, max_attempts, run_at, created_at,"
                    " updated_at) VALUES (?, ?, 'queued', ?, ?, ?, ?)",
                    (row[0], row[1], row[2] or 1, now, now, now),
                )
                new_id = int(cur.lastrowid or 0)
                conn.execute("UPDATE edgeruntime_failed_jobs SET retried_as = ? WHERE id = ?", (new_id, failed_id))
                return new_id

        return await self._run(run)

    async def failed_job(self, failed_id: int) -> FailedJob | None:
        def run(conn: sqlite3.Connection) -> FailedJob | None:
            row = conn.execute(
                f"SELECT {FAILED_COLUMNS} FROM edgeruntime_failed_jobs WHERE id = ?", (failed_id,)
            ).fetchone()
            return None if row is None else failed_from_row(row)

        return await self._run(run)

    async def delete_failed(self, failed_id: int) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            with self._write(conn):
                return conn.execute("DELETE FROM edgeruntime_failed_jobs WHERE id = ?", (failed_id,)).rowcount > 0

        return await self._run(run)

    async def job(self, job_id: int) -> Job | None:
        def run(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(f"SELECT {JOB_COLUMNS} FROM edgeruntime_jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else job_from_row(row)

        return await self._run(run)

    async def queue_stats(self, limit: int = 100) -> QueueStats:
        def run(conn: sqlite3.Connection) -> QueueStats:
            counts = {
                str(r[0]): int(r[1])
                for r in conn.execute("SELECT status, COUNT(*) FROM edgeruntime_jobs GROUP BY status")
            }
            oldest = conn.execute("SELECT MIN(created_at) FROM edgeruntime_jobs WHERE status = 'queued'").fetchone()
            leases = conn.execute(
                f"SELECT {LEASE_COLUMNS} FROM edgeruntime_jobs WHERE status = 'running' ORDER BY updated_at LIMIT ?",
                (limit,),
            ).fetchall()
            return QueueStats(counts, oldest[0], tuple(lease_from_row(r) for r in leases))

        return await self._run(run)

    # -- cron ----------------------------------------------------------------------------

    async def paused_crons(self) -> dict[str, float]:
        def run(conn: sqlite3.Connection) -> dict[str, float]:
            return {str(r[0]): float(r[1]) for r in conn.execute("SELECT cron, paused_at FROM edgeruntime_cron_pauses")}

        return await self._run(run)

    async def set_cron_paused(self, cron: str, paused: bool, *, now: float) -> None:
        def run(conn: sqlite3.Connection) -> None:
            with self._write(conn):
                if paused:
                    conn.execute(
                        "INSERT INTO edgeruntime_cron_pauses (cron, paused_at) VALUES (?, ?)"
                        " ON CONFLICT (cron) DO NOTHING",
                        (cron, now),
                    )
                else:
                    conn.execute("DELETE FROM edgeruntime_cron_pauses WHERE cron = ?", (cron,))

        await self._run(run)

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
        def run(conn: sqlite3.Connection) -> CronTick | None:
            with self._write(conn):
                # A run of this job whose instance stopped or hung is ended (as `claim` ends it).
                conn.execute(_END_LOST_TICKS + " AND cron = ?", (TICK_LEASE_EXPIRED, now, now, cron))
                # Under the write lock, as the pause is written: it is before this claim or after.
                if unless_paused and conn.execute(_PAUSED, (cron,)).fetchone() is not None:
                    return None
                status = TickStatus.RUNNING
                if skip_overlap:
                    busy = conn.execute(
                        "SELECT 1 FROM edgeruntime_cron_ticks WHERE cron = ? AND status = 'running'"
                        " AND lease_until > ? LIMIT 1",
                        (cron, now),
                    ).fetchone()
                    if busy is not None:
                        status = TickStatus.SKIPPED
                finished = now if status is TickStatus.SKIPPED else None
                row = conn.execute(
                    "INSERT INTO edgeruntime_cron_ticks (cron, tick_key, scheduled_for, trigger, status, instance,"
                    " started_at, finished_at, lease_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    f" ON CONFLICT (cron, tick_key) DO NOTHING RETURNING {TICK_COLUMNS}",
                    (cron, key, scheduled_for, trigger, str(status), instance, now, finished, now + lease_sec),
                ).fetchone()
                return None if row is None else tick_from_row(row)

        return await self._run(run)

    async def finish_tick(
        self, tick_id: int, status: TickStatus, http_status: int | None, error: str | None, *, now: float
    ) -> None:
        def run(conn: sqlite3.Connection) -> None:
            with self._write(conn):
                conn.execute(
                    "UPDATE edgeruntime_cron_ticks SET status = ?, http_status = ?, error = ?, finished_at = ?"
                    " WHERE id = ?",
                    (str(status), http_status, error, now, tick_id),
                )

        await self._run(run)

    async def ticks(self, cron: str | None = None, limit: int = 100) -> list[CronTick]:
        def run(conn: sqlite3.Connection) -> list[CronTick]:
            where, args = ("WHERE cron = ?", [cron]) if cron else ("", [])
            rows = conn.execute(
                f"SELECT {TICK_COLUMNS} FROM edgeruntime_cron_ticks {where} ORDER BY id DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
            return [tick_from_row(r) for r in rows]

        return await self._run(run)

    # -- run history ---------------------------------------------------------------------

    async def record_runs(self, runs: Sequence[Run]) -> None:
        await self.record_run_rows([run_row(r) for r in runs])

    async def record_run_rows(self, rows: Sequence[RunRow], *, batch_id: str | None = None) -> int:
        if not rows:
            return 0

        def run(conn: sqlite3.Connection) -> int:
            # Multi-row INSERTs rather than executemany: executemany gives the GIL up and takes it
            # back for every row, which stalls a busy event loop thread far more than the insert costs.
            with self._write(conn):
                start, total = 0, len(rows)
                if batch_id is not None:
                    if not conn.execute(_FIRST_OF_BATCH, (*rows[0], batch_id)).rowcount:
                        return 0  # written before
                    start = 1
                while start < total:
                    n = min(RUNS_PER_STATEMENT, 1 << ((total - start).bit_length() - 1))
                    conn.execute(_INSERT_RUNS[n], list(chain.from_iterable(rows[start : start + n])))
                    start += n
            return total

        try:
            return await self._run(run)
        except _ROW_ERRORS:
            raise
        except sqlite3.Error as exc:  # locked, read-only, disk I/O error or full, malformed
            raise StoreUnavailable(f"database {self.path}: {exc}") from exc
        except ConfigError as exc:  # the file could not be opened again
            raise StoreUnavailable(str(exc)) from exc

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
        where, args = run_filters(function, kind, trigger, status, execution_ids)

        def run(conn: sqlite3.Connection) -> list[Run]:
            rows = conn.execute(
                f"SELECT {RUN_COLUMNS} FROM edgeruntime_runs {where.replace('%s', '?')} ORDER BY id DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
            return [run_from_row(r) for r in rows]

        return await self._run(run)

    async def prune(self, *, before: float) -> int:
        def run(conn: sqlite3.Connection) -> int:
            with self._write(conn):
                total = 0
                for stmt in PRUNE_STATEMENTS:
                    total += conn.execute(stmt.replace("%s", "?"), (before,)).rowcount
                return total

        return await self._run(run)

    # -- history size cap ----------------------------------------------------------------

    async def trim_history(self, *, max_rows: int | None = None, max_mb: float | None = None) -> int:
        max_bytes = None if max_mb is None else int(max_mb * 1024 * 1024)
        deleted = 0
        if max_rows is not None:
            first, last = await self._run(_run_ids)
            if last - first + 1 > max_rows:
                deleted += await self._delete_runs_through(last - int(max_rows * TRIM_TARGET))
        if max_bytes is not None:
            deleted += await self._trim_to_bytes(max_bytes)
        if (max_rows is not None or max_bytes is not None) and not self._vacuum_tried:
            self._vacuum_tried = True
            await self._switch_to_incremental_vacuum()
        await self._release_free_pages(max_bytes)
        return deleted

    async def _trim_to_bytes(self, max_bytes: int) -> int:
        deleted = 0
        per_row: float | None = None
        for _ in range(TRIM_ROUNDS):
            before = await self._run(_file_size)
            first, last = await self._run(_run_ids)
            if before.used <= max_bytes:
                self._over_cap_logged = False
                return deleted
            if last < first:
                self._history_gone_over_cap(before, max_bytes)
                return deleted
            # The first guess (the whole file over the records) is high, so it deletes too few;
            # from then on, what the last deletion freed per record.
            if per_row is None:
                per_row = before.used / (last - first + 1)
            count = max(1, math.ceil((before.used - max_bytes * TRIM_TARGET) / per_row))
            gone = await self._delete_runs_through(first + count - 1)
            deleted += gone
            after = await self._run(_file_size)
            if gone and after.used < before.used:
                per_row = (before.used - after.used) / gone
        return deleted  # the next check goes on

    def _history_gone_over_cap(self, size: _FileSize, max_bytes: int) -> None:
        if not self._over_cap_logged:
            self._over_cap_logged = True
            logger.warning(
                "jobs: database %s holds %.1f MiB, over retention_max_mb (%.1f MiB), with no run history left"
                " to delete: jobs, failed jobs and cron ticks take the rest",
                self.path,
                size.used / 1048576,
                max_bytes / 1048576,
            )

    async def _delete_runs_through(self, last_id: int) -> int:
        """Delete the history records with ids up to `last_id`, a chunk per transaction."""
        deleted = 0

        def chunk(conn: sqlite3.Connection) -> int:
            with self._write(conn):
                row = conn.execute("SELECT MIN(id) FROM edgeruntime_runs").fetchone()
                if row[0] is None or row[0] > last_id:
                    return 0
                upto = min(last_id, row[0] + TRIM_CHUNK_ROWS - 1)
                return conn.execute("DELETE FROM edgeruntime_runs WHERE id <= ?", (upto,)).rowcount

        while gone := await self._run(chunk):
            deleted += gone
        return deleted

    async def _switch_to_incremental_vacuum(self) -> None:
        """Turn `auto_vacuum = INCREMENTAL` on; on a file made without it that takes one VACUUM.

        The VACUUM rewrites the whole file (after the trim, so the capped size) through the WAL,
        needs that much free disk space for a moment, and holds the write lock meanwhile.
        """

        def mode(conn: sqlite3.Connection) -> int:
            return int(conn.execute("PRAGMA auto_vacuum").fetchone()[0])

        if await self._run(mode) == AUTO_VACUUM_INCREMENTAL:
            return
        size = await self._run(_file_size)
        logger.warning(
            "jobs: database %s: switching to incremental vacuum so the history cap can shrink the file"
            " (one VACUUM of %.1f MiB, once per file)",
            self.path,
            size.used / 1048576,
        )
        started = time.monotonic()

        def vacuum(conn: sqlite3.Connection) -> None:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        try:
            await self._run(vacuum)
        except sqlite3.Error as exc:
            logger.error(
                "jobs: database %s: VACUUM failed (%s); old history is still deleted to the cap, but the"
                " file does not shrink",
                self.path,
                exc,
            )
            return
        size = await self._run(_file_size)
        logger.warning(
            "jobs: database %s: incremental vacuum on after %.1f s; the file is %.1f MiB",
            self.path,
            time.monotonic() - started,
            size.pages * size.page_size / 1048576,
        )

    async def _release_free_pages(self, max_bytes: int | None) -> int:
        """Give free pages back to the file system, if the file allows it and enough are free."""

        def plan(conn: sqlite3.Connection) -> int:
            if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) != AUTO_VACUUM_INCREMENTAL:
                return 0
            size = _file_size(conn)
            over = max_bytes is not None and size.pages * size.page_size > max_bytes
            return size.free if size.free and (over or size.free > size.pages * RELEASE_FREE_SHARE) else 0

        def release(conn: sqlite3.Connection) -> None:
            # Not execute(): the pragma yields an empty row per page freed, and the driver stops
            # stepping a statement with no columns after the first, so it would free one page.
            conn.executescript(f"PRAGMA incremental_vacuum({RELEASE_CHUNK_PAGES});")

        todo = await self._run(plan)
        released = 0
        while released < todo:
            await self._run(release)
            released += RELEASE_CHUNK_PAGES
        if todo:
            # The file shrinks when the WAL is checkpointed: now, not at the next automatic one.
            await self._run(lambda conn: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())
        return todo


@dataclass(frozen=True)
class _FileSize:
    page_size: int
    pages: int
    free: int

    @property
    def used(self) -> int:
        """Bytes in pages holding data (free pages are reused before the file grows)."""
        return (self.pages - self.free) * self.page_size


def _file_size(conn: sqlite3.Connection) -> _FileSize:
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return _FileSize(int(page_size), int(pages), int(free))


def _run_ids(conn: sqlite3.Connection) -> tuple[int, int]:
    """The first and last history record ids; (0, -1) when there are none."""
    # Two subqueries: SQLite reads one end of the primary key for a lone MIN or MAX, but scans
    # the whole table for both in one SELECT.
    first, last = conn.execute(
        "SELECT (SELECT MIN(id) FROM edgeruntime_runs), (SELECT MAX(id) FROM edgeruntime_runs)"
    ).fetchone()
    return (0, -1) if first is None else (int(first), int(last))
