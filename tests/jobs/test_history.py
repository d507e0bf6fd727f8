"""Run history: every invocation and wait_until task is recorded, off the request path."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edgeruntime.jobs.history import RunHistory
from edgeruntime.jobs.store import Run
from edgeruntime.testing import EdgeClient
from tests.helpers import write_function

WITH_BACKGROUND = """
import asyncio
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve, EdgeRuntime

async def fails() -> None:
    await asyncio.sleep(0)
    raise ValueError("background boom")

async def handler(req: Request) -> JSONResponse:
    if req.url.path.endswith("/crash"):
        raise RuntimeError("handler boom")
    EdgeRuntime.wait_until(asyncio.sleep(0))
    EdgeRuntime.wait_until(fails())
    return JSONResponse({"ok": True})

serve(handler)
"""


async def test_invocations_and_background_tasks_are_recorded(functions_dir: Path, store_url: str) -> None:
    write_function(functions_dir, "bg", WITH_BACKGROUND)
    async with EdgeClient(functions_dir, database_url=store_url) as client:
        r = await client.invoke("bg")
        assert r.status_code == 200
        execution_id = r.headers["x-edgeruntime-execution-id"]
        assert (await client.invoke("bg", path="/crash")).status_code == 500
        await client.jobs.queue.enqueue("bg", {})
        await client.run_jobs()
        try:
            await client.drain()
        except ExceptionGroup:
            pass
        await client.jobs.history.flush()
        runs = await client.jobs.store.runs("bg")
    invocations = [r for r in runs if r.kind == "invocation"]
    assert sorted((r.trigger, r.status, r.http_status) for r in invocations) == [
        ("http", "failed", 500),
        ("http", "succeeded", 200),
        ("queue", "succeeded", 200),
    ]
    background = [r for r in runs if r.kind == "background" and r.execution_id == execution_id]
    assert sorted(r.status for r in background) == ["completed", "failed"]
    [failed] = [r for r in background if r.status == "failed"]
    assert failed.error is not None and "background boom" in failed.error
    assert all(r.duration_ms is not None and r.duration_ms >= 0 for r in runs)


class SlowStore:
    """A store whose writes take a long time (the request must not wait for them)."""

    url = "slow://"

    def __init__(self) -> None:
        self.written: list[Run] = []

    async def record_runs(self, runs: list[Run]) -> None:
        await asyncio.sleep(0.5)
        self.written.extend(runs)


async def test_recording_never_blocks_and_batches() -> None:
    store = SlowStore()
    history = RunHistory(store, flush_interval=0.05)  # type: ignore[arg-type]
    history.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(1000):
        history.add(Run("invocation", "f", "http", f"e{i}", "succeeded", 0.0, 1.0, 200))
    assert loop.time() - started < 0.25  # appending is in-memory only
    await history.stop()
    assert len(store.written) == 1000


async def test_requests_for_unknown_functions_are_not_runs(functions_dir: Path) -> None:
    write_function(
        functions_dir,
        "hello",
        "from starlette.responses import Response\nfrom edgeruntime import serve\nserve(lambda req: Response('hi'))\n",
    )
    async with EdgeClient(functions_dir) as client:
        assert (await client.invoke("hello")).status_code == 200
        for name in ("nope", "..", "x" * 200):
            assert (await client.invoke(name)).status_code == 404
        await client.jobs.history.flush()
        assert [run.function for run in await client.jobs.store.runs()] == ["hello"]
