"""The server runner's collector tuning: paused start-up, thresholds, a freeze once serving."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from edgeruntime.core.transport import BatchedTransport
from edgeruntime.exceptions import UsageError
from edgeruntime.serving import server


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


async def test_gc_setting_is_validated_and_default_keeps_pythons_thresholds(collector: None) -> None:
    before = gc.get_threshold()
    with pytest.raises(UsageError, match="EDGERUNTIME_GC='lots'"):
        server._start_gc("lots")
    gc.disable()
    server._start_gc("default")
    assert gc.isenabled()
    assert gc.get_threshold() == before


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


@pytest.mark.parametrize("server_kind", ["hypercorn", "uvicorn"])
def test_connections_accepted_on_the_serving_loop_write_through_a_batched_transport(server_kind: str) -> None:
    accepted: list[asyncio.BaseTransport] = []

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.append(transport)

        def data_received(self, data: bytes) -> None:  # called by the socket's transport itself
            transport = accepted[0]
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(b"echo:")
            transport.write(data)

    async def exchange() -> bytes:
        listening = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0)
        port = listening.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hi")
        reply = await asyncio.wait_for(reader.readexactly(7), 10)
        (transport,) = accepted
        assert isinstance(transport, BatchedTransport)
        assert isinstance(transport.get_protocol(), Echo)  # the socket talks to it directly
        writer.close()
        listening.close()
        await listening.wait_closed()
        return reply

    with asyncio.Runner(loop_factory=server.serving_loop(server_kind)) as runner:
        assert runner.run(exchange()) == b"echo:hi"


def test_server_auto_is_uvicorn_with_uvloop_and_httptools_else_hypercorn(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    assert server.resolve_server("auto") == "uvicorn"  # all three come with edgeruntime
    assert (server.resolve_server("hypercorn"), server.resolve_server("uvicorn")) == ("hypercorn", "uvicorn")
    with pytest.raises(UsageError, match=r"^--server: expected one of auto, uvicorn, hypercorn, got 'gunicorn'$"):
        server.resolve_server("gunicorn")
    real = importlib.util.find_spec
    for missing in server.FAST_SERVER_MODULES:
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, m=missing: None if name == m else real(name))
        assert server.missing_fast_server() == [missing]
        assert server.resolve_server("auto") == "hypercorn"


def test_the_shared_listening_socket_is_one_line_when_it_cannot_be_bound() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UsageError, match=rf"^port {port} on 127.0.0.1 is already in use$"):
            server.listening_socket("127.0.0.1", port)
    with server.listening_socket("127.0.0.1", 0) as sock:
        import os

        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert not os.get_inheritable(sock.fileno())  # passed on only to the serving processes, explicitly
