"""The server runner's collector tuning: paused start-up, thresholds, a freeze once serving."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from edgeruntime import server
from edgeruntime.exceptions import UsageError
from edgeruntime.transport import BatchedTransport
from edgeruntime.types import Receive, Scope, Send
from tests.helpers import RecordingTransport


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
    assert isinstance(transport, BatchedTransport)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(100):
        if raw.writes:
            break
        await asyncio.sleep(0.01)
    (response,) = raw.writes  # status line, headers and body in one write
    assert response.startswith(b"HTTP/1.1 200 OK\r\n") and response.endswith(b"\r\n\r\nok")
    protocol.connection_lost(None)
