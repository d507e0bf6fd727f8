"""In-memory ASGI requests for the unit tier: a scope, a body to receive, a recorder of what was sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from edgeruntime.core.types import Message, Scope


def http_scope(
    path: str = "/probe", method: str = "GET", query: str = "", headers: list[tuple[bytes, bytes]] | None = None
) -> Scope:
    """The scope a function sees for `method path?query` (the gateway has stripped /functions/v1)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers or [(b"host", b"127.0.0.1:54321")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 54321),
    }


def gateway_scope(name: str, headers: Mapping[str, str], kind: str = "http") -> Scope:
    """The scope a server gives the gateway for a `kind` ("http": a GET; "websocket": an upgrade)
    request to function `name`, with `headers` (EdgeClient.headers_for, say) besides its host."""
    scope: Scope = {
        "type": kind,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http" if kind == "http" else "ws",
        "path": f"/functions/v1/{name}",
        "raw_path": f"/functions/v1/{name}".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:54321"), *((k.lower().encode(), v.encode()) for k, v in headers.items())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 54321),
    }
    if kind == "http":
        scope["method"] = "GET"
    else:
        scope["subprotocols"] = []
    return scope


class Body:
    """`receive` for a request with `body`; then it waits, as a client that keeps its connection open."""

    def __init__(self, body: bytes = b"") -> None:
        self.body = body
        self.sent = False
        self.closed = asyncio.Event()

    async def receive(self) -> Message:
        if not self.sent:
            self.sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.closed.wait()
        return {"type": "http.disconnect"}


class Recorder:
    """`send` that keeps the response: its status, headers and body."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def send(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int | None:
        starts = [m for m in self.messages if m["type"] == "http.response.start"]
        return int(starts[0]["status"]) if starts else None

    @property
    def headers(self) -> dict[str, str]:
        starts = [m for m in self.messages if m["type"] == "http.response.start"]
        return {k.decode(): v.decode() for k, v in starts[0]["headers"]} if starts else {}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")

    def json(self) -> Any:
        return json.loads(self.body)


async def settle(rounds: int = 20) -> None:
    """Let the event loop run what is ready (tasks the code under test spawned), without waiting for time."""
    for _ in range(rounds):
        await asyncio.sleep(0)
