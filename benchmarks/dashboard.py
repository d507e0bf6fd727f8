"""Dashboard benchmark: what the metrics cost a request, and how fast the page's API answers.

    python -m benchmarks.dashboard [--requests 3000] [--runs 20000]

1. Request overhead: the same app (gateway + jobs run history) with and without the dashboard and
   metrics attached, in-process through httpx.ASGITransport, rounds alternated; the ratio says what
   the metrics observers add to a request.
2. API latency: p50/p99 of each endpoint the page polls, with `--runs` invocations (each with a
   wait_until task) in the run history and a 1000-job queue, on SQLite; plus a metrics scrape.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import httpx

from edgeruntime.config.settings import Settings
from edgeruntime.dashboard import attach as attach_dashboard
from edgeruntime.gateway.app import EdgeApp
from edgeruntime.jobs import JobSystem, attach
from edgeruntime.jobs.store import Run

#: The page polls five endpoints every 1.5 s: each should answer well within that.
API_GOAL_MS = 50.0
#: Metrics may add at most this fraction to an in-process request.
OVERHEAD_GOAL = 0.10

HELLO = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve

async def handler(req: Request) -> JSONResponse:
    return JSONResponse({"ok": True})

serve(handler)
"""


def _project(root: Path) -> Path:
    functions = root / "functions"
    (functions / "hello").mkdir(parents=True)
    (functions / "hello" / "index.py").write_text(textwrap.dedent(HELLO), encoding="utf-8")
    return functions


def _app(functions: Path, db: Path, dashboard: bool) -> tuple[EdgeApp, JobSystem]:
    settings = Settings.build(functions, database_url=f"sqlite:///{db}", no_verify_jwt=True, watch=False)
    app = EdgeApp(settings)
    jobs = attach(app, background=False)
    if dashboard:
        attach_dashboard(app, jobs)
    return app, jobs


async def _requests_per_sec(app: EdgeApp, n: int) -> float:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        for _ in range(50):  # warm-up: boot the function, fill caches
            await client.post("/functions/v1/hello")
        start = time.perf_counter()
        for _ in range(n):
            await client.post("/functions/v1/hello")
        return n / (time.perf_counter() - start)


async def overhead(root: Path, n: int) -> tuple[float, float]:
    """Best-of-3 requests/s without and with the dashboard, rounds alternated."""
    functions = _project(root / "overhead")
    best = {False: 0.0, True: 0.0}
    for round_ in range(3):
        for with_dashboard in (False, True):
            app, _ = _app(functions, root / f"overhead-{round_}-{with_dashboard}.db", with_dashboard)
            await app.startup()
            try:
                best[with_dashboard] = max(best[with_dashboard], await _requests_per_sec(app, n))
            finally:
                await app.shutdown(timeout=0)
    return best[False], best[True]


async def api_latency(root: Path, runs: int) -> dict[str, tuple[float, float]]:
    functions = _project(root / "api")
    app, jobs = _app(functions, root / "api.db", True)
    await app.startup()
    try:
        now = time.time()
        batch: list[Run] = []
        for i in range(runs):
            execution = str(uuid.uuid4())
            started = now - runs + i
            batch.append(Run("invocation", "hello", "http", execution, "succeeded", started, 1.0, 200))
            batch.append(Run("background", "hello", "wait_until", execution, "completed", started, 5.0, name="audit"))
            if len(batch) >= 2000:
                await jobs.store.record_runs(batch)
                batch = []
        if batch:
            await jobs.store.record_runs(batch)
        for i in range(1000):
            await jobs.queue.enqueue("hello", {"i": i}, delay=3600)
        paths = [
            "/_edgeruntime/api/functions",
            "/_edgeruntime/api/cron",
            "/_edgeruntime/api/runs?limit=50",
            "/_edgeruntime/api/runs?function=hello&status=failed&limit=50",
            "/_edgeruntime/api/queue?limit=20",
            "/_edgeruntime/api/failed",
            "/_internal/metrics",
        ]
        out: dict[str, tuple[float, float]] = {}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            for path in paths:
                times = []
                for _ in range(60):
                    start = time.perf_counter()
                    r = await client.get(path)
                    times.append((time.perf_counter() - start) * 1000)
                    assert r.status_code == 200, (path, r.status_code, r.text)
                times.sort()
                out[path] = (statistics.median(times), times[int(len(times) * 0.99) - 1])
        return out
    finally:
        await app.shutdown(timeout=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dashboard", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per round (default 3000)")
    parser.add_argument("--runs", type=int, default=20000, help="invocations in the run history (default 20000)")
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)  # the access log would dominate the request overhead figure
    with tempfile.TemporaryDirectory(prefix="edgeruntime-bench-") as tmp:
        root = Path(tmp)
        without, with_ = asyncio.run(overhead(root, args.requests))
        cost = 1 - with_ / without
        print(f"requests/s in-process: without dashboard {without:,.0f}, with dashboard+metrics {with_:,.0f}")
        verdict = "ok" if cost <= OVERHEAD_GOAL else "over goal"
        print(
            f"  ratio with/without {with_ / without:.3f}"
            f" (metrics cost {cost:+.1%}; goal <= {OVERHEAD_GOAL:.0%}: {verdict})"
        )
        latency = asyncio.run(api_latency(root, args.runs))
        print(f"API latency with {args.runs:,} runs and 1,000 queued jobs (SQLite), ms p50 / p99:")
        worst = 0.0
        for path, (p50, p99) in latency.items():
            worst = max(worst, p99)
            print(f"  {path:<62} {p50:7.2f} / {p99:7.2f}")
        print(
            f"  slowest p99 {worst:.1f} ms"
            f" (goal <= {API_GOAL_MS:.0f} ms: {'ok' if worst <= API_GOAL_MS else 'over goal'})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
