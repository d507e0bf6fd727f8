"""Delivering a cron tick or a queued job: a POST through the gateway's normal request path.

The request is synthesized as ASGI and handed to ``EdgeApp.handle_http``, so the service role
key is checked like any other, the function's limits apply and the access log has a line.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgeruntime.core.types import Message

if TYPE_CHECKING:
    from edgeruntime.gateway.app import EdgeApp

__all__ = ["MAX_KEPT_BODY", "Delivery", "deliver"]

#: Bytes of a response body kept for failed jobs and cron history.
MAX_KEPT_BODY = 8192


@dataclass(frozen=True)
class Delivery:
    """What the function answered."""

    status: int
    body: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def describe(self) -> str:
        """A one-line error for history: the status and the start of the body."""
        snippet = " ".join(self.body.split())[:200]
        return f"HTTP {self.status}" + (f": {snippet}" if snippet else "")

    def json(self) -> object:
        return json.loads(self.body)


async def deliver(app: EdgeApp, function: str, body: bytes, headers: Mapping[str, str], *, trigger: str) -> Delivery:
    """POST `body` to `function` through `app` as `trigger` ("cron" or "queue") with the service role key."""
    all_headers = {
        "authorization": f"Bearer {app.settings.keys.service_role_key}",
        "content-type": "application/json",
        "content-length": str(len(body)),
        "user-agent": "edgeruntime-jobs",
        **{k.lower(): v for k, v in headers.items()},
    }
    path = f"/functions/v1/{function}"
    host = app.settings.base_url.split("://", 1)[1]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", host.encode())] + [(k.encode(), v.encode()) for k, v in all_headers.items()],
        "client": ("127.0.0.1", 0),
        "server": (app.settings.host, app.settings.port),
        "state": {},
    }
    sent_body = False
    finished = asyncio.Event()
    status = 500
    chunks: list[bytes] = []
    size = 0

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        # The client never goes away before the response is complete (as a patient HTTP client).
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status, size
        if message["type"] == "http.response.start":
            status = int(message["status"])
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            if size < MAX_KEPT_BODY:
                chunks.append(chunk[: MAX_KEPT_BODY - size])
            size += len(chunk)

    try:
        await app.handle_http(scope, receive, send, trigger=trigger)
    finally:
        finished.set()
    return Delivery(status, b"".join(chunks).decode("utf-8", "replace"))
