"""The peer: FastAPI with the same two endpoints, background work via BackgroundTasks."""

from __future__ import annotations

import asyncio

from fastapi import BackgroundTasks, FastAPI
from fastapi.responses import JSONResponse

COUNTS = {"started": 0, "completed": 0}
app = FastAPI()


@app.get("/hello")
async def hello() -> JSONResponse:
    return JSONResponse({"ok": True})


async def work() -> None:
    await asyncio.sleep(2)
    COUNTS["completed"] += 1


@app.post("/bg", status_code=202)
async def bg(tasks: BackgroundTasks) -> JSONResponse:
    COUNTS["started"] += 1
    tasks.add_task(work)
    return JSONResponse({"accepted": True}, status_code=202)


@app.get("/bg")
async def counts() -> JSONResponse:
    return JSONResponse(COUNTS)
