"""functions/websocket-relay on a real socket, with the real `websockets` client; its upstream (the
OpenAI Realtime API) is a local WebSocket server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.helpers import KEYS, ServerProcess

pytestmark = pytest.mark.e2e

TIMEOUT_SEC = 20.0


def ws_url(server: ServerProcess, name: str, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}/functions/v1/{name}{'?' + query if query else ''}"


@pytest.fixture
def upstream() -> Iterator[str]:
    """A WebSocket server on loopback standing in for the OpenAI Realtime API: answers each
    event with a `response.done` event naming it, and checks the relay's key."""
    import threading

    from websockets.sync.server import ServerConnection, serve as serve_sync

    seen: list[str] = []

    def handle(connection: ServerConnection) -> None:
        seen.append(connection.request.headers.get("Authorization", "") if connection.request else "")
        for raw in connection:
            event = json.loads(raw)
            connection.send(json.dumps({"type": "response.done", "echo": event}))

    with serve_sync(handle, "127.0.0.1", 0) as ws_server:
        thread = threading.Thread(target=ws_server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"ws://127.0.0.1:{ws_server.socket.getsockname()[1]}"
        finally:
            ws_server.shutdown()
            thread.join(10)
    assert all(header == "Bearer sk-test" for header in seen)


async def test_the_relay_example_relays_both_ways(upstream: str, project_copy: Path) -> None:
    env = {"RELAY_UPSTREAM_URL": upstream, "OPENAI_API_KEY": "sk-test"}
    with ServerProcess(project_copy, "--no-watch", env=env) as server:
        with pytest.raises(InvalidStatus) as anonymous:
            await connect(ws_url(server, "websocket-relay"), open_timeout=TIMEOUT_SEC)
        assert anonymous.value.response.status_code == 403
        async with connect(ws_url(server, "websocket-relay", f"jwt={KEYS.anon_key}"), open_timeout=TIMEOUT_SEC) as ws:
            for n in range(3):
                await ws.send(json.dumps({"type": "conversation.item.create", "n": n}))
                answer = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_SEC))
                assert answer == {"type": "response.done", "echo": {"type": "conversation.item.create", "n": n}}
    assert 'Relaying "conversation.item.create" to OpenAI' in server.output
    assert 'Relaying "response.done" to Client' in server.output
