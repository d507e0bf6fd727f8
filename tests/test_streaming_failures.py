"""Failure paths of streamed responses on a real loopback socket, under both servers and both
isolations: a function that raises mid-stream, a client that leaves, one that never reads, a limit
reached mid-stream. All held when written; kept so."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import ServerProcess, child_pids, write_function

pytestmark = pytest.mark.e2e

TIMEOUT_SEC = 20.0
SERVERS = ["hypercorn", "uvicorn"]
ISOLATIONS = ["inline", "process"]

STREAMS = """
import asyncio
import signal
import logging
import time
from starlette.responses import PlainTextResponse, StreamingResponse
from edgeruntime import serve

logger = logging.getLogger("streams")
CHUNK = b"x" * 65536

async def raising():
    yield "data: 0\\n\\n"
    await asyncio.sleep(0.02)
    yield "data: 1\\n\\n"
    await asyncio.sleep(0.02)
    raise ValueError("stream-boom")

async def forever():
    try:
        for n in range(3000):
            yield f"data: {n}\\n\\n"
            await asyncio.sleep(0.02)
    except BaseException:
        logger.warning("forever cancelled")
        raise

async def flood():
    for _ in range(2000):  # 128 MiB
        yield CHUNK

async def burn():
    yield "data: 0\\n\\n"
    await asyncio.sleep(0.02)
    end = time.process_time() + 30
    while time.process_time() < end:
        pass
    yield "data: 1\\n\\n"

STREAMED = {"/raise": raising, "/forever": forever, "/flood": flood, "/burn": burn}

@serve
async def handler(req):
    for suffix, make in STREAMED.items():
        if req.url.path.endswith(suffix):
            return StreamingResponse(make(), media_type="text/event-stream")
    return PlainTextResponse("ok")
"""

LIMITS_CONFIG = """
[functions.hog]
verify_jwt = false
wall_clock_limit_sec = 1.5
cpu_soft_limit_ms = 200
cpu_hard_limit_ms = 400
"""


def serve(functions_dir: Path, server_kind: str, isolation: str) -> ServerProcess:
    return ServerProcess(
        functions_dir, "--no-watch", "--no-verify-jwt", "--server", server_kind, "--isolation", isolation
    )


async def read_stream(url: str) -> tuple[bytes, Exception | None]:
    """What the client received of the response at `url`, and how it ended (None: complete)."""
    received = b""
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_SEC) as http, http.stream("GET", url) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                received += chunk
    except httpx.HTTPError as exc:
        return received, exc
    return received, None


async def api(server: ServerProcess, path: str) -> object:
    async with httpx.AsyncClient(timeout=TIMEOUT_SEC) as http:
        return (await http.get(f"{server.base_url}/_edgeruntime/api/{path}")).json()


async def newest_run(server: ServerProcess, count: int) -> dict[str, object]:
    """The newest run, once `count` runs are recorded."""
    deadline = time.monotonic() + TIMEOUT_SEC
    while True:
        runs = await api(server, "runs")
        assert isinstance(runs, dict)
        if len(runs["runs"]) >= count:
            run: dict[str, object] = runs["runs"][0]
            return run
        assert time.monotonic() < deadline, runs
        await asyncio.sleep(0.05)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of `pid` and every process under it."""
    total = 0.0
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return 0.0
    return total + sum(tree_rss_mb(child) for child in child_pids(pid))


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("server_kind", SERVERS)
async def test_a_stream_that_fails_or_loses_its_client(functions_dir: Path, server_kind: str, isolation: str) -> None:
    write_function(functions_dir, "streams", STREAMS)
    with serve(functions_dir, server_kind, isolation) as server:
        # The function raises mid-stream: the client sees a cut body (no last chunk), not a complete one.
        received, ended = await read_stream(server.url("streams", "/raise"))
        assert received == b"data: 0\n\ndata: 1\n\n"
        assert isinstance(ended, httpx.RemoteProtocolError), ended
        run = await newest_run(server, 1)
        assert (run["http_status"], run["status"], run["error"]) == (200, "failed", "ValueError: stream-boom")
        assert (await read_stream(server.url("streams")))[0] == b"ok"  # the worker serves on

        # The client leaves mid-stream: the generator is cancelled and the worker's slot released.
        async with (
            httpx.AsyncClient(timeout=TIMEOUT_SEC) as http,
            http.stream("GET", server.url("streams", "/forever")) as r,
        ):
            async for _ in r.aiter_raw():
                break
        deadline = time.monotonic() + TIMEOUT_SEC
        while "forever cancelled" not in server.output:
            assert time.monotonic() < deadline, server.output
            await asyncio.sleep(0.05)
        while True:
            functions = await api(server, "functions")
            assert isinstance(functions, dict)
            workers = functions["functions"][0]["workers"] if "functions" in functions else []
            if workers and all(w["in_flight"] == 0 for w in workers):
                break
            assert time.monotonic() < deadline, functions
            await asyncio.sleep(0.05)

        # A client that never reads a fast stream: the function waits, nothing piles up in memory.
        baseline = tree_rss_mb(server.proc.pid)
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_SEC) as deaf:
            deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            deaf.sendall(b"GET /functions/v1/streams/flood HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await asyncio.sleep(1.5)
            grown = tree_rss_mb(server.proc.pid) - baseline
        assert grown < 48, f"the server grew by {grown:.0f} MB for a client that reads nothing"
        assert (await read_stream(server.url("streams")))[0] == b"ok"
    output = server.output
    assert output.count("ValueError: stream-boom") == 1, "the function's error is logged once"


@pytest.mark.parametrize(("server_kind", "isolation"), [("hypercorn", "inline"), ("uvicorn", "process")])
async def test_a_limit_reached_mid_stream_cuts_the_body_and_the_run_says_which(
    functions_dir: Path, server_kind: str, isolation: str
) -> None:
    """Inline: the wall clock; process isolation: the CPU hard limit, in `while True` code."""
    write_function(functions_dir, "hog", STREAMS)
    (functions_dir.parent / "config.toml").write_text(LIMITS_CONFIG, encoding="utf-8")
    path, reason = ("/forever", "WallClockTime") if isolation == "inline" else ("/burn", "CPUTime")
    with serve(functions_dir, server_kind, isolation) as server:
        received, ended = await read_stream(server.url("hog", path))
        assert received.startswith(b"data: 0\n\n")
        assert isinstance(ended, httpx.RemoteProtocolError), ended
        run = await newest_run(server, 1)
        assert (run["http_status"], run["status"], run["error"]) == (200, "failed", f"hog: {reason} limit reached")
        assert (await read_stream(server.url("hog")))[0] == b"ok"  # a fresh worker


ENDS_ON_UNLOAD = """
import asyncio
import signal
from starlette.responses import StreamingResponse
from edgeruntime import EdgeRuntime, serve

unloading = asyncio.Event()
EdgeRuntime.on("beforeunload", lambda event: unloading.set())

async def ticks():
    n = 0
    while not unloading.is_set():
        yield f"data: {n}\\n\\n"
        n += 1
        try:
            await asyncio.wait_for(unloading.wait(), 0.05)
        except TimeoutError:
            pass
    yield "event: bye\\ndata: termination\\n\\n"

@serve
async def handler(req):
    return StreamingResponse(ticks(), media_type="text/event-stream")
"""


@pytest.mark.parametrize(("server_kind", "isolation"), [("uvicorn", "inline"), ("hypercorn", "process")])
async def test_on_shutdown_an_endless_stream_hears_beforeunload_and_ends_itself(
    functions_dir: Path, server_kind: str, isolation: str
) -> None:
    """SIGTERM: the server finishes in-flight requests, so a stream that never ends would be cut at
    the end of the graceful timeout; its function hears `beforeunload` (termination) when the
    shutdown begins, and can end the stream, as a WebSocket's does before it is closed."""
    write_function(functions_dir, "ticks", ENDS_ON_UNLOAD)
    server = ServerProcess(
        functions_dir,
        "--no-watch",
        "--no-verify-jwt",
        "--server",
        server_kind,
        "--isolation",
        isolation,
        "--graceful-exit-timeout",
        "12",
    )
    with server:
        received = b""
        async with httpx.AsyncClient(timeout=TIMEOUT_SEC) as http, http.stream("GET", server.url("ticks")) as response:
            assert response.status_code == 200
            started = 0.0
            async for chunk in response.aiter_raw():
                received += chunk
                if not started:
                    started = time.monotonic()
                    server.proc.send_signal(signal.SIGTERM)
        ended_after = time.monotonic() - started
        assert received.endswith(b"event: bye\ndata: termination\n\n"), received[-200:]
        assert ended_after < 6, ended_after  # not the graceful timeout's 12 s
        assert server.proc.wait(TIMEOUT_SEC) == 0, server.output
    assert "Traceback" not in server.output, server.output
