"""The server runner's collector tuning: paused start-up, thresholds, a freeze once serving."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from edgeruntime import server
from edgeruntime.exceptions import UsageError
from edgeruntime.types import Receive, Scope, Send


@pytest.fixture
def collector() -> Iterator[None]:
    """Restore the collector as it was: on, unfrozen, the same thresholds."""
    before = gc.get_threshold()
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
        gc.enable()


def test_gc_setting_is_validated(collector: None) -> None:
    before = gc.get_threshold()
    with pytest.raises(UsageError, match="EDGERUNTIME_GC='lots'"):
        server.tune_gc("lots")
    server.tune_gc("default")
    assert gc.get_threshold() == before
    server.tune_gc("1000,20,30")
    assert gc.get_threshold() == (1000, 20, 30)
    assert gc.get_freeze_count() > 0


def test_gc_thresholds() -> None:
    assert server.gc_thresholds("") == server.GC_THRESHOLDS
    assert server.gc_thresholds("default") is None
    assert server.gc_thresholds("7,8,9") == (7, 8, 9)
    with pytest.raises(UsageError, match="EDGERUNTIME_GC='1,2'"):
        server.gc_thresholds("1,2")


async def test_start_gc_turns_the_collector_on_and_freezes_once_serving(
    collector: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "FREEZE_DELAY_SEC", 0.01)
    gc.disable()
    server._start_gc("1000,20,30")
    assert gc.isenabled()
    assert gc.get_threshold() == (1000, 20, 30)
    assert gc.get_freeze_count() == 0  # the full collection waits until the server is up
    await asyncio.sleep(0.1)
    assert gc.get_freeze_count() > 0


async def test_start_gc_default_only_turns_it_on(collector: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "FREEZE_DELAY_SEC", 0.01)
    before = gc.get_threshold()
    gc.disable()
    server._start_gc("default")
    await asyncio.sleep(0.05)
    assert gc.isenabled()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_uvicorn_websockets_are_made_by_uvicorns_own_protocol_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    from uvicorn.protocols.websockets import auto

    class Protocol(asyncio.Protocol):
        def __init__(self, **kwargs: object) -> None:
            self.kwargs = kwargs

    monkeypatch.setattr(auto, "AutoWebSocketsProtocol", Protocol)
    factory = server._uvicorn_websockets()
    assert callable(factory)
    made = factory(config="c", server_state="s", app_state={})
    assert isinstance(made, Protocol) and made.kwargs == {"config": "c", "server_state": "s", "app_state": {}}


def test_uvicorn_websockets_off_without_a_websocket_library(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    assert server._uvicorn_websockets() == "none"  # what uvicorn's "auto" finds then


class RecordingTransport(asyncio.Transport):
    """Records what reaches the socket."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.fail = fail

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.fail:
            raise ConnectionResetError("gone")
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 8000) if name == "peername" else default


async def test_batched_writes_leave_once_per_loop_iteration_one_system_call_per_connection() -> None:
    loop = asyncio.get_running_loop()
    batch = server.WriteBatch()
    first, second = RecordingTransport(), RecordingTransport()
    a = server.BatchedTransport(first, batch, loop)
    b = server.BatchedTransport(second, batch, loop)
    a.write(b"HTTP/1.1 200 OK\r\n\r\n")
    b.write(bytearray(b"HTTP/1.1 404 "))
    a.write(b"hello")
    b.writelines([b"Not Found\r\n\r\n", memoryview(b"no")])
    assert (first.writes, second.writes) == ([], [])
    assert a.get_write_buffer_size() == 7 + 24
    await asyncio.sleep(0)  # the end of this iteration
    assert first.writes == [b"HTTP/1.1 200 OK\r\n\r\nhello"]
    assert second.writes == [b"HTTP/1.1 404 Not Found\r\n\r\nno"]
    assert a.get_extra_info("peername") == ("127.0.0.1", 8000)
    a.write(b"again")
    await asyncio.sleep(0)
    assert first.writes[-1] == b"again"


async def test_a_large_body_is_written_at_once_so_flow_control_still_applies() -> None:
    transport = RecordingTransport()
    batched = server.BatchedTransport(transport, server.WriteBatch(), asyncio.get_running_loop())
    batched.write(b"head")
    batched.write(b"x" * server.WRITE_THROUGH_BYTES)
    assert transport.writes == [b"head" + b"x" * server.WRITE_THROUGH_BYTES]
    await asyncio.sleep(0)
    assert len(transport.writes) == 1


async def test_close_writes_what_is_buffered_first_and_a_closed_connection_gets_nothing() -> None:
    loop = asyncio.get_running_loop()
    batch = server.WriteBatch()
    transport = RecordingTransport()
    batched = server.BatchedTransport(transport, batch, loop)
    batched.write(b"last response")
    batched.close()
    assert (transport.writes, transport.closed, batched.is_closing()) == ([b"last response"], True, True)
    batched.write(b"too late")
    await asyncio.sleep(0)
    assert transport.writes == [b"last response"]


async def test_one_failing_connection_does_not_hold_back_the_others(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    batch = server.WriteBatch()
    broken, fine = RecordingTransport(fail=True), RecordingTransport()
    server.BatchedTransport(broken, batch, loop).write(b"lost")
    server.BatchedTransport(fine, batch, loop).write(b"delivered")
    await asyncio.sleep(0)
    assert fine.writes == [b"delivered"]
    assert "writing to a connection failed" in caplog.text


async def test_uvicorn_connections_write_through_a_batched_transport() -> None:
    import uvicorn
    from uvicorn.server import ServerState

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    config = uvicorn.Config(app, lifespan="off", http=server._uvicorn_http())
    config.load()
    protocol = config.http_protocol_class(  # type: ignore[call-arg]
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    raw = RecordingTransport()
    protocol.connection_made(raw)
    transport = protocol.transport  # type: ignore[attr-defined]
    assert isinstance(transport, server.BatchedTransport)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(100):
        if raw.writes:
            break
        await asyncio.sleep(0.01)
    (response,) = raw.writes  # status line, headers and body in one write
    assert response.startswith(b"HTTP/1.1 200 OK\r\n") and response.endswith(b"\r\n\r\nok")
    protocol.connection_lost(None)
