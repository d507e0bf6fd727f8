"""The PostgreSQL jobs store: several `edgeruntime serve` instances share one database.

Claims use `FOR UPDATE SKIP LOCKED` so instances never wait on each other's rows; a cron tick is
an insert unique on (cron, tick key), so each tick fires once across all instances. Needs
psycopg 3 (`pip install 'edgeruntime[postgres]'`), imported only when a postgresql:// URL is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from edgeruntime.exceptions import ConfigError, StoreUnavailable
from edgeruntime.jobs import migrations
from edgeruntime.jobs.clock import ClockOffset
from edgeruntime.jobs.outage import describe
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
    redact_url,
)

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresStore"]

POOL_SIZE = 4
#: Serialises schema migrations of instances starting at the same moment.
MIGRATION_LOCK = 0x6564_6765
#: Serialises the claims of one cron job's ticks, and a claim with a pause of the job.
_CRON_LOCK = "SELECT pg_advisory_xact_lock(hashtext('edgeruntime-cron:' || %s))"
#: Running ticks whose lease ran out (of cron job %(cron)s, or of every one when it is NULL), failed.
#: Reads the partial index of running ticks (migration 6): `status = 'running'` must stay as the
#: index has it. SKIP LOCKED: a tick being renewed or finished right now is left to the next look.
_END_LOST_TICKS = (
    "UPDATE edgeruntime_cron_ticks SET status = 'failed', error = %(tick_error)s, finished_at = %(now)s"
    " WHERE id IN (SELECT id FROM edgeruntime_cron_ticks WHERE status = 'running' AND lease_until < %(now)s"
    " AND (%(cron)s::text IS NULL OR cron = %(cron)s) FOR UPDATE SKIP LOCKED)"
)
#: Run rows go in with one binary COPY per batch: of the ways psycopg offers it costs the client
#: the least CPU per row (a multi-row INSERT is re-parsed by psycopg every time, executemany is a
#: Python loop per row). The types are RUN_COLUMNS' in the schema.
COPY_RUNS = f"COPY edgeruntime_runs ({RUN_COLUMNS}) FROM STDIN (FORMAT BINARY)"
RUN_COLUMN_TYPES = ("text", "text", "text", "text", "text", "float8", "float8", "int4", "text", "text")
#: Oldest history rows deleted per statement when trimming.
TRIM_CHUNK_ROWS = 50_000
#: The bytes one history record takes beyond its heap tuple (`pg_column_size` of the row): its line
#: pointer (4) and its primary key index entry (8 + 8, and 4 for the index's line pointer), plus
#: the execution id index entry's fixed part (8 + 4, and alignment); its key's length is added.
#: Checked against pg_total_relation_size of a freshly written table: within a few per cent.
ROW_OVERHEAD_BYTES = 4 + 24 + 16
#: Records sampled (the newest) to learn how many bytes one takes.
SIZE_SAMPLE_ROWS = 1000
#: Readings of the server's clock per offset measurement; the one with the shortest round trip counts.
CLOCK_SAMPLES = 3


def _storable(text: str | None) -> str | None:
    """`text` from a function (a response body, an error message) as a Postgres text column holds it.

    Postgres text cannot contain NUL, and psycopg refuses the whole statement over one (DataError):
    each NUL becomes U+FFFD, the character the response decoding already puts for bytes that are
    not UTF-8, so a binary body reads the same either way. Everything else is kept as it is (SQLite
    stores NUL, and keeps it).
    """
    return text.replace("\x00", "\ufffd") if text is not None and "\x00" in text else text


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise ConfigError("a postgresql:// database URL needs psycopg 3: pip install 'edgeruntime[postgres]'") from None
    return psycopg


class PostgresStore:
    """The jobs store on PostgreSQL (see the module docstring)."""

    def __init__(self, url: str, pool_size: int = POOL_SIZE) -> None:
        self.url = url
        self._psycopg = _import_psycopg()
        self._pool_size = pool_size
        self._idle: asyncio.Queue[psycopg.AsyncConnection[Any]] | None = None
        self._all: list[psycopg.AsyncConnection[Any]] = []
        self._opening = asyncio.Lock()
        #: Idle connections to test before use: one of their peers was just found broken.
        self._suspect: set[int] = set()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._idle is None:
            async with self._opening:
                if self._idle is None:
                    idle: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
                    for _ in range(self._pool_size):
                        try:
                            conn = await self._psycopg.AsyncConnection.connect(self.url, autocommit=True)
                        except self._psycopg.Error as exc:
                            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                            raise ConfigError(f"database {redact_url(self.url)}: {first}") from None
                        self._all.append(conn)
                        idle.put_nowait(conn)
                    self._idle = idle
        conn = await self._idle.get()
        try:
            if id(conn) in self._suspect:
                self._suspect.discard(id(conn))
                with contextlib.suppress(self._psycopg.Error):  # a failure marks it broken
                    await conn.execute("SELECT 1")
            if conn.broken or conn.closed:
                conn = await self._replace(conn)
            yield conn
        finally:
            if conn.broken:
                # A lost server (restart, network cut) broke the idle connections too; without a
                # test, each would fail one more operation after the server is back.
                self._suspect = {id(c) for c in self._all if c is not conn}
            self._idle.put_nowait(conn)

    async def _replace(self, old: psycopg.AsyncConnection[Any]) -> psycopg.AsyncConnection[Any]:
        new: psycopg.AsyncConnection[Any] = await self._psycopg.AsyncConnection.connect(self.url, autocommit=True)
        self._all = [new if c is old else c for c in self._all]
        return new

    async def migrate(self) -> None:
        try:
            await self._migrate()
        except self._psycopg.Error as exc:
            raise ConfigError(
                f"database {redact_url(self.url)}: cannot create or upgrade its schema: {describe(exc)}"
            ) from None

    async def _migrate(self) -> None:
        async with self._conn() as conn:
            # Up to date, as at every start but the first: nothing to write (a role that may
            # only read and write rows gets this far, and the write check says what it lacks).
            if await self._applied(conn) >= {m.version for m in migrations.MIGRATIONS}:
                return
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                await conn.execute(migrations.SCHEMA_TABLE)
                cur = await conn.execute("SELECT version FROM edgeruntime_schema")
                applied = {r[0] for r in await cur.fetchall()}
                for version, stmts in migrations.statements("postgres", applied):
                    for stmt in stmts:
                        await conn.execute(stmt)
                    await conn.execute(
                        "INSERT INTO edgeruntime_schema (version, applied_at) VALUES (%s, %s)",
                        (version, datetime.now(UTC).isoformat()),
                    )

    async def _applied(self, conn: psycopg.AsyncConnection[Any]) -> set[int]:
        """The versions applied; none when there is no schema table (checked without an error)."""
        cur = await conn.execute("SELECT to_regclass('edgeruntime_schema') IS NOT NULL")
        row = await cur.fetchone()
        if not (row and row[0]):
            return set()
        cur = await conn.execute("SELECT version FROM edgeruntime_schema")
        return {int(r[0]) for r in await cur.fetchall()}

    async def check_writable(self) -> None:
        try:
            async with self._conn() as conn:
                # A transaction rolled back: the probe rows are never seen, and an error inside
                # leaves the connection usable.
                async with conn.transaction(force_rollback=True):
                    for stmt in WRITE_PROBES:
                        await conn.execute(stmt)
        except self._psycopg.Error as exc:
            raise ConfigError(f"database {redact_url(self.url)}: cannot write to it: {describe(exc)}") from None

    async def clock_offset(self, now: Callable[[], float]) -> ClockOffset:
        """How far the clock `now` reads is from the database server's.

        Instances sharing the database write and compare leases and due times: this is how each
        one's jobs system follows the server's clock (`ServerClock`), and learns how far its
        host's clock is from it.
        """
        best: ClockOffset | None = None
        async with self._conn() as conn:
            for _ in range(CLOCK_SAMPLES):
                started = time.monotonic()
                local = now()
                cur = await conn.execute("SELECT extract(epoch FROM clock_timestamp())")
                row = await cur.fetchone()
                half_trip = (time.monotonic() - started) / 2
                assert row is not None
                # The server read its clock somewhere within the round trip: in its middle, give or take half.
                sample = ClockOffset(local + half_trip - float(row[0]), half_trip)
                if best is None or sample.error < best.error:
                    best = sample
        assert best is not None
        return best

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()
        self._all = []
        self._idle = None

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
        psycopg = self._psycopg
        try:
            return await self._enqueue(function, payload, run_at, max_attempts, idempotency_key, now)
        except (psycopg.DataError, psycopg.IntegrityError):
            raise  # this job cannot be written (a NUL in its function name or payload)
        except (psycopg.Error, ConfigError, OSError) as exc:  # as for run history: may work later
            raise StoreUnavailable(f"enqueue: database {redact_url(self.url)}: {describe(exc)}") from exc

    async def _enqueue(
        self, function: str, payload: str, run_at: float, max_attempts: int, idempotency_key: str | None, now: float
    ) -> int:
        async with self._conn() as conn:
            cur = await conn.execute(
                "INSERT INTO edgeruntime_jobs (function, payload, status, max_attempts, run_at, idempotency_key,"
                " created_at, updated_at) VALUES (%s, %s, 'queued', %s, %s, %s, %s, %s)"
                " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
                (function, payload, max_attempts, run_at, idempotency_key, now, now),
            )
            row = await cur.fetchone()
            if row is None:
                cur = await conn.execute(
                    "SELECT id FROM edgeruntime_jobs WHERE idempotency_key = %s", (idempotency_key,)
                )
                row = await cur.fetchone()
                assert row is not None
            return int(row[0])

    async def claim(self, worker_id: str, limit: int, *, now: float, lease_sec: float) -> list[Job]:
        async with self._conn() as conn, conn.transaction():
            # A job whose lease expired on its last attempt (its instance stopped or hung while
            # running it) is failed, as `finish` fails a last attempt, never delivered again. A cron
            # tick whose instance stopped or hung is ended, by whichever instance polls first (in
            # the same statement: one round trip per poll).
            await conn.execute(
                f"WITH lost AS ({_END_LOST_TICKS}),"
                " expired AS (SELECT id FROM edgeruntime_jobs WHERE status = 'running'"
                " AND lease_until < %(now)s AND attempts >= max_attempts ORDER BY id FOR UPDATE SKIP LOCKED),"
                " failed AS (UPDATE edgeruntime_jobs j SET status = 'failed', lease_until = NULL,"
                " last_error = %(error)s, last_status = NULL, last_response = NULL, updated_at = %(now)s"
                " FROM expired e WHERE j.id = e.id RETURNING j.id, j.function, j.payload, j.attempts)"
                " INSERT INTO edgeruntime_failed_jobs (job_id, function, payload, attempts, error, http_status,"
                " response, failed_at) SELECT id, function, payload, attempts, %(error)s, NULL, NULL, %(now)s"
                " FROM failed ORDER BY id",
                {"now": now, "error": LEASE_EXPIRED, "tick_error": TICK_LEASE_EXPIRED, "cron": None},
            )
            cur = await conn.execute(
                "WITH queued AS (SELECT id FROM edgeruntime_jobs WHERE status = 'queued' AND run_at <= %(now)s"
                " ORDER BY run_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED),"
                " expired AS (SELECT id FROM edgeruntime_jobs WHERE status = 'running' AND lease_until < %(now)s"
                " AND attempts < max_attempts LIMIT %(limit)s FOR UPDATE SKIP LOCKED),"
                " due AS (SELECT id FROM expired UNION ALL SELECT id FROM queued)"
                " UPDATE edgeruntime_jobs j SET status = 'running', attempts = attempts + 1, worker_id = %(w)s,"
                " lease_until = %(lease)s, updated_at = %(now)s"
                " FROM (SELECT id FROM due LIMIT %(limit)s) c WHERE j.id = c.id"
                f" RETURNING {', '.join('j.' + c.strip() for c in JOB_COLUMNS.split(','))}",
                {"now": now, "limit": limit, "w": worker_id, "lease": now + lease_sec},
            )
            rows = await cur.fetchall()
        return sorted((job_from_row(r) for r in rows), key=lambda j: j.id)

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
        renewed = 0
        async with self._conn() as conn:
            if jobs:
                cur = await conn.execute(
                    # SKIP LOCKED: rows being finished right now are left alone (never a deadlock with finish).
                    "UPDATE edgeruntime_jobs SET lease_until = %s WHERE id IN (SELECT id FROM edgeruntime_jobs"
                    " WHERE id = ANY(%s) AND worker_id = %s AND status = 'running' FOR UPDATE SKIP LOCKED)",
                    (now + lease_sec, jobs, worker_id),
                )
                renewed = cur.rowcount
            if ticks:
                await conn.execute(
                    "UPDATE edgeruntime_cron_ticks SET lease_until = %s"
                    " WHERE id = ANY(%s) AND instance = %s AND status = 'running'",
                    (now + lease_sec, ticks, worker_id),
                )
        return renewed

    async def finish(self, outcomes: Sequence[Outcome], *, now: float) -> int:
        ok = [o for o in outcomes if o.ok]
        applied = 0
        async with self._conn() as conn, conn.transaction():
            if ok:
                cur = await conn.execute(
                    "UPDATE edgeruntime_jobs j SET status = 'succeeded', lease_until = NULL, last_status = o.s,"
                    " updated_at = %s FROM (SELECT unnest(%s::bigint[]) AS id, unnest(%s::int[]) AS a,"
                    " unnest(%s::int[]) AS s) o WHERE j.id = o.id AND j.attempts = o.a AND j.status = 'running'",
                    (now, [o.job_id for o in ok], [o.attempt for o in ok], [o.http_status for o in ok]),
                )
                applied += cur.rowcount
            for o in outcomes:
                if o.ok:
                    continue
                error, response = _storable(o.error), _storable(o.response)
                if o.retry_at is not None:
                    cur = await conn.execute(
                        "UPDATE edgeruntime_jobs SET status = 'queued', run_at = %s, lease_until = NULL,"
                        " worker_id = NULL, last_error = %s, last_status = %s, last_response = %s, updated_at = %s"
                        " WHERE id = %s AND attempts = %s AND status = 'running'",
                        (o.retry_at, error, o.http_status, response, now, o.job_id, o.attempt),
                    )
                else:
                    cur = await conn.execute(
                        "UPDATE edgeruntime_jobs SET status = 'failed', lease_until = NULL, last_error = %s,"
                        " last_status = %s, last_response = %s, updated_at = %s"
                        " WHERE id = %s AND attempts = %s AND status = 'running'",
                        (error, o.http_status, response, now, o.job_id, o.attempt),
                    )
                    if cur.rowcount:
                        await conn.execute(
                            "INSERT INTO edgeruntime_failed_jobs (job_id, function, payload, attempts, error,"
                            " http_status, response, failed_at) SELECT id, function, payload, attempts, %s, %s, %s,"
                            " %s FROM edgeruntime_jobs WHERE id = %s",
                            (error, o.http_status, response, now, o.job_id),
                        )
                applied += cur.rowcount
        return applied

    async def jobs(self, status: JobStatus | None = None, limit: int = 100) -> list[Job]:
        where, args = ("WHERE status = %s", [str(status)]) if status else ("", [])
        async with self._conn() as conn:
            cur = await conn.execute(
                f"SELECT {JOB_COLUMNS} FROM edgeruntime_jobs {where} ORDER BY id DESC LIMIT %s",
                (*args, limit),
            )
            return [job_from_row(r) for r in await cur.fetchall()]

    async def count_jobs(self) -> dict[str, int]:
        async with self._conn() as conn:
            cur = await conn.execute("SELECT status, COUNT(*) FROM edgeruntime_jobs GROUP BY status")
            return {str(r[0]): int(r[1]) for r in await cur.fetchall()}

    async def failed_jobs(self, limit: int = 100) -> list[FailedJob]:
        async with self._conn() as conn:
            cur = await conn.execute(
                f"SELECT {FAILED_COLUMNS} FROM edgeruntime_failed_jobs ORDER BY id DESC LIMIT %s",
                (limit,),
            )
            return [failed_from_row(r) for r in await cur.fetchall()]

    async def retry_failed(self, failed_id: int, *, now: float) -> int:
        async with self._conn() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT f.function, f.payload, j.max_attempts, f.retried_as FROM edgeruntime_failed_jobs f"
                " LEFT JOIN edgeruntime_jobs j ON j.id = f.job_id WHERE f.id = %s FOR UPDATE OF f",
                (failed_id,),
            )
            row = await cur.fetchone()
            if row is None:
                raise KeyError(failed_id)
            if row[3] is not None:  # retried already (by another instance, or just before)
                return int(row[3])
            cur = await conn.execute(
                "INSERT INTO edgeruntime_jobs (function, payload, status, max_attempts, run_at, created_at,"
                " updated_at) VALUES (%s, %s, 'queued', %s, %s, %s, %s) RETURNING id",
                (row[0], row[1], row[2] or 1, now, now, now),
            )
            new = await cur.fetchone()
            assert new is not None
            await conn.execute("UPDATE edgeruntime_failed_jobs SET retried_as = %s WHERE id = %s", (new[0], failed_id))
            return int(new[0])

    async def failed_job(self, failed_id: int) -> FailedJob | None:
        async with self._conn() as conn:
            cur = await conn.execute(
                f"SELECT {FAILED_COLUMNS} FROM edgeruntime_failed_jobs WHERE id = %s", (failed_id,)
            )
            row = await cur.fetchone()
            return None if row is None else failed_from_row(row)

    async def delete_failed(self, failed_id: int) -> bool:
        async with self._conn() as conn:
            cur = await conn.execute("DELETE FROM edgeruntime_failed_jobs WHERE id = %s", (failed_id,))
            return cur.rowcount > 0

    async def job(self, job_id: int) -> Job | None:
        async with self._conn() as conn:
            cur = await conn.execute(f"SELECT {JOB_COLUMNS} FROM edgeruntime_jobs WHERE id = %s", (job_id,))
            row = await cur.fetchone()
            return None if row is None else job_from_row(row)

    async def queue_stats(self, limit: int = 100) -> QueueStats:
        async with self._conn() as conn:
            cur = await conn.execute("SELECT status, COUNT(*) FROM edgeruntime_jobs GROUP BY status")
            counts = {str(r[0]): int(r[1]) for r in await cur.fetchall()}
            cur = await conn.execute("SELECT MIN(created_at) FROM edgeruntime_jobs WHERE status = 'queued'")
            oldest = await cur.fetchone()
            cur = await conn.execute(
                f"SELECT {LEASE_COLUMNS} FROM edgeruntime_jobs WHERE status = 'running' ORDER BY updated_at LIMIT %s",
                (limit,),
            )
            leases = tuple(lease_from_row(r) for r in await cur.fetchall())
        return QueueStats(counts, oldest[0] if oldest else None, leases)

    # -- cron ----------------------------------------------------------------------------

    async def paused_crons(self) -> dict[str, float]:
        async with self._conn() as conn:
            cur = await conn.execute("SELECT cron, paused_at FROM edgeruntime_cron_pauses")
            return {str(r[0]): float(r[1]) for r in await cur.fetchall()}

    async def set_cron_paused(self, cron: str, paused: bool, *, now: float) -> None:
        async with self._conn() as conn, conn.transaction():
            if paused:
                # Waits for a tick of this cron being claimed (see `claim_tick`).
                await conn.execute(_CRON_LOCK, (cron,))
                await conn.execute(
                    "INSERT INTO edgeruntime_cron_pauses (cron, paused_at) VALUES (%s, %s)"
                    " ON CONFLICT (cron) DO NOTHING",
                    (cron, now),
                )
            else:
                await conn.execute("DELETE FROM edgeruntime_cron_pauses WHERE cron = %s", (cron,))

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
        async with self._conn() as conn, conn.transaction():
            if skip_overlap or unless_paused:
                # One claim of this cron at a time: two ticks claimed at once (a scheduled one and
                # "Run now", on two instances) would each miss the other's uncommitted running tick.
                # A pause takes the same lock, so it is written before this look or after the claim.
                await conn.execute(_CRON_LOCK, (cron,))
            # A run of this job whose instance stopped or hung is ended (as `claim` ends it).
            await conn.execute(_END_LOST_TICKS, {"now": now, "tick_error": TICK_LEASE_EXPIRED, "cron": cron})
            if unless_paused:
                cur = await conn.execute(CRON_PAUSED, (cron,))
                if await cur.fetchone() is not None:
                    return None
            status = TickStatus.RUNNING
            if skip_overlap:
                cur = await conn.execute(
                    "SELECT 1 FROM edgeruntime_cron_ticks WHERE cron = %s AND status = 'running'"
                    " AND lease_until > %s LIMIT 1",
                    (cron, now),
                )
                if await cur.fetchone() is not None:
                    status = TickStatus.SKIPPED
            finished = now if status is TickStatus.SKIPPED else None
            cur = await conn.execute(
                "INSERT INTO edgeruntime_cron_ticks (cron, tick_key, scheduled_for, trigger, status, instance,"
                " started_at, finished_at, lease_until) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                f" ON CONFLICT (cron, tick_key) DO NOTHING RETURNING {TICK_COLUMNS}",
                (cron, key, scheduled_for, trigger, str(status), instance, now, finished, now + lease_sec),
            )
            row = await cur.fetchone()
            return None if row is None else tick_from_row(row)

    async def finish_tick(
        self, tick_id: int, status: TickStatus, http_status: int | None, error: str | None, *, now: float
    ) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "UPDATE edgeruntime_cron_ticks SET status = %s, http_status = %s, error = %s, finished_at = %s"
                " WHERE id = %s",
                (str(status), http_status, _storable(error), now, tick_id),
            )

    async def ticks(self, cron: str | None = None, limit: int = 100) -> list[CronTick]:
        where, args = ("WHERE cron = %s", [cron]) if cron else ("", [])
        async with self._conn() as conn:
            cur = await conn.execute(
                f"SELECT {TICK_COLUMNS} FROM edgeruntime_cron_ticks {where} ORDER BY id DESC LIMIT %s",
                (*args, limit),
            )
            return [tick_from_row(r) for r in await cur.fetchall()]

    # -- run history ---------------------------------------------------------------------

    async def record_runs(self, runs: Sequence[Run]) -> None:
        await self.record_run_rows([run_row(r) for r in runs])

    async def record_run_rows(self, rows: Sequence[RunRow], *, batch_id: str | None = None) -> int:
        if not rows:
            return 0
        psycopg = self._psycopg
        try:
            return await self._record_run_rows(rows, batch_id)
        except (psycopg.DataError, psycopg.IntegrityError):
            raise  # these rows cannot be written (a NUL in a text, a NULL where none may be)
        except (psycopg.Error, ConfigError, OSError) as exc:
            # Connection lost or refused, server shutting down, disk full, read-only transaction,
            # privileges revoked: the same rows may be written later.
            raise StoreUnavailable(f"database {redact_url(self.url)}: {describe(exc)}") from exc

    async def _record_run_rows(self, rows: Sequence[RunRow], batch_id: str | None) -> int:
        async with self._conn() as conn:
            if batch_id is None:
                # One COPY is one statement, so one transaction: the batch is written whole or not at all.
                await self._copy_runs(conn, rows)
                return len(rows)
            async with conn.transaction():
                # Waits for a transaction still writing the same batch (a connection lost before its
                # COMMIT reached the server is rolled back), then inserts nothing if it committed.
                cur = await conn.execute(FIRST_OF_BATCH, (*rows[0], batch_id))
                if not cur.rowcount:
                    return 0
                await self._copy_runs(conn, rows[1:])
            return len(rows)

    @staticmethod
    async def _copy_runs(conn: psycopg.AsyncConnection[Any], rows: Sequence[RunRow]) -> None:
        if not rows:
            return
        async with conn.cursor() as cur, cur.copy(COPY_RUNS) as copy:
            copy.set_types(RUN_COLUMN_TYPES)
            for row in rows:
                await copy.write_row(row)

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
        async with self._conn() as conn:
            cur = await conn.execute(
                f"SELECT {RUN_COLUMNS} FROM edgeruntime_runs {where} ORDER BY id DESC LIMIT %s",
                (*args, limit),
            )
            return [run_from_row(r) for r in await cur.fetchall()]

    async def prune(self, *, before: float) -> int:
        total = 0
        async with self._conn() as conn, conn.transaction():
            for stmt in PRUNE_STATEMENTS:
                cur = await conn.execute(stmt, (before,))
                total += cur.rowcount
        return total

    async def trim_history(self, *, max_rows: int | None = None, max_mb: float | None = None) -> int:
        if max_rows is None and max_mb is None:
            return 0
        async with self._conn() as conn:
            cur = await conn.execute("SELECT MIN(id), MAX(id) FROM edgeruntime_runs")
            row = await cur.fetchone()
            if row is None or row[0] is None:
                return 0
            first, last = int(row[0]), int(row[1])
            # Rows by their ids: cheap (the primary key's ends), and never fewer than are there.
            count = last - first + 1
            keep = count
            if max_rows is not None and count > max_rows:
                keep = int(max_rows * TRIM_TARGET)
            max_bytes = None if max_mb is None else max_mb * 1024 * 1024
            # The table's files are never smaller than its live rows: under the cap, nothing to estimate.
            if max_bytes is not None and await self._relation_bytes(conn) > max_bytes:
                per_row = await self._bytes_per_row(conn)
                if count * per_row > max_bytes:
                    keep = min(keep, int(max_bytes * TRIM_TARGET / per_row))
            if keep >= count:
                return 0
            # Autovacuum makes the space of the deleted rows reusable: the table stops growing.
            deleted = 0
            cutoff = last - keep
            while first <= cutoff:
                upto = min(cutoff, first + TRIM_CHUNK_ROWS - 1)
                cur = await conn.execute("DELETE FROM edgeruntime_runs WHERE id <= %s", (upto,))
                deleted += cur.rowcount
                first = upto + 1
            return deleted

    @staticmethod
    async def _relation_bytes(conn: psycopg.AsyncConnection[Any]) -> int:
        cur = await conn.execute("SELECT pg_total_relation_size('edgeruntime_runs')")
        row = await cur.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    @staticmethod
    async def _bytes_per_row(conn: psycopg.AsyncConnection[Any]) -> float:
        """The bytes one history record takes, table and indexes, from the newest records."""
        cur = await conn.execute(
            "SELECT AVG(pg_column_size(r.*)), AVG(octet_length(r.execution_id))"
            f" FROM (SELECT * FROM edgeruntime_runs ORDER BY id DESC LIMIT {SIZE_SAMPLE_ROWS}) r"
        )
        row = await cur.fetchone()
        if row is None or row[0] is None:
            return float(ROW_OVERHEAD_BYTES)
        return float(row[0]) + float(row[1]) + ROW_OVERHEAD_BYTES
