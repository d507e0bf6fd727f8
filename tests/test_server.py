"""The server runner: the server chosen, its protocols, connections written through a batched transport."""

from __future__ import annotations

import asyncio

import pytest

from edgeruntime.core.transport import BatchedTransport
from edgeruntime.exceptions import UsageError
from edgeruntime.serving import server


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
