"""What only the SQLite store does: the schema check without the write lock, the run table's indexes, the WAL switch."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from edgeruntime.jobs import sqlite as sqlite_store
from edgeruntime.jobs.backends import open_store
from edgeruntime.jobs.store import Run


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
        assert indexes == {"edgeruntime_runs_execution"}
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
