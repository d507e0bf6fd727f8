"""Functions the worker and supervisor unit tests load from disk (real modules, real handlers)."""

from __future__ import annotations

#: `?mode=` ok | raise | not-a-response | hang | background | sync-ok; module-level events let the
#: test release what the function waits for, with no timing involved.
PROBE = """
import asyncio
import os
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import EdgeRuntime, serve

BOOT = os.urandom(4).hex()
RELEASE = asyncio.Event()
STARTED = asyncio.Event()
UNLOADS = []

EdgeRuntime.on("beforeunload", lambda event: UNLOADS.append(event.reason))


async def later(name):
    await RELEASE.wait()
    return name


async def handler(req: Request):
    mode = req.query_params.get("mode", "ok")
    if mode == "raise":
        raise RuntimeError("handler bug")
    if mode == "not-a-response":
        return {"not": "a response"}
    if mode == "hang":
        STARTED.set()
        await asyncio.Event().wait()
    if mode == "background":
        EdgeRuntime.wait_until(later("background"))
    return JSONResponse({"boot": BOOT, "path": req.url.path, "mode": mode})


serve(handler)
"""

SYNC = """
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from edgeruntime import serve

def handler(req: Request) -> PlainTextResponse:
    return PlainTextResponse("sync " + req.method)

serve(handler)
"""
