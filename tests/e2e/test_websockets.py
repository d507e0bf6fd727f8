"""WebSockets through `edgeruntime serve` on a real loopback socket, with the real `websockets` client.

Every combination of server (Hypercorn, Uvicorn) and isolation (inline, process) echoes; the limits,
crashes, load, reload and bad input run where they differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.helpers import SERVICE_ROLE, ServerProcess, status_of, write_function

pytestmark = pytest.mark.e2e

#: Generous: the machine running the suite may be busy.
TIMEOUT_SEC = 20.0

# Echoes text and binary messages; "close" closes with 4001, "crash" kills its worker process;
# "wait" starts background work; `beforeunload` is told to every open socket.
ECHO = """
import asyncio
import os
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import EdgeRuntime, serve, upgrade_websocket

SOCKETS = set()

async def say_goodbye(event) -> None:
    for ws in list(SOCKETS):
        await ws.send_text(f"beforeunload: {event.reason}")

EdgeRuntime.on("beforeunload", say_goodbye)

AUDITED = []

async def audit(text: str) -> None:
    await asyncio.sleep(0.05)
    AUDITED.append(text)

async def handler(req: Request):
    if req.headers.get("upgrade", "").lower() != "websocket":
        return JSONResponse({"error": "request isn't trying to upgrade to WebSocket."}, status_code=400)
    ws = await upgrade_websocket(req)
    SOCKETS.add(ws)
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return None
            text = message.get("text")
            if text == "close":
                await ws.close(4001, "bye")
                return None
            if text == "crash":
                os._exit(3)
            if text is not None and text.startswith("wait:"):
                EdgeRuntime.wait_until(audit(text))
            if text is not None:
                await ws.send_text(text)
            else:
                await ws.send_bytes(message["bytes"])
    finally:
        SOCKETS.discard(ws)

serve(handler)
"""

SERVERS = ["hypercorn", "uvicorn"]
ISOLATIONS = ["inline", "process"]


def ws_url(server: ServerProcess, name: str, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}/functions/v1/{name}{'?' + query if query else ''}"


@pytest.fixture
def echo_dir(functions_dir: Path) -> Path:
    write_function(functions_dir, "echo", ECHO)
    return functions_dir


def serve(functions_dir: Path, *args: str, server: str = "hypercorn") -> ServerProcess:
    return ServerProcess(functions_dir, "--no-watch", "--no-verify-jwt", "--server", server, *args)


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=TIMEOUT_SEC) as http:
        return await http.get(url)


async def closed(ws: ClientConnection) -> ConnectionClosed:
    """Read until the connection closes; the close it ended with."""
    try:
        async with asyncio.timeout(TIMEOUT_SEC):
            while True:
                await ws.recv()
    except ConnectionClosed as exc:
        return exc
    raise AssertionError("unreachable")


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("server_kind", SERVERS)
async def test_echo_text_and_binary_and_the_functions_close_code(
    echo_dir: Path, server_kind: str, isolation: str
) -> None:
    with serve(echo_dir, "--isolation", isolation, server=server_kind) as server:
        async with connect(ws_url(server, "echo"), open_timeout=TIMEOUT_SEC) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x00\xffbinary")
            assert await ws.recv() == b"\x00\xffbinary"
            await ws.send("héllo ✓")
            assert await ws.recv() == "héllo ✓"
            await ws.send("close")
            close = await closed(ws)
        assert close.rcvd is not None and (close.rcvd.code, close.rcvd.reason) == (4001, "bye")
        # A plain GET gets the function's own answer.
        r = await get(server.url("echo"))
        assert (r.status_code, r.json()) == (400, {"error": "request isn't trying to upgrade to WebSocket."})


WALL_CLOCK_CONFIG = """
[functions.echo]
verify_jwt = false
wall_clock_limit_sec = 2
"""


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_a_socket_held_past_the_wall_clock_is_closed_with_1001_after_beforeunload(
    echo_dir: Path, isolation: str
) -> None:
    (echo_dir.parent / "config.toml").write_text(WALL_CLOCK_CONFIG, encoding="utf-8")
    with serve(echo_dir, "--isolation", isolation) as server:
        async with connect(ws_url(server, "echo"), open_timeout=TIMEOUT_SEC) as ws:
            opened = time.monotonic()
            await ws.send("still here")
            assert await ws.recv() == "still here"
            # The worker retires at 1 s (new connections go to a fresh worker) but keeps this socket.
            assert await asyncio.wait_for(ws.recv(), TIMEOUT_SEC) == "beforeunload: wall_clock"
            close = await closed(ws)
            held = time.monotonic() - opened
    assert close.rcvd is not None and (close.rcvd.code, close.rcvd.reason) == (1001, "wall_clock")
    assert 1.5 < held < 2 + TIMEOUT_SEC / 2
    assert "GET /functions/v1/echo 101" in server.output


@pytest.mark.parametrize("server_kind", SERVERS)
async def test_shutdown_closes_open_sockets_with_1001_after_beforeunload(echo_dir: Path, server_kind: str) -> None:
    """Not cut at the end of the graceful timeout (Hypercorn: 1011 after 15 s; Uvicorn: 1012 at once)."""
    with serve(echo_dir, "--isolation", "process", server=server_kind) as server:
        async with connect(ws_url(server, "echo"), open_timeout=TIMEOUT_SEC) as ws:
            await ws.send("ping")
            assert await ws.recv() == "ping"
            started = time.monotonic()
            stopping = asyncio.get_running_loop().run_in_executor(None, server.terminate)
            assert await asyncio.wait_for(ws.recv(), TIMEOUT_SEC) == "beforeunload: termination"
            close = await closed(ws)
            took = time.monotonic() - started
            assert await stopping == 0
    assert close.rcvd is not None and (close.rcvd.code, close.rcvd.reason) == (1001, "termination")
    assert took < 10, f"the socket was closed {took:.1f} s after SIGTERM"


async def test_a_worker_crash_closes_its_sockets_with_1011(echo_dir: Path) -> None:
    with serve(echo_dir, "--isolation", "process", server="uvicorn") as server:
        url = ws_url(server, "echo")
        async with (
            connect(url, open_timeout=TIMEOUT_SEC) as first,
            connect(url, open_timeout=TIMEOUT_SEC) as second,
            connect(url, open_timeout=TIMEOUT_SEC) as third,
        ):
            for ws in (first, second, third):
                await ws.send("ping")
                assert await ws.recv() == "ping"
            await second.send("crash")
            closes = [await closed(ws) for ws in (first, second, third)]
        for close in closes:
            assert close.rcvd is not None and (close.rcvd.code, close.rcvd.reason) == (1011, "crash")
        # The next connection boots a fresh worker.
        async with connect(url, open_timeout=TIMEOUT_SEC) as ws:
            await ws.send("again")
            assert await ws.recv() == "again"
    assert "worker process of echo exited unexpectedly (exit status 3)" in server.output


@pytest.mark.parametrize(("server_kind", "isolation"), [("hypercorn", "process"), ("uvicorn", "inline")])
async def test_200_concurrent_sockets_each_exchanging_50_messages(
    echo_dir: Path, server_kind: str, isolation: str
) -> None:
    sockets, messages = 200, 50

    async def talk(n: int) -> list[str]:
        async with connect(ws_url(server, "echo"), open_timeout=60, close_timeout=30) as ws:
            received = []
            for i in range(messages):
                await ws.send(f"{n}:{i}")
                received.append(str(await ws.recv()))
            return received

    with serve(echo_dir, "--isolation", isolation, server=server_kind) as server:
        # One socket first: the worker boots once, not under 200 connections at once.
        assert await talk(-1) == [f"-1:{i}" for i in range(messages)]
        started = time.monotonic()
        async with asyncio.timeout(120):
            results = await asyncio.gather(*(talk(n) for n in range(sockets)))
        elapsed = time.monotonic() - started
    for n, received in enumerate(results):
        assert received == [f"{n}:{i}" for i in range(messages)], f"socket {n} lost or reordered messages"
    print(f"{sockets} sockets x {messages} round trips ({server_kind}, {isolation}): {elapsed:.2f} s")


async def test_the_gateway_rules_apply_to_the_upgrade_request(echo_dir: Path) -> None:
    with ServerProcess(echo_dir, "--no-watch") as server:
        url = ws_url(server, "echo")
        with pytest.raises(InvalidStatus) as missing:
            await connect(url, open_timeout=TIMEOUT_SEC)
        assert missing.value.response.status_code == 401
        assert json.loads(missing.value.response.body) == {"msg": "Error: Missing authorization header"}
        with pytest.raises(InvalidStatus) as unknown:
            await connect(ws_url(server, "nope"), additional_headers=SERVICE_ROLE, open_timeout=TIMEOUT_SEC)
        assert (unknown.value.response.status_code, unknown.value.response.body) == (404, b"Function not found")
        twice = [("Authorization", SERVICE_ROLE["Authorization"]), ("Authorization", "Bearer forged")]
        with pytest.raises(InvalidStatus) as duplicate:
            await connect(url, additional_headers=twice, open_timeout=TIMEOUT_SEC)
        assert duplicate.value.response.status_code == 400
        for path in ("/_edgeruntime/", "/_internal/health", "/_internal/metrics"):
            with pytest.raises(InvalidStatus) as other:
                await connect(f"ws://127.0.0.1:{server.port}{path}", open_timeout=TIMEOUT_SEC)
            assert other.value.response.status_code == 404, path
        async with connect(url, additional_headers=SERVICE_ROLE, open_timeout=TIMEOUT_SEC) as ws:
            await ws.send("verified")
            assert await ws.recv() == "verified"


# Answers every request with JSON; never upgrades.
NOT_A_WEBSOCKET = """
from starlette.responses import JSONResponse
from edgeruntime import serve

@serve
async def handler(req):
    return JSONResponse({"message": "hello"})
"""

MESSAGE_LIMIT_CONFIG = """
[functions.echo]
verify_jwt = false
max_websocket_message_mb = 0.01
"""


def _raw_upgrade(port: int, extra: str) -> int | None:
    handshake = (
        f"GET /functions/v1/echo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"{extra}\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_SEC) as conn:
        conn.sendall(handshake.encode())
        return status_of(conn.recv(4096))


@pytest.mark.parametrize("server_kind", SERVERS)
async def test_bad_input_is_refused_and_the_server_keeps_serving(echo_dir: Path, server_kind: str) -> None:
    write_function(echo_dir, "hello", NOT_A_WEBSOCKET)
    (echo_dir.parent / "config.toml").write_text(MESSAGE_LIMIT_CONFIG, encoding="utf-8")
    with serve(echo_dir, server=server_kind) as server:
        # A malformed upgrade: no Sec-WebSocket-Key, or a version other than 13.
        assert _raw_upgrade(server.port, "Sec-WebSocket-Version: 13\r\n") == 400
        assert _raw_upgrade(
            server.port, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n"
        ) in (
            400,
            426,
        )
        # A function that does not accept the upgrade: its own answer, and a log line that says so.
        with pytest.raises(InvalidStatus) as refused:
            await connect(ws_url(server, "hello"), open_timeout=TIMEOUT_SEC)
        assert refused.value.response.status_code == 200
        # A message over the function's max_websocket_message_mb (10 KB) closes the connection with 1009.
        async with connect(ws_url(server, "echo"), open_timeout=TIMEOUT_SEC, max_size=None) as ws:
            await ws.send("x" * 5_000)
            assert await ws.recv() == "x" * 5_000
            await ws.send("x" * 20_000)
            close = await closed(ws)
        assert close.rcvd is not None and close.rcvd.code == 1009
        # One over the server's own limit (the largest any function allows) is refused by the server.
        async with connect(ws_url(server, "echo"), open_timeout=TIMEOUT_SEC, max_size=None) as ws:
            await ws.send(b"x" * (2 * 1024 * 1024))
            close = await closed(ws)
        assert close.rcvd is not None and close.rcvd.code == 1009
        async with connect(ws_url(server, "echo"), open_timeout=TIMEOUT_SEC) as ws:
            await ws.send("still serving")
            assert await ws.recv() == "still serving"
        assert (await get(server.url("hello"))).status_code == 200
    output = server.output
    assert "function hello did not accept the WebSocket upgrade request: it answered 200" in output
    assert "over its max_websocket_message_mb" in output


async def test_hot_reload_leaves_open_sockets_on_the_old_worker(echo_dir: Path) -> None:
    with ServerProcess(echo_dir, "--no-verify-jwt", "--isolation", "process") as server:
        async with connect(ws_url(server, "echo"), open_timeout=TIMEOUT_SEC) as old:
            await old.send("before")
            assert await old.recv() == "before"
            write_function(
                echo_dir, "echo", ECHO.replace("await ws.send_text(text)", "await ws.send_text(text.upper())")
            )
            deadline = time.monotonic() + TIMEOUT_SEC
            while True:  # until the watcher reloaded the function
                async with connect(ws_url(server, "echo"), open_timeout=TIMEOUT_SEC) as new:
                    await new.send("new code")
                    if await new.recv() == "NEW CODE":
                        break
                assert time.monotonic() < deadline, server.output
                await asyncio.sleep(0.2)
            await old.send("old code")
            assert await old.recv() == "old code"


async def test_each_connection_is_recorded_and_its_background_work_runs(echo_dir: Path) -> None:
    with serve(echo_dir, "--isolation", "process") as server:
        for n in range(2):
            async with connect(ws_url(server, "echo"), open_timeout=TIMEOUT_SEC) as ws:
                await ws.send(f"wait:{n}")
                assert await ws.recv() == f"wait:{n}"
        deadline = time.monotonic() + TIMEOUT_SEC
        while time.monotonic() < deadline:
            runs = (await get(f"{server.base_url}/_edgeruntime/api/runs")).json()["runs"]
            connections = [r for r in runs if r["kind"] == "invocation" and r["trigger"] == "websocket"]
            tasks = [t for r in connections for t in r["tasks"] if t["status"] == "completed"]
            if len(connections) == 2 and len(tasks) == 2:
                break
            await asyncio.sleep(0.1)
        assert [(r["function"], r["http_status"], r["status"]) for r in connections] == [("echo", 101, "succeeded")] * 2
        assert {t["execution_id"] for t in tasks} == {r["execution_id"] for r in connections}
        metrics = (await get(f"{server.base_url}/_internal/metrics")).text
    assert 'edgeruntime_requests_total{function="echo",status="101",trigger="websocket"} 2.0' in metrics


# Floods on "flood" (2,000 messages of 64 KiB: 128 MiB); reads nothing more for 2 s on "deaf".
FLOOD = """
import asyncio
from edgeruntime import serve, upgrade_websocket

@serve
async def handler(req):
    ws = await upgrade_websocket(req)
    first = await ws.receive_text()
    if first == "flood":
        chunk = "x" * 65536
        for _ in range(2000):
            await ws.send_text(chunk)
        await ws.send_text("done")
    elif first == "deaf":
        await asyncio.sleep(2)
    return None
"""


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("server_kind", SERVERS)
async def test_a_slow_reader_holds_the_writer_back_under_process_isolation(
    functions_dir: Path, server_kind: str
) -> None:
    write_function(functions_dir, "flood", FLOOD)
    with serve(functions_dir, "--isolation", "process", server=server_kind) as server:
        url = ws_url(server, "flood")
        # The function writes 128 MiB to a client that does not read: it waits instead of the
        # server buffering what it wrote. (No compression: 64 KiB of "x" would deflate to nothing.)
        async with connect(url, open_timeout=TIMEOUT_SEC, compression=None) as ws:
            await ws.send("warm-up")  # the function boots, and returns
        baseline = _rss_mb(server.proc.pid)
        async with connect(url, open_timeout=TIMEOUT_SEC, max_queue=1, compression=None) as ws:
            await ws.send("flood")
            await asyncio.sleep(1.5)
            grown = _rss_mb(server.proc.pid) - baseline
            received = 0
            async with asyncio.timeout(60):
                while await ws.recv() != "done":
                    received += 1
        assert received == 2000
        assert grown < 48, f"the server's memory grew by {grown:.0f} MB while its client did not read"
        # The other way: a function that does not read holds back a client that floods it.
        async with connect(url, open_timeout=TIMEOUT_SEC, write_limit=65536, compression=None) as ws:
            await ws.send("deaf")
            sent = 0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.5):
                    for _ in range(2000):
                        await ws.send(os.urandom(65536))
                        sent += 1
        assert sent < 500, f"{sent} messages of 64 KiB went to a function that reads none"
