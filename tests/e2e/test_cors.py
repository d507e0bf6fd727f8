"""The gateway's CORS headers on a real socket, on the answers that take time: 504 and 546."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.helpers import SERVICE_ROLE, ServerProcess, write_function

pytestmark = pytest.mark.e2e

SLOW = """
import asyncio
from starlette.responses import PlainTextResponse
from edgeruntime import serve

@serve
async def handler(req):
    await asyncio.sleep(5)
    return PlainTextResponse("too late")
"""

CONFIG = """
[functions.idle]
request_idle_timeout_sec = 0.5

[functions.walled]
wall_clock_limit_sec = 1
"""


def test_a_504_and_a_546_carry_cors_headers(functions_dir: Path) -> None:
    write_function(functions_dir, "idle", SLOW)
    write_function(functions_dir, "walled", SLOW)
    (functions_dir.parent / "config.toml").write_text(CONFIG, encoding="utf-8")
    headers = {**SERVICE_ROLE, "Origin": "https://app.example.com"}
    with ServerProcess(functions_dir, "--no-watch") as server:
        for name, status, code in (("idle", 504, "IDLE_TIMEOUT"), ("walled", 546, "WORKER_LIMIT")):
            r = httpx.post(server.url(name), headers=headers, timeout=30)
            assert (r.status_code, r.json()["code"]) == (status, code)
            assert r.headers["access-control-allow-origin"] == "*"
            assert r.headers["access-control-allow-headers"] == "authorization, x-client-info, apikey, content-type"
