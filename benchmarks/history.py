"""Run history benchmark: what recording a run costs the event loop, and what writing it costs.

    python -m benchmarks history [--sizes 10000,50000,200000] [--rounds 7] [--database-url postgresql://...]

1. On the loop: µs per `JobSystem.on_invocation` (the gateway's observer) and per recorded
   wait_until task, in rounds of 1000 records (fewer than a write batch, so no round wakes the
   writer); the buffer is written to the store between rounds, untimed. Minimum over rounds.
2. The write: CPU µs per row of `store.record_run_rows` (process CPU time, so the SQLite writer
   thread and psycopg both count), batches of `WRITE_BATCH` rows, half invocations and half
   wait_until tasks with time-ordered execution ids, with the table holding about each of
   `--sizes` rows. Median and minimum over rounds. Postgres (server CPU not included) when a URL
   is given (flag or EDGERUNTIME_TEST_DATABASE_URL), in a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from urllib.parse import quote

from edgeruntime.config.settings import Settings
from edgeruntime.core.background import BackgroundTask, TaskOutcome
from edgeruntime.core.context import new_execution_id
from edgeruntime.gateway.app import EdgeApp
from edgeruntime.gateway.extensions import Invocation
from edgeruntime.jobs import attach, open_store
from edgeruntime.jobs.history import WRITE_BATCH
from edgeruntime.jobs.store import JobStore, RunRow

#: The brief of issue #7: recording must cost the event loop at most this per record.
LOOP_GOAL_US = 0.5
RECORDS_PER_ROUND = 1000

HELLO = """
from starlette.responses import JSONResponse
from edgeruntime import serve

serve(lambda req: JSONResponse({"ok": True}))
"""


def _rows(n: int) -> list[RunRow]:
    """`n` rows as a loaded server records them: each invocation followed by its wait_until task."""
    now = time.time()
    rows: list[RunRow] = []
    for _ in range(n // 2):
        execution_id = new_execution_id()
        rows.append(("invocation", "hello", "http", execution_id, "succeeded", now, 0.4, 202, None, None))
        rows.append(("background", "hello", "wait_until", execution_id, "completed", now, 2000.0, None, None, "work"))
    return rows


async def loop_cost(functions: Path, url: str, rounds: int) -> tuple[float, float]:
    """Minimum µs per recorded invocation and per recorded wait_until task."""
    app = EdgeApp(Settings.build(functions, database_url=url, environ={}))
    system = attach(app, background=False)
    await system.store.migrate()
    invocation = Invocation(
        function="hello",
        trigger="http",
        execution_id=new_execution_id(),
        method="GET",
        path="/functions/v1/hello",
        status=200,
        started_at=time.time(),
        duration_ms=0.4,
    )
    done = asyncio.get_running_loop().create_future()
    done.set_result(None)
    task = BackgroundTask(
        done, name="work", function="hello", execution_id=invocation.execution_id, outcome=TaskOutcome.COMPLETED
    )
    task.ended_at = task.started_at + 2.0
    on_invocation, on_background = system.on_invocation, system.history.on_background
    best_invocation = best_background = float("inf")
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(RECORDS_PER_ROUND):
                on_invocation(invocation)
            best_invocation = min(best_invocation, time.perf_counter() - started)
            await system.history.flush()
            started = time.perf_counter()
            for _ in range(RECORDS_PER_ROUND):
                on_background(task)
            best_background = min(best_background, time.perf_counter() - started)
            await system.history.flush()
    finally:
        await system.store.close()
    return best_invocation / RECORDS_PER_ROUND * 1e6, best_background / RECORDS_PER_ROUND * 1e6


async def write_cost(url: str, sizes: list[int], rounds: int) -> list[tuple[int, int, float, float]]:
    """Per size: (rows before, rows after, median and minimum CPU µs per row written)."""
    store: JobStore = open_store(url)
    await store.migrate()
    out = []
    have = 0
    try:
        for size in sizes:
            while have < size:
                batch = _rows(min(WRITE_BATCH, size - have))
                await store.record_run_rows(batch)
                have += len(batch)
            before = have
            per_row = []
            for _ in range(rounds):
                batch = _rows(WRITE_BATCH)
                started = time.process_time()
                await store.record_run_rows(batch)
                per_row.append((time.process_time() - started) / len(batch) * 1e6)
                have += len(batch)
            out.append((before, have, statistics.median(per_row), min(per_row)))
    finally:
        await store.close()
    return out


@contextmanager
def _postgres_schema(base: str) -> Iterator[str]:
    """A URL whose search_path is a fresh schema, dropped on exit."""
    import psycopg

    schema = f"edgeruntime_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        sep = "&" if "?" in base else "?"
        yield f"{base}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _report(
    name: str, database: Callable[[], AbstractContextManager[str]], functions: Path, sizes: list[int], rounds: int
) -> None:
    with database() as loop_url:
        invocation, background = asyncio.run(loop_cost(functions, loop_url, rounds * 20))
    verdict = "met" if max(invocation, background) <= LOOP_GOAL_US else "MISSED"
    print(
        f"{name:8s} on the loop: {invocation:.3f} µs per invocation, {background:.3f} µs per wait_until task"
        f"   goal <= {LOOP_GOAL_US} µs: {verdict}"
    )
    with database() as write_url:
        for before, after, median, best in asyncio.run(write_cost(write_url, sizes, rounds)):
            print(
                f"{name:8s} write, {before:>7,}-{after:>7,} rows in the table:"
                f" {median:5.2f} µs CPU per row (median), {best:5.2f} (min)"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks history", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,50000,200000", help="table sizes to write at (comma-separated)")
    parser.add_argument("--rounds", type=int, default=7, help=f"batches of {WRITE_BATCH} rows timed per size")
    parser.add_argument("--database-url", default=os.environ.get("EDGERUNTIME_TEST_DATABASE_URL"))
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    print(f"run history: {os.cpu_count()} CPU(s), Python {sys.version.split()[0]}, batches of {WRITE_BATCH} rows")
    with tempfile.TemporaryDirectory(prefix="edgeruntime-bench-") as tmp:
        root = Path(tmp)
        functions = root / "functions"
        (functions / "hello").mkdir(parents=True)
        (functions / "hello" / "index.py").write_text(textwrap.dedent(HELLO), encoding="utf-8")

        def sqlite_database() -> AbstractContextManager[str]:
            return nullcontext(f"sqlite:///{root / f'{uuid.uuid4().hex}.db'}")

        _report("sqlite", sqlite_database, functions, sizes, args.rounds)
        if args.database_url:
            base: str = args.database_url
            _report("postgres", lambda: _postgres_schema(base), functions, sizes, args.rounds)
        else:
            print("postgres: skipped (no --database-url / EDGERUNTIME_TEST_DATABASE_URL)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
