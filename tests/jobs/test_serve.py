"""`edgeruntime serve` with jobs, on a real socket: enqueue over HTTP, graceful SIGTERM, history."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from edgeruntime.jobs.backends import open_store
from edgeruntime.jobs.store import JobStatus
from tests.helpers import SERVICE_ROLE, ServerProcess, write_function

pytestmark = pytest.mark.e2e

ENQUEUE = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve
import edgeruntime.jobs

async def handler(req: Request) -> JSONResponse:
    body = await req.json()
    ids = [await edgeruntime.jobs.enqueue("slow", {"sleep": body["sleep"]}) for _ in range(body["n"])]
    return JSONResponse({"ids": ids})

serve(handler)
"""

SLOW = """
import asyncio
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve

async def handler(req: Request) -> JSONResponse:
    await asyncio.sleep((await req.json())["sleep"])
    return JSONResponse({"ok": True})

serve(handler)
"""


def test_sigterm_lets_in_flight_jobs_finish_and_claims_no_more(functions_dir: Path, tmp_path: Path) -> None:
    write_function(functions_dir, "enqueue", ENQUEUE)
    write_function(functions_dir, "slow", SLOW)
    (functions_dir.parent / "config.toml").write_text("[jobs]\nconcurrency = 2\n", encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    with ServerProcess(functions_dir, "--no-watch", "--database-url", url) as server:
        r = httpx.post(server.url("enqueue"), json={"n": 5, "sleep": 1.5}, headers=SERVICE_ROLE, timeout=30)
        assert r.status_code == 200
        ids = r.json()["ids"]
        time.sleep(0.5)  # two jobs are now in flight
        assert server.terminate() == 0

    async def inspect() -> tuple[dict[str, int], list[str]]:
        store = open_store(url)
        try:
            runs = await store.runs()
            return await store.count_jobs(), [f"{r.trigger}:{r.function}:{r.status}" for r in runs]
        finally:
            await store.close()

    counts, runs = asyncio.run(inspect())
    # The two in-flight deliveries finished during the graceful shutdown; the rest stay queued.
    assert counts == {str(JobStatus.SUCCEEDED): 2, str(JobStatus.QUEUED): 3}, counts
    assert len(ids) == 5
    assert sorted(runs) == ["http:enqueue:succeeded", "queue:slow:succeeded", "queue:slow:succeeded"]
