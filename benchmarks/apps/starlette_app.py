"""The peer: bare Starlette with the same two endpoints, background work via BackgroundTask."""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

COUNTS = {"started": 0, "completed": 0}


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def work() -> None:
    await asyncio.sleep(2)
    COUNTS["completed"] += 1


async def bg(request: Request) -> JSONResponse:
    if request.method == "GET":
        return JSONResponse(COUNTS)
    COUNTS["started"] += 1
    return JSONResponse({"accepted": True}, status_code=202, background=BackgroundTask(work))


app = Starlette(routes=[Route("/hello", hello), Route("/bg", bg, methods=["GET", "POST"])])
