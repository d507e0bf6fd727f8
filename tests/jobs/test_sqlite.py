"""What only the SQLite store does: an up-to-date schema is checked without the write lock."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from edgeruntime.jobs import sqlite as sqlite_store
from edgeruntime.jobs.store import open_store


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
