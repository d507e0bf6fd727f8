"""The dashboard API of a real `edgeruntime serve`: background work cut at shutdown shows with its reason."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.helpers import SERVICE_ROLE, ServerProcess, write_function

pytestmark = pytest.mark.e2e

LINGER = """
import asyncio
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import EdgeRuntime, serve

async def quick() -> None:
    await asyncio.sleep(0)

async def upload_report() -> None:
    await asyncio.sleep(3600)

async def handler(req: Request) -> JSONResponse:
    EdgeRuntime.wait_until(quick())
    EdgeRuntime.wait_until(upload_report())
    return JSONResponse({"accepted": True}, status_code=202)

serve(handler)
"""


def test_task_cut_at_shutdown_shows_in_runs_after_a_restart(functions_dir: Path, tmp_path: Path) -> None:
    write_function(functions_dir, "linger", LINGER)
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    args = ("--no-watch", "--database-url", db, "--graceful-exit-timeout", "0.5")
    with ServerProcess(functions_dir, *args) as server:
        assert f"Dashboard: {server.base_url}/_edgeruntime/" in server.output
        assert httpx.post(server.url("linger"), headers=SERVICE_ROLE, timeout=10).status_code == 202
        metrics = httpx.get(f"{server.base_url}/_internal/metrics", timeout=10)
        assert metrics.status_code == 200
        assert 'edgeruntime_requests_total{function="linger",status="202",trigger="http"} 1.0' in metrics.text
        assert server.terminate() == 0

    with ServerProcess(functions_dir, *args) as server:
        r = httpx.get(f"{server.base_url}/_edgeruntime/api/runs", params={"function": "linger"}, timeout=10)
        assert r.status_code == 200
        [run] = r.json()["runs"]
        assert (run["trigger"], run["status"], run["http_status"]) == ("http", "succeeded", 202)
        tasks = {t["name"]: (t["status"], t["cut_reason"]) for t in run["tasks"]}
        assert tasks == {"quick": ("completed", None), "upload_report": ("cut", "TerminationRequested")}
