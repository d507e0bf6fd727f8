"""Prometheus metrics at /_internal/metrics: requests, durations, background tasks, workers, queue, cron."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from edgeruntime.metrics import UNKNOWN_FUNCTION, Metrics
from edgeruntime.testing import EdgeClient
from tests.helpers import write_function

BG = """
import asyncio
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from edgeruntime import EdgeRuntime, serve

async def fine() -> None:
    await asyncio.sleep(0)

async def broken() -> None:
    raise RuntimeError("no")

async def handler(req: Request):
    if req.query_params.get("fail"):
        return PlainTextResponse("bad", status_code=500)
    EdgeRuntime.wait_until(fine())
    EdgeRuntime.wait_until(broken())
    EdgeRuntime.wait_until(asyncio.sleep(3600))
    return JSONResponse({"ok": True})

serve(handler)
"""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_count_requests_durations_background_cron_and_queue(functions_dir: Path) -> None:
    write_function(functions_dir, "bg", BG)
    (functions_dir.parent / "config.toml").write_text(
        '[cron.beat]\nfunction = "bg"\nschedule = "@hourly"\n', encoding="utf-8"
    )
    async with EdgeClient(functions_dir) as client:
        assert (await client.invoke("bg")).status_code == 200
        assert (await client.invoke("bg", params={"fail": "1"})).status_code == 500
        assert (await client.invoke("nope")).status_code == 404
        await client.trigger_cron("beat")
        await asyncio.sleep(0.05)
        [worker] = client.app.functions["bg"].workers
        worker.state.background.cut("wall_clock", [t for t in worker.state.background.pending if t.name == "sleep"])
        await client.jobs.queue.enqueue("bg", {}, delay=60)
        await client.jobs.queue.enqueue("bg", {})
        client.dashboard.metrics.worker_retired("bg", "cpu")
        client.dashboard.metrics.worker_ended("bg", "early_drop")
        r = await client.request("GET", "/_internal/metrics")
        client.failed.clear()  # the failing background task is expected here
        for task in client.pending():
            task.task.cancel()

    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    got = samples(r.text)
    assert got[("edgeruntime_requests_total", (("function", "bg"), ("status", "200"), ("trigger", "http")))] == 1
    assert got[("edgeruntime_requests_total", (("function", "bg"), ("status", "500"), ("trigger", "http")))] == 1
    assert got[("edgeruntime_requests_total", (("function", "bg"), ("status", "200"), ("trigger", "cron")))] == 1
    unknown = (("function", UNKNOWN_FUNCTION), ("status", "404"), ("trigger", "http"))
    assert got[("edgeruntime_requests_total", unknown)] == 1
    assert got[("edgeruntime_request_duration_seconds_count", (("function", "bg"),))] == 3
    assert got[("edgeruntime_request_duration_seconds_sum", (("function", "bg"),))] > 0

    def tasks(outcome: str, reason: str = "") -> float:
        key = (("function", "bg"), ("outcome", outcome), ("reason", reason))
        return got.get(("edgeruntime_background_tasks_total", key), 0)

    assert (tasks("completed"), tasks("failed"), tasks("cut", "wall_clock")) == (2, 2, 2)
    assert got[("edgeruntime_cron_ticks_total", (("cron", "beat"), ("status", "succeeded")))] == 1
    assert got[("edgeruntime_worker_retirements_total", (("function", "bg"), ("reason", "cpu")))] == 1
    assert got[("edgeruntime_worker_ends_total", (("function", "bg"), ("reason", "early_drop")))] == 1
    assert got[("edgeruntime_queue_depth", ())] == 2
    assert got[("edgeruntime_queue_jobs", (("status", "queued"),))] == 2
    assert 0 <= got[("edgeruntime_queue_oldest_age_seconds", ())] < 60


def test_each_app_has_its_own_registry() -> None:
    a, b = Metrics({"x"}), Metrics({"x"})
    a.worker_retired("x", "wall_clock")
    a.worker_retired("y", "wall_clock")
    got_a, got_b = samples(a.render().decode()), samples(b.render().decode())
    key = ("edgeruntime_worker_retirements_total", (("function", "x"), ("reason", "wall_clock")))
    assert got_a[key] == 1 and key not in got_b
    assert (
        got_a[("edgeruntime_worker_retirements_total", (("function", UNKNOWN_FUNCTION), ("reason", "wall_clock")))] == 1
    )


async def test_worker_retirements_and_ends_by_reason(functions_dir: Path) -> None:
    """A hot reload retires the worker; its early drop ends it: both are counted with their reason."""
    write_function(
        functions_dir,
        "hello",
        "from starlette.responses import Response\nfrom edgeruntime import serve\nserve(lambda req: Response('hi'))\n",
    )
    async with EdgeClient(functions_dir) as client:
        assert (await client.invoke("hello")).status_code == 200
        client.app.reload({"hello"})
        for _ in range(100):  # the drop runs as its own task
            if client.app.functions["hello"].shutdowns:
                break
            await asyncio.sleep(0.01)
        text = (await client.request("GET", "/_internal/metrics")).text
    assert 'edgeruntime_worker_retirements_total{function="hello",reason="reload"} 1.0' in text
    assert 'edgeruntime_worker_ends_total{function="hello",reason="EarlyDrop"} 1.0' in text
