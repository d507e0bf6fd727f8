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
from websockets.exceptions import ConnectionClosed

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
