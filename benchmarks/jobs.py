"""Jobs benchmark: queue throughput (jobs/s) on SQLite and Postgres with one instance, and cron
tick jitter (p50/p99 of delivery time minus scheduled instant).

    python -m benchmarks.jobs [--jobs 5000] [--cron-seconds 20] [--database-url postgresql://...]

One instance = the same QueueRunner and Scheduler `edgeruntime serve` runs, in this process, each
job a full delivery through the gateway (auth, limits, access log, run history). The "store
ceiling" is the same claim/finish cycle without deliveries, measured in the same run: the ratio
says how much of the budget the runtime's own request path takes. Postgres is skipped when no URL
is given (flag or EDGERUNTIME_TEST_DATABASE_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from edgeruntime.config.settings import Settings
from edgeruntime.gateway.app import EdgeApp
from edgeruntime.jobs import attach, open_store
from edgeruntime.jobs.store import JobStore, Outcome

GOALS = {"sqlite": 1000.0, "postgres": 2000.0}
JITTER_GOAL_MS = 50.0

WORK = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve

async def handler(req: Request) -> JSONResponse:
    return JSONResponse({"ok": True})

serve(handler)
"""

TICK = """
import os, time
from datetime import datetime
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve

LOG = os.environ["JITTER_LOG"]

async def handler(req: Request) -> JSONResponse:
    arrived = time.time()
    scheduled = datetime.fromisoformat(req.headers["x-edgeruntime-scheduled-for"].replace("Z", "+00:00"))
    with open(LOG, "a", encoding="utf-8") as f:
        f.write(f"{(arrived - scheduled.timestamp()) * 1000:.3f}\\n")
    return JSONResponse({"ok": True})

serve(handler)
"""


# Each delivery queues the next: a constant, saturating queue load for the jitter-under-load run.
CHAIN = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve
import edgeruntime.jobs

async def handler(req: Request) -> JSONResponse:
    await edgeruntime.jobs.enqueue("chain", {})
    return JSONResponse({"ok": True})

serve(handler)
"""


def _project(root: Path, config: str) -> Path:
    functions = root / "functions"
    for name, source in (("work", WORK), ("tick", TICK), ("chain", CHAIN)):
        (functions / name).mkdir(parents=True, exist_ok=True)
        (functions / name / "index.py").write_text(textwrap.dedent(source).lstrip(), encoding="utf-8")
    (root / "config.toml").write_text(config, encoding="utf-8")
    return functions


async def _fill(store: JobStore, n: int) -> None:
    now = time.time()
    for _ in range(n):
        await store.enqueue("work", "{}", run_at=now, max_attempts=4, idempotency_key=None, now=now)


async def store_ceiling(url: str, n: int) -> float:
    """jobs/s of claim + finish alone (batches of 32), no delivery."""
    store = open_store(url)
    await store.migrate()
    await _fill(store, n)
    started = time.perf_counter()
    done = 0
    while done < n:
        jobs = await store.claim("bench", 32, now=time.time(), lease_sec=30)
        if not jobs:
            break
        await store.finish([Outcome(j.id, j.attempt, True, 200) for j in jobs], now=time.time())
        done += len(jobs)
    elapsed = time.perf_counter() - started
    await store.close()
    return done / elapsed


async def queue_throughput(functions: Path, url: str, n: int) -> float:
    """jobs/s of one instance delivering `n` queued jobs through the gateway."""
    settings = Settings.build(functions, database_url=url, environ={})
    app = EdgeApp(settings)
    system = attach(app)
    filler = open_store(url)
    await filler.migrate()
    await _fill(filler, n)
    await filler.close()
    started = time.perf_counter()
    await app.startup()
    try:
        deadline = time.monotonic() + 300
        # Polling a counter, not waiting on an event: the runner has no completion signal to offer.
        while system.runner.delivered < n and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
        await asyncio.sleep(0.3)
        counts = await system.store.count_jobs()
    finally:
        await app.shutdown(timeout=5)
    if counts.get("succeeded") != n:
        raise RuntimeError(f"expected {n} succeeded jobs, store says {counts}")
    return n / elapsed


async def cron_jitter(root: Path, seconds: int, *, under_load: bool = False) -> tuple[list[float], int]:
    """Delivery lag of a 1-second cron in ms over `seconds` ticks, and the queue jobs run meanwhile.

    With `under_load`, the queue runs flat out (a chain of jobs that each queue the next).
    """
    log = root / "jitter.log"
    log.unlink(missing_ok=True)
    os.environ["JITTER_LOG"] = str(log)
    functions = _project(root, '[cron.tick]\nfunction = "tick"\nschedule = "1 seconds"\n')
    settings = Settings.build(functions, database_url=f"sqlite:///{root / f'cron-{uuid.uuid4().hex}.db'}")
    app = EdgeApp(settings)
    system = attach(app)
    await app.startup()
    try:
        if under_load:
            for _ in range(system.config.concurrency):
                await system.queue.enqueue("chain", {})
        await asyncio.sleep(seconds + 0.5)
    finally:
        await app.shutdown(timeout=5)
    lags = [float(x) for x in log.read_text(encoding="utf-8").split()]
    return lags[1:], system.runner.delivered  # the first tick is the catch-up one fired at start-up


def _jitter_line(label: str, lags: list[float]) -> str:
    ordered = sorted(lags)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    verdict = "met" if p99 <= JITTER_GOAL_MS else "MISSED"
    return (
        f"{label}: {len(lags)} ticks of a 1-second schedule, jitter p50 {statistics.median(lags):.1f} ms,"
        f" p99 {p99:.1f} ms, max {max(lags):.1f} ms   goal p99 <= {JITTER_GOAL_MS:.0f} ms: {verdict}"
    )


def _pg_schema_url(base: str) -> tuple[str, str]:
    import psycopg

    schema = f"edgeruntime_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options={quote(f'-csearch_path={schema}')}", schema


def _drop_schema(base: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.jobs", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--cron-seconds", type=int, default=20)
    parser.add_argument("--database-url", default=os.environ.get("EDGERUNTIME_TEST_DATABASE_URL"))
    args = parser.parse_args(argv)
    logging.getLogger("edgeruntime").setLevel(logging.WARNING)
    logging.getLogger("edgeruntime.access").disabled = True  # the access log would dominate stdout

    with tempfile.TemporaryDirectory(prefix="edgeruntime-bench-") as tmp:
        root = Path(tmp)
        functions = _project(root, "")

        def sqlite_url() -> tuple[str, str | None]:
            return f"sqlite:///{root / f'{uuid.uuid4().hex}.db'}", None

        def postgres_url() -> tuple[str, str | None]:
            return _pg_schema_url(args.database_url)

        backends: dict[str, Callable[[], tuple[str, str | None]]] = {"sqlite": sqlite_url}
        if args.database_url:
            backends["postgres"] = postgres_url
        else:
            print("postgres: skipped (no --database-url / EDGERUNTIME_TEST_DATABASE_URL)")
        print(f"jobs: {args.jobs} per run, one instance, {os.cpu_count()} CPU(s), Python {sys.version.split()[0]}")
        for name, make in backends.items():
            url, schema = make()
            url2, schema2 = make()
            try:
                ceiling = asyncio.run(store_ceiling(url, args.jobs))
                rate = asyncio.run(queue_throughput(functions, url2, args.jobs))
            finally:
                if args.database_url and name == "postgres":
                    for s in (schema, schema2):
                        if s:
                            _drop_schema(args.database_url, s)
            goal = GOALS[name]
            print(
                f"{name:9s} {rate:8.0f} jobs/s delivered   store ceiling {ceiling:8.0f} jobs/s"
                f"   runtime/ceiling {rate / ceiling:.2f}   goal >= {goal:.0f}: {'met' if rate >= goal else 'MISSED'}"
            )
        if args.cron_seconds > 0:
            lags, _ = asyncio.run(cron_jitter(root / "cron", args.cron_seconds))
            print(_jitter_line("cron idle", lags))
            lags, jobs = asyncio.run(cron_jitter(root / "cron", args.cron_seconds, under_load=True))
            print(_jitter_line(f"cron busy ({jobs / args.cron_seconds:.0f} queue jobs/s alongside)", lags))
    return 0


if __name__ == "__main__":
    sys.exit(main())
