from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse

from edgeruntime import EdgeRuntime, serve

COUNTS = {"started": 0, "completed": 0}


async def work() -> None:
    await asyncio.sleep(2)
    COUNTS["completed"] += 1


@serve
async def handler(req: Request) -> JSONResponse:
    if req.method == "GET":
        return JSONResponse(COUNTS)
    COUNTS["started"] += 1
    EdgeRuntime.wait_until(work())
    return JSONResponse({"accepted": True}, status_code=202)
