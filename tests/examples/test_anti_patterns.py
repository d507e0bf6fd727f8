"""The seeds' anti-patterns, answered by the runtime: each one is visible in the logs.

The third, unbounded background work, is cut at the wall-clock limit with a log line naming the task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from edgeruntime.testing import EdgeClient
from tests.helpers import write_function

AWAITS_WAIT_UNTIL = """
import asyncio
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import EdgeRuntime, serve

async def process_background(data):
    await asyncio.sleep(0.01)
    return data["n"] * 2

async def handler(req: Request) -> JSONResponse:
    data = await req.json()
    result = await EdgeRuntime.wait_until(process_background(data))  # Don't await!
    return JSONResponse({"done": True, "result": result})

serve(handler)
"""

IGNORES_ERRORS = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import EdgeRuntime, serve

async def process_payment(data):
    raise RuntimeError(f"card declined for order {data['orderId']}")

async def handler(req: Request) -> JSONResponse:
    EdgeRuntime.wait_until(process_payment(await req.json()))  # if this fails, you'll never know?
    return JSONResponse({"accepted": True}, status_code=202)

serve(handler)
"""
BOUNDED = """
import asyncio
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import EdgeRuntime, serve

DONE = []

async def process_items(items):
    for item in items:
        await asyncio.sleep(0.05)
        DONE.append(item)

async def handler(req: Request) -> JSONResponse:
    # The seed's Promise.race([processItems(items.slice(0, 50)), timeout(55000)]), in Python:
    EdgeRuntime.wait_until(asyncio.wait_for(process_items(range(1000)[:50]), timeout=0.5))
    return JSONResponse({"accepted": True}, status_code=202)

serve(handler)
"""


async def test_awaiting_wait_until_warns_that_it_delays_the_response(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_function(functions_dir, "awaiter", AWAITS_WAIT_UNTIL)
    async with EdgeClient(functions_dir) as client:
        r = await client.invoke("awaiter", json={"n": 21})
        assert r.json() == {"done": True, "result": 42}  # it works, but the caller waited for it
    [warning] = [rec for rec in caplog.records if "awaits the result of wait_until" in rec.getMessage()]
    assert warning.levelno == logging.WARNING
    assert "process_background" in warning.getMessage()
    assert "delays the response" in warning.getMessage()
    assert getattr(warning, "execution_id", None) == r.headers["x-edgeruntime-execution-id"]


async def test_unhandled_background_error_is_reported_with_its_execution_id(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_function(functions_dir, "payments", IGNORES_ERRORS)
    async with EdgeClient(functions_dir) as client:
        r = await client.invoke("payments", json={"orderId": 9})
        assert r.status_code == 202
        execution_id = r.headers["x-edgeruntime-execution-id"]
        with pytest.raises(ExceptionGroup) as raised:
            await client.drain()
        assert str(raised.value.exceptions[0]) == "card declined for order 9"
        # The worker keeps serving.
        assert (await client.invoke("payments", json={"orderId": 10})).status_code == 202
        with pytest.raises(ExceptionGroup):
            await client.drain()
    [report] = [rec for rec in caplog.records if rec.levelno == logging.ERROR and execution_id in rec.getMessage()]
    assert "background task process_payment of function payments failed" in report.getMessage()
    assert report.exc_info is not None and "card declined for order 9" in str(report.exc_info[1])


async def test_bounded_background_work_stops_at_its_own_timeout(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_function(functions_dir, "bounded", BOUNDED)
    async with EdgeClient(functions_dir) as client:
        started = time.monotonic()
        r = await client.invoke("bounded")
        assert r.status_code == 202
        with pytest.raises(ExceptionGroup) as raised:
            await client.drain(timeout=30)
        elapsed = time.monotonic() - started
    # Unlike Promise.race, wait_for cancels the work: it stopped at 0.5 s, long before its 50 items (2.5 s).
    assert isinstance(raised.value.exceptions[0], TimeoutError)
    assert elapsed < 2.0
    assert r.headers["x-edgeruntime-execution-id"] in caplog.text


UNBOUNDED = """
import asyncio
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import EdgeRuntime, serve

PROCESSED = []

async def process_items(items):
    # ❌ The seed's "Don't exceed time limits": nothing bounds this loop.
    while True:
        for item in items:
            await asyncio.sleep(0.05)
            PROCESSED.append(item)

async def handler(req: Request) -> JSONResponse:
    EdgeRuntime.wait_until(process_items((await req.json())["items"]))
    return JSONResponse({"accepted": True})

serve(handler)
"""


async def test_unbounded_background_work_is_cut_at_the_limit_naming_the_task(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_function(functions_dir, "unbounded", UNBOUNDED)
    async with EdgeClient(functions_dir, limits={"wall_clock_limit_sec": 1.0}) as client:
        r = await client.invoke("unbounded", json={"items": [1, 2, 3]})
        assert r.status_code == 200
        exec_id = r.headers["x-edgeruntime-execution-id"]
        for _ in range(200):  # the worker is ended at 1 s; give a loaded machine 10 s
            if any(t.name == "process_items" for t in client.finished):
                break
            await asyncio.sleep(0.05)
        [task] = [t for t in client.finished if t.name == "process_items"]
        assert (task.outcome, task.cut_reason) == ("cut", "WallClockTime")
    cut_lines = [
        rec
        for rec in caplog.records
        if rec.levelno == logging.WARNING
        and "background task process_items of function unbounded cut" in rec.getMessage()
    ]
    assert cut_lines, caplog.text
    assert "WallClockTime" in cut_lines[0].getMessage()
    assert getattr(cut_lines[0], "execution_id", None) == exec_id
