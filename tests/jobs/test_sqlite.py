"""What only the SQLite store does: the schema check without the write lock, the run table's indexes,
the WAL switch, the size cap with incremental vacuum."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeruntime.exceptions import StoreUnavailable
from edgeruntime.jobs import sqlite as sqlite_store
from edgeruntime.jobs.backends import open_store
from edgeruntime.jobs.store import Run, RunRow


async def test_migrate_on_an_up_to_date_schema_takes_no_write_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    first = open_store(url)
    await first.migrate()
    await first.close()

    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 200)  # a blocked migrate fails fast
    writer = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another instance holds the write lock
    store = open_store(url)
    try:
        started = time.monotonic()
        await store.migrate()
        assert time.monotonic() - started < 0.2
        assert await store.count_jobs() == {}
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        await store.close()


async def test_migrate_creates_the_schema_of_a_new_database(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'new' / 'jobs.db'}")
    try:
        await store.migrate()
        assert await store.count_jobs() == {}
    finally:
        await store.close()


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


async def test_a_new_store_is_private_to_the_servers_user(tmp_path: Path) -> None:
    """Under process isolation with the `uid` sandbox every function is another user: the store
    edgeruntime creates (the default `.edgeruntime/`) must not be readable by them, whatever the umask."""
    os.chmod(tmp_path, 0o755)
    directory = tmp_path / "project" / ".edgeruntime"
    old = os.umask(0o022)
    try:
        store = open_store(f"sqlite:///{directory / 'edgeruntime.db'}")
        try:
            await store.migrate()
            await store.enqueue("send-email", '{"card": "4111"}', run_at=0, max_attempts=1, idempotency_key=None, now=0)
            files = sorted(p.name for p in directory.iterdir())
            modes = {name: _mode(directory / name) for name in files}
        finally:
            await store.close()
    finally:
        os.umask(old)
    assert _mode(directory) == 0o700
    assert {"edgeruntime.db", "edgeruntime.db-wal", "edgeruntime.db-shm"} <= set(files), files
    assert set(modes.values()) == {0o600}, modes


async def test_a_directory_and_database_the_user_made_keep_their_modes(tmp_path: Path) -> None:
    directory = tmp_path / "shared"
    directory.mkdir(mode=0o750)
    directory.chmod(0o750)
    database = directory / "jobs.db"
    sqlite3.connect(database).close()
    database.chmod(0o640)
    store = open_store(f"sqlite:///{database}")
    try:
        await store.migrate()
    finally:
        await store.close()
    assert (_mode(directory), _mode(database)) == (0o750, 0o640)


async def test_run_rows_carry_only_the_execution_index_and_old_ones_are_still_pruned(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = open_store(f"sqlite:///{path}")
    try:
        await store.migrate()
        await store.record_runs(
            [
                Run("invocation", "a", "http", "new", "succeeded", 2_000.0, 1.0, 200),
                Run("background", "a", "wait_until", "old", "completed", 1_000.0, 1.0),  # written later
            ]
        )
        with sqlite3.connect(path) as conn:
            indexes = {
                row[0]
                for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'edgeruntime_runs'"
                )
                if not row[0].startswith("sqlite_autoindex")
            }
        assert indexes == {"edgeruntime_runs_execution", "edgeruntime_runs_batch"}
        assert await store.prune(before=1_500.0) == 1
        assert [r.execution_id for r in await store.runs()] == ["new"]
    finally:
        await store.close()


def test_connections_opening_a_new_file_together_all_get_the_wal_journal(tmp_path: Path) -> None:
    import threading

    failures: list[BaseException] = []
    for trial in range(100):  # the race is rare: without the retry about 1 trial in 70 failed

        def connect(path: Path = tmp_path / f"{trial}.db") -> None:
            try:
                conn = sqlite_store.SQLiteStore(path)._connect()
                assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
                conn.close()
            except BaseException as exc:  # collected for the assertion below
                failures.append(exc)

        threads = [threading.Thread(target=connect) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []


MiB = 1024 * 1024


def _rows(count: int, start: int = 0) -> list[RunRow]:
    return [
        ("invocation", "hello", "http", f"0193a8f2-{i:012d}-7c1e", "succeeded", 1e9 + i, 1.5, 200, None, None)
        for i in range(start, start + count)
    ]


async def _fill(url: str, count: int) -> None:
    store = open_store(url)
    try:
        await store.migrate()
        for start in range(0, count, 2000):
            await store.record_run_rows(_rows(min(2000, count - start), start))
    finally:
        await store.close()


def _size(path: Path) -> int:
    """The database file's size (its WAL aside)."""
    return os.path.getsize(path)


def _pragma(path: Path, name: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"PRAGMA {name}").fetchone()[0])


async def test_a_size_cap_shrinks_the_file_under_it_and_keeps_the_newest_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jobs.db"
    url = f"sqlite:///{path}"
    await _fill(url, 60_000)
    grown = _size(path)
    assert grown > 7 * MiB
    assert _pragma(path, "auto_vacuum") == 0  # as every file made before the cap existed

    store = open_store(url)
    try:
        deleted = await store.trim_history(max_mb=2)
        assert _size(path) <= 2 * MiB
        assert _pragma(path, "auto_vacuum") == 2  # incremental from now on
        newest = await store.runs(limit=1)
        assert newest[0].execution_id == _rows(1, 59_999)[0][3]
        assert 0 < deleted < 60_000

        # More history: it is trimmed again, and the freed pages go back to the file system.
        for start in range(60_000, 100_000, 2000):
            await store.record_run_rows(_rows(2000, start))
        assert _size(path) > 4 * MiB
        assert await store.trim_history(max_mb=2) > 0
        assert _size(path) <= 2 * MiB
        assert (await store.runs(limit=1))[0].execution_id == _rows(1, 99_999)[0][3]
        assert await store.trim_history(max_mb=2) == 0  # under the cap: nothing to do
    finally:
        await store.close()
    assert _size(path) <= 2 * MiB < grown / 3
    converted = [r.getMessage() for r in caplog.records if "incremental vacuum" in r.getMessage()]
    assert len(converted) == 2, converted  # switching (with the size), done (with the time): once
    assert "one VACUUM of" in converted[0] and "once per file" in converted[0]


async def test_without_a_cap_the_file_is_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    await _fill(f"sqlite:///{path}", 10_000)
    store = open_store(f"sqlite:///{path}")
    try:
        assert await store.trim_history() == 0
        assert await store.prune(before=1e9 + 9_000) == 9_000
        assert await store.trim_history() == 0
    finally:
        await store.close()
    assert _pragma(path, "auto_vacuum") == 0  # no VACUUM nobody asked for


async def test_on_an_incremental_file_pruning_by_age_gives_the_space_back(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    url = f"sqlite:///{path}"
    store = open_store(url)
    try:
        await store.migrate()
        await store.trim_history(max_rows=1_000_000)  # a cap: the file goes incremental
        assert _pragma(path, "auto_vacuum") == 2
        for start in range(0, 40_000, 2000):
            await store.record_run_rows(_rows(2000, start))
        full = _size(path)
        await store.prune(before=1e9 + 36_000)
        await store.trim_history()  # what the system runs after each prune
        assert _size(path) < full / 3
        assert len(await store.runs(limit=10_000)) == 4_000
    finally:
        await store.close()


async def test_a_cap_history_alone_cannot_meet_is_said_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        await store.migrate()
        await store.enqueue("work", "x" * 300_000, run_at=0, max_attempts=1, idempotency_key=None, now=0)
        await store.record_run_rows(_rows(100))
        with caplog.at_level(logging.WARNING, "edgeruntime.jobs"):
            await store.trim_history(max_mb=0.1)
            await store.trim_history(max_mb=0.1)
        assert await store.runs() == []  # the history went, the job stays
        assert (await store.count_jobs()) == {"queued": 1}
    finally:
        await store.close()
    [line] = [r.getMessage() for r in caplog.records if "over retention_max_mb" in r.getMessage()]
    assert "no run history left to delete" in line


async def test_enqueue_while_another_process_holds_the_write_lock_raises_store_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 100)
    store = open_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    await store.migrate()
    locker = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match=r"^enqueue: database .*jobs\.db: database is locked$"):
            await store.enqueue("hello", "{}", run_at=1.0, max_attempts=1, idempotency_key=None, now=1.0)
        locker.execute("ROLLBACK")
        assert await store.enqueue("hello", "{}", run_at=1.0, max_attempts=1, idempotency_key=None, now=1.0) == 1
    finally:
        locker.close()
        await store.close()


def _rollback_journal(conn: sqlite3.Connection) -> str:
    """A file WAL cannot be used on (the store asks for WAL, and goes on with what it gets): what
    SQLite answers where the file system has no shared memory for WAL's index."""
    return str(conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0])


async def test_a_file_wal_does_not_take_on_is_said_once_naming_it_and_its_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    in_wal = open_store(f"sqlite:///{tmp_path / 'wal.db'}")
    monkeypatch.setattr(sqlite_store, "_enter_wal", _rollback_journal)
    path = tmp_path / "jobs.db"
    store = open_store(f"sqlite:///{path}")
    with caplog.at_level(logging.WARNING, "edgeruntime.jobs"):
        try:
            await store.migrate()
            await store.check_writable()
            await store.enqueue("hello", "{}", run_at=1.0, max_attempts=1, idempotency_key=None, now=1.0)
        finally:
            await store.close()
        monkeypatch.undo()
        try:
            await in_wal.migrate()
        finally:
            await in_wal.close()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == [
        f"jobs: database {path}: SQLite kept the 'delete' journal mode, not WAL (its file system gives no"
        " shared memory for WAL's index): readers and the writer block each other, so with several"
        " processes on it a write may wait up to 10 s or fail with 'database is locked';"
        " put the file on a local disk"
    ]


async def test_a_commit_that_fails_is_rolled_back_and_the_store_stays_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without WAL, COMMIT waits for every reader of the file to finish; a reader that stays past
    the busy timeout makes it fail with "database is locked", and SQLite then keeps the transaction
    open, holding the file's write locks. The store rolls it back: the write fails alone, the next
    one works, and other connections are not locked out."""
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 100)
    monkeypatch.setattr(sqlite_store, "_enter_wal", _rollback_journal)
    path = tmp_path / "jobs.db"
    store = open_store(f"sqlite:///{path}")
    await store.migrate()
    reader = sqlite3.connect(path, isolation_level=None, timeout=0.5)
    try:
        assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        reader.execute("BEGIN")
        assert reader.execute("SELECT COUNT(*) FROM edgeruntime_jobs").fetchone()[0] == 0  # a read lock, kept
        with pytest.raises(StoreUnavailable, match=r"^enqueue: database .*jobs\.db: database is locked$"):
            await store.enqueue("hello", '{"n":1}', run_at=1.0, max_attempts=1, idempotency_key=None, now=1.0)
        reader.execute("COMMIT")
        # The failed enqueue wrote nothing; another connection can read and write the file.
        assert reader.execute("SELECT COUNT(*) FROM edgeruntime_jobs").fetchone()[0] == 0
        reader.execute("INSERT INTO edgeruntime_cron_pauses (cron, paused_at) VALUES ('other', 0)")
        job_id = await store.enqueue("hello", '{"n":2}', run_at=1.0, max_attempts=1, idempotency_key=None, now=1.0)
        [job] = await store.jobs()
        assert (job.id, job.payload) == (job_id, '{"n":2}')
        assert await store.paused_crons() == {"other": 0.0}
        assert reader.execute("SELECT payload FROM edgeruntime_jobs").fetchall() == [('{"n":2}',)]
    finally:
        reader.close()
        await store.close()


#: Enqueues a job larger than SQLite's page cache with the file size capped below it (a full disk or
#: quota): the INSERT spills pages to the WAL, which fails, and SQLite rolls the transaction back.
#: Then, the cap lifted, a small job. Prints what each enqueue gave.
_FULL_DISK = """
import asyncio, resource, signal, sys
from edgeruntime.jobs.backends import open_store

async def main() -> None:
    store = open_store(sys.argv[1])
    await store.migrate()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the cap fails instead of killing
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, hard))
    try:
        await store.enqueue("big", "x" * 4_000_000, run_at=1.0, max_attempts=1, idempotency_key=None, now=1.0)
    except Exception as exc:
        print(type(exc).__name__, exc)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    print(await store.enqueue("small", "{}", run_at=1.0, max_attempts=1, idempotency_key=None, now=1.0))
    await store.close()

asyncio.run(main())
"""


def test_a_write_sqlite_rolled_back_itself_fails_with_its_own_error(tmp_path: Path) -> None:
    """A ROLLBACK after a statement SQLite already rolled back (an I/O error) fails with "cannot
    rollback - no transaction is active", which used to replace the error that mattered."""
    path = tmp_path / "jobs.db"
    result = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, f"sqlite:///{path}"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    error, job_id = result.stdout.splitlines()
    assert error == f"StoreUnavailable enqueue: database {path}: disk I/O error"
    assert job_id == "1"
