"""The request path in-process: µs of CPU per `GET hello`, bare Starlette against edgeruntime.

No server and no sockets: each app is called as `app(scope, receive, send)` in a loop, so the
figures are the apps' own cost (the server's comes on top, the same for every app). edgeruntime
is measured as `edgeruntime serve` builds it, one part at a time: the gateway alone (limits,
execution ids, the access line), then with the jobs system (run history written to a fresh SQLite
file), then with the dashboard's metrics. The process is pinned to one core, as the peers
benchmark pins its servers, so the run-history writer thread shares it.

With ``--uvicorn`` the requests go through Uvicorn's HTTP protocol as raw bytes, still without
sockets: 64 connections to in-memory transports each get a request per round, on uvloop, bare
Starlette through Uvicorn's own protocol and ``edgeruntime serve`` through the one it serves with
(batched writes included), so the server's Python work is counted too (the kernel's is not).
Usage::

    python -m benchmarks path [--requests 10000] [--rounds 7] [--uvicorn]
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


class _Transport(asyncio.Transport):
    """A connection's transport that counts the responses written to it."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.responses = 0
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.responses += bytes(data).count(b"HTTP/1.1 ")

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", self.port)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _wire(app: Any, path: str, protocol: Any, batched: bool, connections: int = 64) -> Any:
    """A round of `app` behind `protocol`: `(requests) -> CPU µs per request`, each connection sending one at a time."""
    import uvicorn
    from uvicorn.server import ServerState

    from edgeruntime.core.transport import BatchedTransport, WriteBatch

    config = uvicorn.Config(
        app, http=protocol, lifespan="off", access_log=False, log_level="warning", proxy_headers=False
    )
    config.load()
    state = ServerState()
    batch = WriteBatch()
    loop = asyncio.get_running_loop()
    transports = [_Transport(50000 + n) for n in range(connections)]
    protocols = []
    for transport in transports:
        instance = protocol(config=config, server_state=state, app_state={}, _loop=loop)
        instance.connection_made(BatchedTransport(transport, batch) if batched else transport)
        protocols.append(instance)
    request = f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1:8000\r\nuser-agent: wrk\r\n\r\n".encode()

    async def run(requests: int) -> float:
        rounds = max(1, requests // connections)
        for transport in transports:
            transport.responses = 0
        started = time.process_time()
        for number in range(1, rounds + 1):
            for instance in protocols:
                instance.data_received(request)
            for _ in range(1000):
                if all(transport.responses >= number for transport in transports):
                    break
                await asyncio.sleep(0)
            else:
                raise RuntimeError(f"{path}: no response after 1000 turns of the loop")
        return (time.process_time() - started) / (rounds * connections) * 1e6

    return run


async def _run_uvicorn(requests: int, rounds: int, log: TextIO) -> list[tuple[str, float]]:
    """`_run` through Uvicorn's protocol: bare Starlette (Uvicorn's own) against `edgeruntime serve` (its own)."""
    sys.path.insert(0, str(ROOT.parent))
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from benchmarks.apps.starlette_app import app as starlette
    from edgeruntime.serving.uvicorn_http import httptools_protocol

    with tempfile.TemporaryDirectory() as store_dir:
        edge = await _edgeruntime("dashboard", store_dir, log)
        try:
            runs = [
                ("bare Starlette, Uvicorn's protocol", await _wire(starlette, "/hello", HttpToolsProtocol, False)),
                (
                    "edgeruntime serve, its protocol and batched writes",
                    await _wire(edge, "/functions/v1/hello", httptools_protocol(), True),
                ),
            ]
            for _, run in runs:  # warm up: functions boot, caches fill
                await run(1000)
            gc.collect()
            best = [float("inf")] * len(runs)
            for _ in range(rounds):
                for index, (_, run) in enumerate(runs):
                    best[index] = min(best[index], await run(requests))
        finally:
            await edge.shutdown(1)
    return [(label, micros) for (label, _), micros in zip(runs, best, strict=True)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks path", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000, help="requests per round (default 10000)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds; the least CPU per request is kept")
    parser.add_argument("--uvicorn", action="store_true", help="raw requests through Uvicorn's protocol, on uvloop")
    args = parser.parse_args(argv)
    with contextlib.suppress(AttributeError, OSError):  # not on every platform
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import logging

    logging.getLogger("edgeruntime").setLevel(logging.WARNING)  # boot lines would land in the figures
    with open(os.devnull, "w") as log:  # access lines are written, as by a server, to nowhere
        if args.uvicorn:
            import uvloop

            figures = uvloop.run(_run_uvicorn(args.requests, args.rounds, log))
        else:
            figures = asyncio.run(_run(args.requests, args.rounds, log))
    bare = figures[0][1]
    where = " through Uvicorn's protocol" if args.uvicorn else ""
    print(f"# GET hello in-process{where}, one core, least CPU of {args.rounds} x {args.requests} requests")
    print("| app | µs per request | vs bare Starlette |")
    print("|---|---:|---:|")
    for label, micros in figures:
        print(f"| {label} | {micros:.1f} | {micros / bare:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
