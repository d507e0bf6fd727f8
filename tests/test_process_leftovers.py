"""What a worker process leaves behind: processes it started that outlive it, sync handlers that
outlive their request. Neither may hold up a request or linger in a worker that serves on."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest

from edgeruntime.testing import EdgeClient
from edgeruntime.workers.process.forking import ForkedProcess, SpawnedProcess
from edgeruntime.workers.process.parent import ProcessWorker
from edgeruntime.workers.worker import WorkerStatus
from tests.helpers import HELLO, SERVICE_ROLE, ServerProcess, write_function
from tests.probes import eventually

WORKER_ERROR = {"code": "WORKER_ERROR", "message": "Function exited due to an error (please check logs)"}
IDLE_TIMEOUT = {
    "code": "IDLE_TIMEOUT",
    "message": "Function did not start its response within the request idle timeout",
}
#: Long enough that a hang shows as one (the idle timeout then answers 504 instead of 500).
IDLE_TIMEOUT_SEC = 20

#: Starts a process that outlives the request (a `subprocess.Popen`, a bare `os.fork`, one in a
#: session of its own), or dies (`os._exit`, SIGKILL, a segfault). Every process it starts carries
#: MARK (from its env) in its argv, so the test finds it wherever it was reparented.
PARENT = """
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time

from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import Deno, serve

MARK = Deno.env.get("MARK")
LINGER = ["-c", "import time; time.sleep(60)", MARK]


async def handler(req: Request) -> JSONResponse:
    q = req.query_params
    if "popen" in q:
        subprocess.Popen([sys.executable, *LINGER], start_new_session="session" in q)
    if "fork" in q:
        if os.fork() == 0:  # holds everything the worker holds, its channel included
            if "session" in q:
                os.setsid()
            os.execv(sys.executable, [sys.executable, *LINGER])
    if "exit" in q:
        os._exit(3)
    if "kill" in q:
        os.kill(os.getpid(), signal.SIGKILL)
    if "segfault" in q:
        ctypes.string_at(0)
    return JSONResponse({"pid": os.getpid()})


serve(handler)
"""


def marked(mark: str) -> list[int]:
    """The live processes whose argv holds `mark`, wherever they are."""
    found = []
    needle = mark.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in argv and state != b"Z":
            found.append(int(entry))
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def active(client: EdgeClient, name: str) -> ProcessWorker:
    worker = client.app.functions[name].worker
    assert isinstance(worker, ProcessWorker)
    return worker


def with_mark(functions_dir: Path) -> str:
    """A mark of the test's own, in the functions' env (`.env`: what every sandbox passes on)."""
    mark = f"edgeruntime-leftover-{uuid.uuid4().hex}"
    (functions_dir / ".env").write_text(f"MARK={mark}\n")
    return mark


@pytest.mark.parametrize("start", ["popen", "fork"])
@pytest.mark.parametrize("death", ["exit", "kill", "segfault"])
@pytest.mark.parametrize("spawn", [False, True], ids=["forked", "spawned"])
@pytest.mark.parametrize("sandbox", ["none", "bwrap"])
async def test_a_worker_that_dies_after_starting_a_process_is_a_crash_at_once(
    functions_dir: Path, start: str, death: str, spawn: bool, sandbox: str, caplog: pytest.LogCaptureFixture
) -> None:
    if sandbox == "bwrap" and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    mark = with_mark(functions_dir)
    write_function(functions_dir, "parent", PARENT)
    async with EdgeClient(
        functions_dir,
        isolation="process",
        sandbox=sandbox,
        limits={"request_idle_timeout_sec": IDLE_TIMEOUT_SEC},
    ) as client:
        try:
            assert client.app.launcher is not None
            client.app.launcher.forks = not spawn
            r = await client.invoke("parent", params={start: "1"})
            assert r.status_code == 200, r.text
            first = active(client, "parent")
            assert isinstance(first.proc, SpawnedProcess if spawn else ForkedProcess)
            await eventually(lambda: len(marked(mark)) == 1, what="the function's process starting")
            started = time.monotonic()
            r = await client.invoke("parent", params={death: "1"})
            assert (r.status_code, r.json()) == (500, WORKER_ERROR)
            assert time.monotonic() - started < 5  # not the idle timeout
            await eventually(lambda: not marked(mark), what="the worker's leftover process ending")
            r = await client.invoke("parent")
            assert r.status_code == 200
            assert active(client, "parent") is not first
        finally:
            kill_all(marked(mark))
    assert "exited unexpectedly" in caplog.text


@pytest.mark.parametrize("spawn", [False, True], ids=["forked", "spawned"])
async def test_a_worker_killed_from_outside_while_its_process_holds_its_channel_fails_its_request(
    functions_dir: Path, spawn: bool
) -> None:
    mark = with_mark(functions_dir)
    write_function(
        functions_dir,
        "slow",
        """
        import asyncio
        import os
        import sys
        from starlette.responses import JSONResponse
        from edgeruntime import Deno, serve

        async def handler(req):
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", Deno.env.get("MARK")])
            await asyncio.sleep(30)
            return JSONResponse({})

        serve(handler)
        """,
    )
    async with EdgeClient(
        functions_dir,
        isolation="process",
        sandbox="none",
        limits={"request_idle_timeout_sec": IDLE_TIMEOUT_SEC},
    ) as client:
        try:
            assert client.app.launcher is not None
            client.app.launcher.forks = not spawn
            request = asyncio.ensure_future(client.invoke("slow"))
            await eventually(lambda: marked(mark), what="the function's process starting")
            worker = active(client, "slow")
            assert worker.pid is not None
            started = time.monotonic()
            os.kill(worker.pid, signal.SIGKILL)  # as the OOM killer would
            r = await asyncio.wait_for(request, IDLE_TIMEOUT_SEC + 5)
            assert (r.status_code, r.json()) == (500, WORKER_ERROR)
            assert time.monotonic() - started < 5
            await eventually(lambda: not marked(mark), what="the worker's leftover process ending")
        finally:
            kill_all(marked(mark))


@pytest.mark.parametrize("spawn", [False, True], ids=["forked", "spawned"])
async def test_a_worker_that_dies_while_booting_after_starting_a_process_fails_its_boot_at_once(
    functions_dir: Path, spawn: bool, caplog: pytest.LogCaptureFixture
) -> None:
    mark = with_mark(functions_dir)
    write_function(
        functions_dir,
        "doomed",
        """
        import os
        import sys
        from edgeruntime import Deno

        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", Deno.env.get("MARK")])
        os._exit(3)
        """,
    )
    async with EdgeClient(functions_dir, isolation="process", sandbox="none") as client:
        try:
            assert client.app.launcher is not None
            client.app.launcher.forks = not spawn
            started = time.monotonic()
            r = await client.invoke("doomed")
            assert (r.status_code, r.json()) == (500, WORKER_ERROR)
            assert time.monotonic() - started < 5  # not the boot's 30 s
            await eventually(lambda: not marked(mark), what="the worker's leftover process ending")
        finally:
            kill_all(marked(mark))
    assert "worker process exited while booting (exit status 3)" in caplog.text


async def test_a_process_in_a_session_of_its_own_does_not_hold_up_the_crash(functions_dir: Path) -> None:
    """A process that left the worker's session is not ended with it (documented), but the crash is
    still noticed at once, and the process cannot hold the server's end of the channel."""
    mark = with_mark(functions_dir)
    write_function(functions_dir, "parent", PARENT)
    async with EdgeClient(
        functions_dir,
        isolation="process",
        sandbox="none",
        limits={"request_idle_timeout_sec": IDLE_TIMEOUT_SEC},
    ) as client:
        try:
            assert (await client.invoke("parent", params={"fork": "1", "session": "1"})).status_code == 200
            await eventually(lambda: len(marked(mark)) == 1, what="the function's process starting")
            started = time.monotonic()
            r = await client.invoke("parent", params={"exit": "1"})
            assert (r.status_code, r.json()) == (500, WORKER_ERROR)
            assert time.monotonic() - started < 5
            assert (await client.invoke("parent")).status_code == 200
        finally:
            kill_all(marked(mark))


@pytest.mark.e2e
@pytest.mark.parametrize("sandbox", ["bwrap", "none"])
@pytest.mark.parametrize("start", ["popen", "fork", "session"])
def test_real_server_answers_a_crash_at_once_and_ends_what_the_worker_started(
    functions_dir: Path, sandbox: str, start: str
) -> None:
    """(A process in a session of its own is not ended with the worker: it left its process group.)"""
    if sandbox == "bwrap" and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    mark = with_mark(functions_dir)
    write_function(functions_dir, "parent", PARENT)
    write_function(functions_dir, "hello", HELLO)
    options = ("--no-watch", "--isolation", "process", "--sandbox", sandbox)
    limits = ("--limit", f"request_idle_timeout_sec={IDLE_TIMEOUT_SEC}")
    try:
        with (
            ServerProcess(functions_dir, *options, *limits) as server,
            httpx.Client(timeout=IDLE_TIMEOUT_SEC + 10, headers=SERVICE_ROLE) as http,
        ):
            params = {"fork": "1", "session": "1"} if start == "session" else {start: "1"}
            first = http.get(server.url("parent"), params=params)
            assert first.status_code == 200, first.text
            deadline = time.monotonic() + 10
            while not marked(mark) and time.monotonic() < deadline:  # until it has exec'd
                time.sleep(0.05)
            assert len(marked(mark)) == 1
            started = time.monotonic()
            r = http.get(server.url("parent"), params={"exit": "1"})
            assert (r.status_code, r.json()) == (500, WORKER_ERROR)
            assert time.monotonic() - started < 5
            deadline = time.monotonic() + 10
            while start != "session" and marked(mark) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(marked(mark)) == (start == "session")
            second = http.get(server.url("parent"))
            assert second.status_code == 200
            assert http.get(server.url("hello")).status_code == 200
            assert server.terminate() == 0
        assert "exited unexpectedly (exit status 3)" in server.output
    finally:
        kill_all(marked(mark))


# -- sync handlers that outlive their request ---------------------------------------------------

#: A sync handler that can be told to block well past its request's idle timeout.
SYNC = """
import asyncio
import os
import time
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from edgeruntime import serve


async def stream(seconds):
    yield b"started "
    await asyncio.sleep(seconds)
    yield str(os.getpid()).encode()


def handler(req: Request):
    if "stream" in req.query_params:
        return StreamingResponse(stream(float(req.query_params["stream"])))
    if "block" in req.query_params:
        end = time.monotonic() + float(req.query_params["block"])
        while time.monotonic() < end:  # burns CPU, as a stuck handler does
            pass
    return JSONResponse({"pid": os.getpid()})


serve(handler)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


async def test_a_worker_whose_sync_handler_outlived_its_request_is_retired(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_function(functions_dir, "sync", SYNC)
    async with EdgeClient(
        functions_dir,
        isolation="process",
        limits={"request_idle_timeout_sec": 1, "cpu_soft_limit_ms": 60_000, "cpu_hard_limit_ms": 120_000},
    ) as client:
        assert (await client.invoke("sync")).status_code == 200
        worker = active(client, "sync")
        assert worker.pid is not None
        stuck = [asyncio.ensure_future(client.invoke("sync", params={"block": "30"})) for _ in range(2)]
        for r in await asyncio.gather(*stuck):
            assert (r.status_code, r.json()) == (504, IDLE_TIMEOUT)
        # The worker process says so once it has cancelled the request (a message away).
        await eventually(lambda: worker.status is not WorkerStatus.ACTIVE, what="the worker retiring")
        assert (await client.invoke("sync")).status_code == 200
        fresh = active(client, "sync")
        assert fresh is not worker and fresh.pid != worker.pid  # not the one whose threads are held
        # Nothing else in flight: the retired worker is dropped, its threads with it.
        await eventually(lambda: not _alive(worker.pid or 0), what="the retired worker process ending")
        assert (await client.invoke("sync")).status_code == 200
        metrics = (await client.request("GET", "/_internal/metrics")).text
    assert 'edgeruntime_worker_retirements_total{function="sync",reason="stuck_handler"} 1.0' in metrics
    retirements = [r for r in caplog.records if "sync handler outlived its request" in r.getMessage()]
    assert len(retirements) == 1, [r.getMessage() for r in retirements]
    assert f"isolate: {worker.id}" in retirements[0].getMessage()
    assert f"early termination has been triggered: isolate: {worker.id}" in caplog.text


async def test_a_retired_worker_finishes_its_other_requests_before_it_ends(functions_dir: Path) -> None:
    write_function(functions_dir, "sync", SYNC)
    async with EdgeClient(
        functions_dir,
        isolation="process",
        sandbox="none",  # the function's pid is the server's view of it
        limits={"request_idle_timeout_sec": 1, "cpu_soft_limit_ms": 60_000, "cpu_hard_limit_ms": 120_000},
    ) as client:
        first = (await client.invoke("sync")).json()["pid"]
        worker = active(client, "sync")
        # Its response starts at once, its body takes 2.5 s: the idle timeout does not cut it.
        streaming = asyncio.ensure_future(client.invoke("sync", params={"stream": "2.5"}))
        await eventually(lambda: worker.in_flight == 1, what="the streamed request in flight")
        stuck = await client.invoke("sync", params={"block": "30"})
        assert stuck.status_code == 504
        await eventually(lambda: worker.status is not WorkerStatus.ACTIVE, what="the worker retiring")
        assert (await client.invoke("sync")).json()["pid"] != first
        assert _alive(first)
        r = await streaming  # the retired worker finished it
        assert (r.status_code, r.text) == (200, f"started {first}")
        await eventually(lambda: not _alive(first), what="the retired worker process ending")
