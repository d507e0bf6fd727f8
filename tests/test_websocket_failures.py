"""Failure paths of WebSocket connections on a real loopback socket, under both servers and both
isolations: a client that leaves while the function only sends, a function that raises after
accepting, limits while a socket is open, a function that never answers the upgrade."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from edgeruntime.core.types import Message
from edgeruntime.gateway.websocket import Socket
from tests.helpers import ServerProcess, write_function

pytestmark = pytest.mark.e2e

#: Generous: the machine running the suite may be busy.
TIMEOUT_SEC = 20.0
SERVERS = ["hypercorn", "uvicorn"]
ISOLATIONS = ["inline", "process"]

# Sends a tick every 10 ms and never reads: only a failing send can tell it the client left.
TICKER = """
import asyncio
import logging
from edgeruntime import serve, upgrade_websocket

logger = logging.getLogger("ticker")

@serve
async def handler(req):
    ws = await upgrade_websocket(req)
    n = 0
    try:
        for n in range(3000):
            await ws.send_text(f"tick {n}")
            await asyncio.sleep(0.01)
        logger.warning("ticker ran out")
    except BaseException as exc:
        logger.warning("ticker stopped after %d ticks: %s", n, type(exc).__name__)
        raise
    return None
"""


def serve(functions_dir: Path, server_kind: str, isolation: str, *args: str) -> ServerProcess:
    return ServerProcess(
        functions_dir, "--no-watch", "--no-verify-jwt", "--server", server_kind, "--isolation", isolation, *args
    )


def ws_url(server: ServerProcess, name: str) -> str:
    return f"ws://127.0.0.1:{server.port}/functions/v1/{name}"


async def closed(ws: ClientConnection) -> tuple[int, str] | None:
    """Read until the connection closes; the close frame it ended with (None: none came)."""
    try:
        async with asyncio.timeout(TIMEOUT_SEC):
            while True:
                await ws.recv()
    except ConnectionClosed as exc:
        return None if exc.rcvd is None else (exc.rcvd.code, exc.rcvd.reason)
    raise AssertionError("unreachable")


async def wait_for_output(server: ServerProcess, text: str, count: int = 1) -> None:
    deadline = time.monotonic() + TIMEOUT_SEC
    while server.output.count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not logged {count} time(s):\n{server.output}"
        await asyncio.sleep(0.05)


async def runs(server: ServerProcess, count: int) -> list[dict[str, object]]:
    """The `count` newest runs, once there are as many (newest first)."""
    deadline = time.monotonic() + TIMEOUT_SEC
    async with httpx.AsyncClient(timeout=TIMEOUT_SEC) as http:
        while True:
            found: list[dict[str, object]] = (await http.get(f"{server.base_url}/_edgeruntime/api/runs")).json()["runs"]
            if len(found) >= count:
                return found[:count]
            assert time.monotonic() < deadline, found
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("server_kind", SERVERS)
async def test_a_function_that_only_sends_learns_that_its_client_left(
    functions_dir: Path, server_kind: str, isolation: str
) -> None:
    """Hypercorn drops what is sent to a client that left (ASGI 2.3): the function sent on for no
    one, holding its worker, until its loop ended (or the wall clock). It gets a disconnect on its
    next send, as under Uvicorn."""
    write_function(functions_dir, "ticker", TICKER)
    with serve(functions_dir, server_kind, isolation) as server:
        async with connect(ws_url(server, "ticker"), open_timeout=TIMEOUT_SEC) as ws:  # leaves with a close frame
            for _ in range(3):
                await ws.recv()
        ws = await connect(ws_url(server, "ticker"), open_timeout=TIMEOUT_SEC)
        for _ in range(3):
            await ws.recv()
        ws.transport.abort()  # leaves without one
        await wait_for_output(server, "ticker stopped after", 2)
        recorded = await runs(server, 2)
    output = server.output
    assert output.count("ticker stopped after") == 2
    assert "ticker stopped after" in output and "WebSocketDisconnect" in output
    assert "ticker ran out" not in output
    assert [(r["http_status"], r["status"]) for r in recorded] == [(101, "succeeded")] * 2


# "raise" raises after accepting; "hold" holds the socket (the limits end it); "cpu" spins in
# `while True` code, "memory" allocates 1 MB every 5 ms; "?never" answers nothing.
FAILING = """
import asyncio
import time
from edgeruntime import serve, upgrade_websocket

@serve
async def handler(req):
    if "never" in req.query_params:
        await asyncio.sleep(60)
    ws = await upgrade_websocket(req)
    text = await ws.receive_text()
    if text == "raise":
        raise ValueError("ws-boom")
    if text == "cpu":
        end = time.process_time() + 30
        while time.process_time() < end:
            pass
    if text == "memory":
        held = []
        for _ in range(1000):
            held.append(bytearray(1024 * 1024))
            await asyncio.sleep(0.005)
    if text == "hold":
        await asyncio.sleep(60)
    await ws.send_text(text)
    return None
"""

FAILING_CONFIG = """
[functions.failing]
verify_jwt = false
request_idle_timeout_sec = 1
cpu_soft_limit_ms = 200
cpu_hard_limit_ms = 400
memory_limit_mb = 48
"""


@pytest.mark.parametrize("isolation", ISOLATIONS)
@pytest.mark.parametrize("server_kind", SERVERS)
async def test_a_function_that_raises_after_accepting_or_never_answers(
    functions_dir: Path, server_kind: str, isolation: str
) -> None:
    write_function(functions_dir, "failing", FAILING)
    (functions_dir.parent / "config.toml").write_text(FAILING_CONFIG, encoding="utf-8")
    with serve(functions_dir, server_kind, isolation) as server:
        async with connect(ws_url(server, "failing"), open_timeout=TIMEOUT_SEC) as ws:
            await ws.send("raise")
            assert await closed(ws) == (1011, "")
        async with connect(ws_url(server, "failing"), open_timeout=TIMEOUT_SEC) as ws:  # the worker serves on
            await ws.send("next")
            assert await ws.recv() == "next"
        # Neither accepted nor refused within the idle timeout (1 s): 504, as documented.
        with pytest.raises(InvalidStatus) as never:
            await connect(ws_url(server, "failing") + "?never", open_timeout=TIMEOUT_SEC)
        assert never.value.response.status_code == 504
        recorded = await runs(server, 3)
    assert [(r["http_status"], r["status"]) for r in recorded] == [(504, "failed"), (101, "succeeded"), (101, "failed")]
    assert recorded[2]["error"] == "ValueError: ws-boom"
    assert server.output.count("ValueError: ws-boom") == 1, "the function's error is logged once"


async def test_the_cpu_and_memory_limits_close_an_open_socket_with_1001_and_their_reason(functions_dir: Path) -> None:
    """Under process isolation, where the hard limits kill the worker process (the wall clock is
    tested with the other close codes in tests/e2e/test_websockets.py)."""
    write_function(functions_dir, "failing", FAILING)
    (functions_dir.parent / "config.toml").write_text(FAILING_CONFIG, encoding="utf-8")
    with serve(functions_dir, "uvicorn", "process") as server:
        for limit, reason in (("cpu", "cpu"), ("memory", "memory")):
            async with connect(ws_url(server, "failing"), open_timeout=TIMEOUT_SEC) as ws:
                await ws.send(limit)
                assert await closed(ws) == (1001, reason)
        async with connect(ws_url(server, "failing"), open_timeout=TIMEOUT_SEC) as ws:  # a fresh worker
            await ws.send("next")
            assert await ws.recv() == "next"
        recorded = await runs(server, 3)
    assert [(r["http_status"], r["status"], r["error"]) for r in recorded] == [
        (101, "succeeded", None),
        (101, "failed", "failing: Memory limit reached"),
        (101, "failed", "failing: CPUTime limit reached"),
    ]


# Sends 2,000 messages of 64 KiB (128 MiB) once the client says "flood".
FLOOD = """
from edgeruntime import serve, upgrade_websocket

@serve
async def handler(req):
    ws = await upgrade_websocket(req)
    if await ws.receive_text() == "flood":
        chunk = "x" * 65536
        for _ in range(2000):
            await ws.send_text(chunk)
        await ws.send_text("done")
    return None
"""


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.parametrize("server_kind", SERVERS)
async def test_a_client_that_does_not_read_holds_an_inline_function_back(functions_dir: Path, server_kind: str) -> None:
    """Inline, the function's send waits on the server's own flow control (process isolation:
    tests/e2e/test_websockets.py)."""
    write_function(functions_dir, "flood", FLOOD)
    with serve(functions_dir, server_kind, "inline") as server:
        async with connect(ws_url(server, "flood"), open_timeout=TIMEOUT_SEC, compression=None) as ws:
            await ws.send("warm-up")
        baseline = _rss_mb(server.proc.pid)
        # It leaves without reading through the flood to the close frame (close_timeout).
        async with connect(
            ws_url(server, "flood"), open_timeout=TIMEOUT_SEC, max_queue=1, compression=None, close_timeout=0.5
        ) as ws:
            await ws.send("flood")
            await asyncio.sleep(1.5)
            grown = _rss_mb(server.proc.pid) - baseline
    assert grown < 48, f"the server's memory grew by {grown:.0f} MB while its client did not read"


class _Server:
    """The server's side of one accepted connection, as Hypercorn queues it (ASGI 2.3)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        return await self.queue.get()

    async def send(self, message: Message) -> None:
        self.sent.append(message)  # dropped by the server once the client is gone: never raises


async def test_a_look_ahead_keeps_the_clients_messages_in_order_and_a_send_after_its_leaving_raises() -> None:
    server = _Server()
    socket = Socket({"type": "websocket", "asgi": {"spec_version": "2.3"}}, server.receive, server.send)
    await socket.send({"type": "websocket.accept"})
    await socket.send({"type": "websocket.send", "text": "a"})  # reads ahead: nothing came yet
    with pytest.raises(TimeoutError):  # a receive cancelled while it waits loses nothing
        async with asyncio.timeout(0.01):
            await socket.receive()
    server.queue.put_nowait({"type": "websocket.receive", "text": "1"})
    server.queue.put_nowait({"type": "websocket.receive", "text": "2"})
    assert (await socket.receive())["text"] == "1"
    assert (await socket.receive())["text"] == "2"
    await socket.send({"type": "websocket.send", "text": "b"})
    server.queue.put_nowait({"type": "websocket.disconnect", "code": 1001})
    await asyncio.sleep(0.01)  # the look-ahead reads it
    with pytest.raises(OSError):
        await socket.send({"type": "websocket.send", "text": "c"})
    assert [m.get("text") for m in server.sent] == [None, "a", "b"]
    assert (await socket.receive()) == {"type": "websocket.disconnect", "code": 1001}
    assert socket.client_gone and socket.close_code == 1001
