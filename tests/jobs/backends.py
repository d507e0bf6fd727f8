"""Where the Postgres tests find their server, and how they see one of its backends wait for a lock."""

from __future__ import annotations

import asyncio
import os

import pytest


def postgres_url_or_skip() -> str:
    """EDGERUNTIME_TEST_DATABASE_URL; skip when unset, fail when EDGERUNTIME_REQUIRE_POSTGRES=1."""
    url = os.environ.get("EDGERUNTIME_TEST_DATABASE_URL")
    if url:
        return url
    if os.environ.get("EDGERUNTIME_REQUIRE_POSTGRES") == "1":
        pytest.fail("EDGERUNTIME_REQUIRE_POSTGRES=1 but EDGERUNTIME_TEST_DATABASE_URL is not set")
    pytest.skip("Postgres tests need EDGERUNTIME_TEST_DATABASE_URL (e.g. postgresql://postgres@127.0.0.1:5432/test)")


async def until_waiting_for_a_lock(postgres_url: str, backend_pid: int, done: asyncio.Event) -> None:
    """Return once the Postgres backend `backend_pid` waits for a lock (or `done` is set first)."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as watcher:
        while not done.is_set():
            cur = await watcher.execute("SELECT 1 FROM pg_locks WHERE pid = %s AND NOT granted", (backend_pid,))
            if await cur.fetchone() is not None:
                return
            await asyncio.sleep(0.01)
