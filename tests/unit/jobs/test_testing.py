"""EdgeClient's jobs helpers: an isolated store per client, run_jobs, the fake clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgeruntime.config.settings import Settings
from edgeruntime.testing import EdgeClient, FakeClock
from tests.helpers import HELLO, write_function


async def test_each_client_has_its_own_store(hello_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = hello_dir.parent / "shared.db"
    monkeypatch.setenv("EDGERUNTIME_DATABASE_URL", f"sqlite:///{shared}")
    async with EdgeClient(hello_dir) as a, EdgeClient(settings=Settings.build(hello_dir)) as b:
        await a.jobs.queue.enqueue("hello", {})
        assert await b.jobs.store.jobs() == []
        assert a.jobs.store.url != b.jobs.store.url
        temp = Path(a.jobs.store.url.removeprefix("sqlite:///"))
        assert await asyncio.to_thread(temp.is_file)
    assert not await asyncio.to_thread(temp.exists)  # removed with the client
    assert not await asyncio.to_thread(shared.exists)
    assert not await asyncio.to_thread((hello_dir.parent / ".edgeruntime").exists)


async def test_database_url_shares_a_store(hello_dir: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kept.db'}"
    async with EdgeClient(hello_dir, database_url=url) as client:
        await client.jobs.queue.enqueue("hello", {})
    async with EdgeClient(hello_dir, database_url=url) as client:
        assert [r.status for r in await client.run_jobs()] == ["succeeded"]


async def test_run_jobs_delivers_jobs_queued_by_jobs(functions_dir: Path) -> None:
    write_function(functions_dir, "hello", HELLO)
    write_function(
        functions_dir,
        "fan-out",
        """
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from edgeruntime import serve
        import edgeruntime.jobs

        async def handler(req: Request) -> JSONResponse:
            depth = (await req.json()).get("depth", 0)
            if depth < 2:
                await edgeruntime.jobs.enqueue("fan-out", {"depth": depth + 1})
                await edgeruntime.jobs.enqueue("fan-out", {"depth": depth + 1})
            return JSONResponse({"depth": depth})

        serve(handler)
        """,
    )
    async with EdgeClient(functions_dir) as client:
        await client.jobs.queue.enqueue("fan-out", {})
        results = await client.run_jobs()
        assert len(results) == 1 + 2 + 4 and {r.status for r in results} == {"succeeded"}


async def test_run_jobs_stops_a_job_that_requeues_itself_forever(functions_dir: Path) -> None:
    write_function(
        functions_dir,
        "forever",
        """
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from edgeruntime import serve
        import edgeruntime.jobs

        async def handler(req: Request) -> JSONResponse:
            await edgeruntime.jobs.enqueue("forever", {})
            return JSONResponse({})

        serve(handler)
        """,
    )
    async with EdgeClient(functions_dir) as client:
        await client.jobs.queue.enqueue("forever", {})
        with pytest.raises(TimeoutError, match="still due after 5 rounds"):
            await client.run_jobs(max_rounds=5)


def test_fake_clock() -> None:
    clock = FakeClock(100)
    clock.advance(2.5)
    assert clock.now() == 102.5
    clock.set(7)
    assert clock.now() == 7
