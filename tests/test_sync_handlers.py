"""Sync handlers (`def handler`) that run past their request: inline their thread cannot be
stopped (bounded, said in the log, never keeping the server from exiting); under process
isolation a limit ends the whole worker process, thread and all."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from edgeruntime.core import threads
from edgeruntime.testing import EdgeClient
from tests.helpers import HELLO, ServerProcess, write_function

#: `?block=1` blocks while the flag file exists (10 s at most); `?spin=1` never returns.
BLOCKING = """
import os
import time
from pathlib import Path
from starlette.responses import JSONResponse
from edgeruntime import Deno, serve

FLAG = Path(Deno.env.get("BLOCK_FLAG") or os.devnull)


def handler(req):
    if "block" in req.query_params:
        for _ in range(200):
            if FLAG.name != "block-handler" or not FLAG.exists():
                break
            time.sleep(0.05)
    if "spin" in req.query_params:
        while True:
            pass
    return JSONResponse({"pid": os.getpid()})

serve(handler)
"""


@pytest.fixture
def blocking(functions_dir: Path) -> Path:
    """`blocking` (blocked while the returned flag exists) and `hello` in `functions_dir`."""
    write_function(functions_dir, "blocking", BLOCKING)
    write_function(functions_dir, "hello", HELLO)
    flag = functions_dir.parent / "block-handler"
    flag.touch()
    return flag


def sync_handler_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "edgeruntime-sync-handler")


async def test_sync_handlers_past_their_request_are_bounded_and_said_in_the_log(
    functions_dir: Path, blocking: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(threads, "SYNC_HANDLER_THREADS", 2)
    environ = {**os.environ, "BLOCK_FLAG": str(blocking)}
    limits = {"request_idle_timeout_sec": 0.5}
    async with EdgeClient(functions_dir, environ=environ, limits=limits) as client:
        assert (await client.invoke("blocking")).status_code == 200
        before = sync_handler_threads()  # (idle ones of earlier tests' event loops included)
        for r in await asyncio.gather(*(client.invoke("blocking", params={"block": 1}) for _ in range(2))):
            assert r.status_code == 504  # their handlers run on, each holding its thread
        assert caplog.text.count("its sync handler runs on in its thread after its request ended") == 2
        r = await client.invoke("blocking")  # finds both threads held: waits for one, until its own timeout
        assert r.status_code == 504
        assert "all 2 threads for sync handlers are busy, 2 of them with handlers whose request has ended" in (
            caplog.text
        )
        pool = threads.sync_handler_threads(asyncio.get_running_loop())
        assert (pool.busy, pool.abandoned) == (2, 2)
        assert sync_handler_threads() <= before + 1  # the first request's thread, and one more
        assert (await client.invoke("hello")).status_code == 200  # async handlers are not held up
        blocking.unlink()  # noqa: ASYNC240 (a local file)
        deadline = time.monotonic() + 10
        while caplog.text.count("a sync handler whose request had ended returned after") < 2:
            assert time.monotonic() < deadline, "the held threads were not freed"
            await asyncio.sleep(0.05)
        assert (await client.invoke("blocking")).status_code == 200


def test_a_sync_handler_that_never_returns_does_not_keep_the_server_from_exiting(functions_dir: Path) -> None:
    write_function(functions_dir, "blocking", BLOCKING)
    with ServerProcess(
        functions_dir, "--no-watch", "--no-verify-jwt", "--limit", "request_idle_timeout_sec=0.5"
    ) as server:
        r = httpx.post(server.url("blocking"), params={"spin": 1}, timeout=10)
        assert r.status_code == 504
        assert server.terminate(timeout=15) == 0, server.output
    assert "its sync handler runs on in its thread after its request ended" in server.output


@pytest.mark.parametrize(
    ("query", "limits", "reason"),
    [
        ({"spin": 1}, {"cpu_soft_limit_ms": 100, "cpu_hard_limit_ms": 300}, "CPU time hard limit reached"),
        ({"block": 1}, {"wall_clock_limit_sec": 1.0}, "wall clock duration reached"),
    ],
)
async def test_under_process_isolation_a_limit_ends_the_worker_process_of_a_sync_handler_thread_and_all(
    functions_dir: Path,
    blocking: Path,
    query: dict[str, int],
    limits: dict[str, float],
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    environ = {**os.environ, "BLOCK_FLAG": str(blocking)}
    async with EdgeClient(functions_dir, isolation="process", sandbox="none", environ=environ, limits=limits) as client:
        first = (await client.invoke("blocking")).json()["pid"]
        started = time.monotonic()
        r = await client.invoke("blocking", params=query)
        assert (r.status_code, r.json()["code"]) == (546, "WORKER_LIMIT")
        assert time.monotonic() - started < 5
        r = await client.invoke("blocking")
        assert r.status_code == 200 and r.json()["pid"] != first
    assert reason in caplog.text
