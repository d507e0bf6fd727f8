"""The ceiling: a raw ASGI app with the same two endpoints, and nothing a framework adds.

No routing objects, no Request or Response, no middleware: the least work any Python app can do
to answer ``GET hello`` and ``POST bg`` on a server. Its background work is a task of the
running loop, held in a set until it ends (what ``wait_until`` does with no bookkeeping). Measured
beside the other apps in `benchmarks peers`, it shows how far a goal is from what the server
itself allows on this machine.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

COUNTS = {"started": 0, "completed": 0}
#: Pending background tasks: the loop keeps only weak references to its tasks.
PENDING: set[asyncio.Task[None]] = set()

_HELLO = b'{"ok":true}'
_ACCEPTED = b'{"accepted":true}'


async def _work() -> None:
    await asyncio.sleep(2)
    COUNTS["completed"] += 1


async def _answer(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """`GET /hello` → {"ok": true}; `POST /bg` → 202 and 2 s of background work; `GET /bg` → counts."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path, method = scope["path"], scope["method"]
    if path == "/hello":
        await _answer(send, 200, _HELLO)
    elif path == "/bg" and method == "POST":
        COUNTS["started"] += 1
        task = asyncio.get_running_loop().create_task(_work())
        PENDING.add(task)
        task.add_done_callback(PENDING.discard)
        await _answer(send, 202, _ACCEPTED)
    elif path == "/bg":
        await _answer(send, 200, json.dumps(COUNTS).encode())
    else:
        await _answer(send, 404, b'{"error":"not found"}')
