"""A function whose module's top level does not finish, under process isolation: the boot timeout
(503 BOOT_ERROR), the idle timeout of the requests waiting for the boot (504), one boot shared by
the requests that wait for it. Inline, the module is imported on the server's event loop, so that
what its top level makes works in its handler (some objects only work in the thread that made them)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from edgeruntime.testing import EdgeClient
from edgeruntime.workers.process import parent
from tests.helpers import HELLO, write_function
from tests.probes import worker_processes

BOOT_ERROR = {"code": "BOOT_ERROR", "message": "Worker failed to boot (please check logs)"}

#: Blocks at its top level while the flag file exists (10 s at most), then serves.
SLOW_BOOT = """
import os
import time
from pathlib import Path
from starlette.responses import JSONResponse
from edgeruntime import Deno, serve

FLAG = Path(Deno.env.get("BLOCK_FLAG") or os.devnull)
for _ in range(200):
    if FLAG.name != "block-boot" or not FLAG.exists():
        break
    time.sleep(0.05)

BOOTED_AT = time.time()


async def handler(req):
    return JSONResponse({"booted_at": BOOTED_AT})

serve(handler)
"""


@pytest.fixture
def isolation() -> str:
    return "process"


@pytest.fixture
def blocked(functions_dir: Path) -> Path:
    """`slow` (blocked at boot while the returned flag exists) and `hello` in `functions_dir`."""
    write_function(functions_dir, "slow", SLOW_BOOT)
    write_function(functions_dir, "hello", HELLO)
    flag = functions_dir.parent / "block-boot"
    flag.touch()
    return flag


def client_for(functions_dir: Path, flag: Path, isolation: str, **limits: float) -> EdgeClient:
    environ = {**os.environ, "BLOCK_FLAG": str(flag)}
    return EdgeClient(functions_dir, isolation=isolation, sandbox="none", environ=environ, limits=limits)


async def test_a_boot_that_does_not_finish_in_time_is_a_boot_error_and_others_serve_meanwhile(
    functions_dir: Path,
    blocked: Path,
    isolation: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(parent, "BOOT_TIMEOUT_SEC", 1.0)
    async with client_for(functions_dir, blocked, isolation) as client:
        assert (await client.invoke("hello")).status_code == 200  # (its worker booted before)
        started = time.monotonic()
        waiting = [asyncio.ensure_future(client.invoke("slow")) for _ in range(3)]
        await asyncio.sleep(0.2)
        hello_started = time.monotonic()
        assert (await client.invoke("hello")).status_code == 200
        assert time.monotonic() - hello_started < 0.5  # the event loop is not the one blocked
        answers = await asyncio.wait_for(asyncio.gather(*waiting), 10)
        assert [(r.status_code, r.json()) for r in answers] == [(503, BOOT_ERROR)] * 3
        assert time.monotonic() - started < 2.9  # one boot, shared: not one 1 s timeout after another
        supervisor = client.app.functions["slow"]
        assert supervisor.boots == 1 and supervisor.workers == []
        # Killed, reaped, and the next request boots a fresh one.
        assert "slow" not in worker_processes(os.getpid())
        assert (await client.invoke("slow")).status_code == 503
        assert supervisor.boots == 2
        blocked.unlink()  # noqa: ASYNC240 (a local file)
        assert (await client.invoke("slow")).status_code == 200
    assert "function slow: worker did not boot within 1 s" in caplog.text


async def test_a_request_waiting_for_a_boot_gets_its_idle_timeout_and_the_boot_goes_on(
    functions_dir: Path, blocked: Path, isolation: str
) -> None:
    async with client_for(functions_dir, blocked, isolation, request_idle_timeout_sec=0.5) as client:
        started = time.monotonic()
        r = await client.invoke("slow")
        assert (r.status_code, r.json()["code"]) == (504, "IDLE_TIMEOUT")
        assert time.monotonic() - started < 2
        blocked.unlink()  # noqa: ASYNC240 (a local file)
        r = await client.invoke("slow")
        assert r.status_code == 200
        assert r.json()["booted_at"] < time.time()
        assert client.app.functions["slow"].boots == 1  # the first request's boot, not cut by its timeout


THREAD_BOUND = """
import sqlite3
from starlette.responses import JSONResponse
from edgeruntime import serve

conn = sqlite3.connect(":memory:")  # usable only in the thread that made it
conn.execute("create table hits (n)")


async def handler(req):
    conn.execute("insert into hits values (1)")
    return JSONResponse({"hits": conn.execute("select count(*) from hits").fetchone()[0]})

serve(handler)
"""


async def test_inline_what_a_modules_top_level_makes_works_in_its_handler(functions_dir: Path) -> None:
    """Inline, the module is imported on the event loop's thread, where its handler runs: a
    ``sqlite3`` connection made at its top level (bound to its thread) serves the handler."""
    write_function(functions_dir, "counter", THREAD_BOUND)
    async with EdgeClient(functions_dir, no_verify_jwt=True) as client:
        for hits in (1, 2):
            r = await client.invoke("counter")
            assert (r.status_code, r.json()) == (200, {"hits": hits})


@pytest.mark.parametrize("kind", ["inline", "process"])
@pytest.mark.parametrize(
    "broken", ["def handler(:\n", "import does_not_exist_anywhere\n", "x = 1\n"], ids=["syntax", "import", "no-serve"]
)
async def test_a_boot_error_is_retried_by_the_next_request_once_the_files_are_fixed(
    functions_dir: Path, kind: str, broken: str
) -> None:
    """DESIGN 3: "A boot error is per function: the others keep serving, and the next request (or a
    file change) retries the boot" -- the next request, with no file watcher (as in EdgeClient)."""
    index = write_function(functions_dir, "fixed", broken)
    write_function(functions_dir, "hello", HELLO)
    async with EdgeClient(functions_dir, isolation=kind, sandbox="none") as client:
        r = await client.invoke("fixed")
        assert (r.status_code, r.json(), r.headers["sb-error-code"]) == (503, BOOT_ERROR, "BOOT_ERROR")
        assert (await client.invoke("hello")).status_code == 200
        index.write_text(HELLO)
        r = await client.invoke("fixed")
        assert (r.status_code, r.json()["message"]) == (200, "hello")
