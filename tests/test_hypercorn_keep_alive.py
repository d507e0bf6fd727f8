"""Hypercorn's keep-alive timeouts, kept by one timer per server instead of a task per response."""

from __future__ import annotations

import asyncio

from edgeruntime.serving.server import _IdleConnections, _KeepAlive


class Connection:
    """Stands in for Hypercorn's TCPServer: records when it was closed for being idle."""

    def __init__(self) -> None:
        self.closed_at: float | None = None

    async def _initiate_server_close(self) -> None:
        self.closed_at = asyncio.get_running_loop().time()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_idle_connections_are_closed_oldest_first_each_at_its_timeout() -> None:
    loop = asyncio.get_running_loop()
    idle = _IdleConnections(loop, 0.2, asyncio.Event())
    first, second = Connection(), Connection()
    started = loop.time()
    await _KeepAlive(first, idle).restart(None, None)
    await asyncio.sleep(0.1)
    await _KeepAlive(second, idle).restart(None, None)
    await asyncio.sleep(0.15)
    await settle()
    assert first.closed_at is not None and second.closed_at is None
    assert first.closed_at - started >= 0.2
    await asyncio.sleep(0.1)
    await settle()
    assert second.closed_at is not None and second.closed_at - first.closed_at >= 0.09
    assert not idle.waiting


async def test_a_connection_busy_again_is_not_closed_and_idle_again_counts_anew() -> None:
    loop = asyncio.get_running_loop()
    idle = _IdleConnections(loop, 0.2, asyncio.Event())
    connection = Connection()
    keep_alive = _KeepAlive(connection, idle)
    await keep_alive.restart(None, None)
    await asyncio.sleep(0.1)
    await keep_alive.stop()  # a request arrived
    await asyncio.sleep(0.2)
    assert connection.closed_at is None
    await keep_alive.restart(None, None)  # its response was written
    idle_since = loop.time()
    await asyncio.sleep(0.25)
    await settle()
    assert connection.closed_at is not None and connection.closed_at - idle_since >= 0.19


async def test_when_the_server_stops_idle_connections_close_at_once() -> None:
    loop = asyncio.get_running_loop()
    terminated = asyncio.Event()
    idle = _IdleConnections(loop, 60, terminated)
    waiting, later = Connection(), Connection()
    await _KeepAlive(waiting, idle).restart(None, None)
    terminated.set()
    await settle()
    assert waiting.closed_at is not None
    await _KeepAlive(later, idle).restart(None, None)  # a response written after the stop
    await settle()
    assert later.closed_at is not None and not idle.waiting
