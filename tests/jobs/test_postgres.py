"""What only the Postgres store does: writes that survive a lost connection, the write check on a
read-only database, reconnecting after an outage, the size cap by estimate.

A TCP proxy on loopback stands between the store and the server (the machine's PostgreSQL is
shared and is never stopped): cutting it is the outage.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

import psycopg
import pytest

from edgeruntime.exceptions import ConfigError, StoreUnavailable
from edgeruntime.jobs.backends import open_store
from edgeruntime.jobs.history import RunHistory
from edgeruntime.jobs.store import RunRow
from tests.jobs.conftest import ProxiedPostgres

pytestmark = pytest.mark.postgres

T0 = 1_800_000_000.0
MiB = 1024 * 1024


def _rows(count: int, start: int = 0) -> list[RunRow]:
    return [
        ("invocation", "hello", "http", f"0193a8f2-{i:012d}-7c1e", "succeeded", T0 + i, 1.5, 200, None, None)
        for i in range(start, start + count)
    ]


def _count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT COUNT(*), COUNT(DISTINCT execution_id) FROM edgeruntime_runs").fetchone()
    assert row is not None and row[0] == row[1], f"duplicates: {row}"
    return int(row[0])


async def test_a_batch_committed_but_never_acknowledged_is_not_written_twice(
    proxied_postgres: ProxiedPostgres,
) -> None:
    pg = proxied_postgres
    store = open_store(pg.proxied_url)
    try:
        await store.migrate()
        pg.proxy.cut_after_commit()
        with pytest.raises(StoreUnavailable, match=r"^database postgresql://"):
            await store.record_run_rows(_rows(50), batch_id="b-1")
        assert _count(pg.url) == 50  # it did commit: only the answer was lost
        pg.proxy.restore()
        assert await store.record_run_rows(_rows(50), batch_id="b-1") == 0
        assert _count(pg.url) == 50
    finally:
        await store.close()


async def test_the_history_retries_a_lost_batch_once_the_store_is_back(
    proxied_postgres: ProxiedPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    pg = proxied_postgres
    store = open_store(pg.proxied_url)
    history = RunHistory(store)
    try:
        await store.migrate()
        for row in _rows(3000):
            history.add(row)
        pg.proxy.cut_after_commit()  # the first batch (2000) commits unacknowledged
        assert await history.flush() is False
        assert history.buffered == 3000
        assert await history.flush() is False  # still cut: refused
        pg.proxy.restore()
        assert await history.flush() is True
        assert history.buffered == 0
    finally:
        await store.close()
    assert _count(pg.url) == 3000
    with psycopg.connect(pg.url) as conn:
        ids = [r[0] for r in conn.execute("SELECT execution_id FROM edgeruntime_runs ORDER BY id")]
    assert ids == [row[3] for row in _rows(3000)]  # in order
    [failed] = [r for r in caplog.records if r.levelno >= logging.ERROR]  # one line, not one per try
    assert failed.exc_info is None
    assert failed.getMessage().startswith("run history: writing to the store failed: database postgresql://")
    [back] = [r.getMessage() for r in caplog.records if "works again" in r.getMessage()]
    assert "3000 record(s) written late" in back


async def test_after_an_outage_every_pooled_connection_is_usable_again(proxied_postgres: ProxiedPostgres) -> None:
    pg = proxied_postgres
    store = open_store(pg.proxied_url)
    try:
        await store.migrate()
        for _ in range(4):  # every connection of the pool has been used
            await store.count_jobs()
        pg.proxy.cut()
        with pytest.raises(psycopg.OperationalError):
            await store.count_jobs()
        pg.proxy.restore()
        for _ in range(8):  # the other three were broken too: tested and replaced, not failed on
            assert await store.count_jobs() == {}
    finally:
        await store.close()


@pytest.fixture
def read_only_url(postgres_url: str) -> str:
    """The test schema, migrated, then reached in read-only transactions (as on a standby, or
    with a role whose default_transaction_read_only is on), with a password in the URL."""
    return postgres_url.replace("postgres@", "postgres:hunter2@", 1) + quote(" -cdefault_transaction_read_only=on")


async def test_a_read_only_database_fails_the_write_check_naming_it_without_its_password(
    postgres_url: str, read_only_url: str
) -> None:
    store = open_store(postgres_url)
    await store.migrate()
    await store.close()
    store = open_store(read_only_url)
    try:
        await store.migrate()  # up to date: it only reads
        assert await store.count_jobs() == {}
        with pytest.raises(ConfigError) as info:
            await store.check_writable()
    finally:
        await store.close()
    message = str(info.value)
    assert message.startswith("database postgresql://postgres:***@") and "hunter2" not in message
    assert message.endswith(
        "cannot write to it: ReadOnlySqlTransaction: cannot execute INSERT in a read-only transaction"
    )
    assert "\n" not in message


async def test_a_schema_that_cannot_be_created_is_one_line_too(read_only_url: str) -> None:
    store = open_store(read_only_url)  # a fresh schema: migrating would have to write
    try:
        with pytest.raises(ConfigError, match=r"cannot create or upgrade its schema: ReadOnlySqlTransaction: ") as info:
            await store.migrate()
    finally:
        await store.close()
    assert "\n" not in str(info.value) and "hunter2" not in str(info.value)


async def test_a_size_cap_keeps_the_live_history_under_it(postgres_url: str) -> None:
    store = open_store(postgres_url)
    try:
        await store.migrate()
        for start in range(0, 60_000, 2000):
            await store.record_run_rows(_rows(2000, start))
        deleted = await store.trim_history(max_mb=4)
        assert 0 < deleted < 60_000
        assert await store.trim_history(max_mb=4) == 0
        newest = await store.runs(limit=1)
        assert newest[0].execution_id == _rows(1, 59_999)[0][3]
    finally:
        await store.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        # What the rows left take once the space of the deleted ones is given back.
        conn.execute("VACUUM FULL edgeruntime_runs")
        row = conn.execute("SELECT pg_total_relation_size('edgeruntime_runs')").fetchone()
    assert row is not None
    # Trimmed to 90 % of the cap by the estimate; the estimate is within a few per cent.
    assert 0.75 * 4 * MiB < row[0] <= 4 * MiB


async def test_enqueue_during_an_outage_raises_store_unavailable_and_works_once_it_is_over(
    proxied_postgres: ProxiedPostgres, read_only_url: str
) -> None:
    pg = proxied_postgres
    store = open_store(pg.proxied_url)
    try:
        await store.migrate()
        pg.proxy.cut()
        with pytest.raises(StoreUnavailable, match=r"^enqueue: database postgresql://"):
            await store.enqueue("hello", "{}", run_at=T0, max_attempts=1, idempotency_key=None, now=T0)
        pg.proxy.restore()
        assert await store.enqueue("hello", "{}", run_at=T0, max_attempts=1, idempotency_key=None, now=T0) > 0
    finally:
        await store.close()
    read_only = open_store(read_only_url)
    try:
        with pytest.raises(StoreUnavailable, match="read-only") as info:
            await read_only.enqueue("hello", "{}", run_at=T0, max_attempts=1, idempotency_key=None, now=T0)
        assert "hunter2" not in str(info.value)
    finally:
        await read_only.close()
