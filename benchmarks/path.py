"""The request path in-process: µs of CPU per `GET hello`, bare Starlette against edgeruntime.

No server and no sockets: each app is called as `app(scope, receive, send)` in a loop, so the
figures are the apps' own cost (the server's comes on top, the same for every app). edgeruntime
is measured as `edgeruntime serve` builds it, one part at a time: the gateway alone (limits,
execution ids, the access line), then with the jobs system (run history written to a fresh SQLite
file), then with the dashboard's metrics. The process is pinned to one core, as the peers
benchmark pins its servers, so the run-history writer thread shares it. Usage::

    python -m benchmarks path [--requests 10000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent

Message = dict[str, Any]


def _scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Message) -> None:
    return None


async def _round(app: Any, scope: dict[str, Any], requests: int) -> float:
    """CPU (all threads) per request of one run of `requests` requests, in µs."""
    started = time.process_time()
    for i in range(requests):
        await app(dict(scope), _receive, _send)
        if i % 50 == 0:
            await asyncio.sleep(0)  # let the history writer and timers run, as a server would
    return (time.process_time() - started) / requests * 1e6


async def _edgeruntime(stage: str, store_dir: str, log: TextIO) -> Any:
    """The app `edgeruntime serve` builds, up to `stage` (gateway, jobs, dashboard), started."""
    from edgeruntime.config.settings import Settings
    from edgeruntime.core.logs import AccessLog, LogBuffer
    from edgeruntime.gateway.app import EdgeApp

    settings = Settings.build(
        str(ROOT / "functions"),
        config_path=str(ROOT / "config.toml"),
        database_url=f"sqlite:///{store_dir}/{stage}.db",
        watch=False,
    )
    app = EdgeApp(settings)
    if stage != "gateway":
        from edgeruntime.jobs import attach

        jobs = attach(app)
        if stage == "dashboard":
            from edgeruntime.dashboard import attach as attach_dashboard

            attach_dashboard(app, jobs)
    app.access_log = AccessLog(LogBuffer(log), "text")
    await app.startup()
    return app


async def _run(requests: int, rounds: int, log: TextIO) -> list[tuple[str, float]]:
    """Least CPU per request of each app; the apps take turns, so a slow spell hits them all."""
    sys.path.insert(0, str(ROOT.parent))
    from benchmarks.apps.starlette_app import app as starlette

    with tempfile.TemporaryDirectory() as store_dir:
        apps: list[tuple[str, Any, dict[str, Any]]] = [
            ("bare Starlette (routing + JSONResponse)", starlette, _scope("/hello"))
        ]
        for stage, label in (
            ("gateway", "edgeruntime: gateway, limits, execution id, access line"),
            ("jobs", "  + run history (every invocation written to SQLite)"),
            ("dashboard", "  + dashboard metrics (= edgeruntime serve)"),
        ):
            apps.append((label, await _edgeruntime(stage, store_dir, log), _scope("/functions/v1/hello")))
        try:
            for _, app, scope in apps:  # warm up: functions boot, caches fill
                for _ in range(1000):
                    await app(dict(scope), _receive, _send)
            gc.collect()
            best = [float("inf")] * len(apps)
            for _ in range(rounds):
                for index, (_, app, scope) in enumerate(apps):
                    best[index] = min(best[index], await _round(app, scope, requests))
        finally:
            for _, app, _ in apps[1:]:
                await app.shutdown(1)
    return [(label, micros) for (label, _, _), micros in zip(apps, best, strict=True)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks path", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000, help="requests per round (default 10000)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds; the least CPU per request is kept")
    args = parser.parse_args(argv)
    with contextlib.suppress(AttributeError, OSError):  # not on every platform
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import logging

    logging.getLogger("edgeruntime").setLevel(logging.WARNING)  # boot lines would land in the figures
    with open(os.devnull, "w") as log:  # access lines are written, as by a server, to nowhere
        figures = asyncio.run(_run(args.requests, args.rounds, log))
    bare = figures[0][1]
    print(f"# GET hello in-process, one core, least CPU of {args.rounds} x {args.requests} requests")
    print("| app | µs per request | vs bare Starlette |")
    print("|---|---:|---:|")
    for label, micros in figures:
        print(f"| {label} | {micros:.1f} | {micros / bare:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
