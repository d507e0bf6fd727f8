"""functions/websocket-echo on a real socket, with the real `websockets` client: the token from the
query string or a `jwt-` subprotocol, checked with the server's keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from tests.helpers import KEYS, ServerProcess

pytestmark = pytest.mark.e2e

TIMEOUT_SEC = 20.0


def ws_url(server: ServerProcess, name: str, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}/functions/v1/{name}{'?' + query if query else ''}"


async def test_the_echo_example_checks_a_token_from_the_query_string(project_copy: Path) -> None:
    with ServerProcess(project_copy, "--no-watch") as server:
        with pytest.raises(InvalidStatus) as missing:
            await connect(ws_url(server, "websocket-echo"), open_timeout=TIMEOUT_SEC)
        assert missing.value.response.status_code == 403
        assert json.loads(missing.value.response.body) == {"error": "Auth token not provided"}
        with pytest.raises(InvalidStatus) as forged:
            await connect(ws_url(server, "websocket-echo", "jwt=forged.token.here"), open_timeout=TIMEOUT_SEC)
        assert forged.value.response.status_code == 403
        async with connect(ws_url(server, "websocket-echo", f"jwt={KEYS.anon_key}"), open_timeout=TIMEOUT_SEC) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
        # Or in Sec-WebSocket-Protocol, as `jwt-<token>`: the function answers with that protocol.
        protocol = Subprotocol(f"jwt-{KEYS.anon_key}")
        async with connect(ws_url(server, "websocket-echo"), subprotocols=[protocol], open_timeout=TIMEOUT_SEC) as ws:
            assert ws.subprotocol == protocol
            await ws.send("by protocol")
            assert await ws.recv() == "by protocol"
