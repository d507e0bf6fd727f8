"""What each part of `edgeruntime serve` costs on a real server: CPU per `GET hello`, part by part.

Serves the benchmark functions with `edgeruntime serve` as it is, then with one part switched off
at a time (run history, the dashboard's metrics, the access line, the CPU meter), then with all
of them, the loop watchdog and the job loops off, and bare Starlette on the same server (as it
is, and with the batched writes edgeruntime serves with under uvicorn). The
server is pinned to core 0 and `wrk -t1 -c64` (required) to core 1, and the figure is the
server's CPU per request, read from /proc (less noisy than requests per second on a shared
machine); the variants take turns over the rounds and the medians are printed. Parts are switched
off by replacing them in the server process: this measures, it is not a way to serve. Usage::

    python -m benchmarks parts [--server uvicorn] [--duration 4] [--rounds 4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.peers import FUNCTIONS, REPO, ROOT, free_port, pinned, run_wrk, stop, wait_for

#: Variant name → the parts it switches off.
VARIANTS: dict[str, tuple[str, ...]] = {
    "everything on (the default)": (),
    "without run history": ("history",),
    "without the dashboard's metrics": ("metrics",),
    "without the access line": ("access",),
    "without the CPU meter": ("meter",),
    "without all of these, the watchdog and the job loops": (
        "history",
        "metrics",
        "access",
        "meter",
        "watchdog",
        "jobs",
    ),
}


#: Bare Starlette on uvicorn with the batched writes `edgeruntime serve` uses (what they are worth to it).
BARE_BATCHED = "bare Starlette, writes batched as by edgeruntime serve"


#: Replaces an attribute: `(owner, name, value)`.
Replace = Callable[[Any, str, Any], None]


def _replace(owner: Any, name: str, value: Any) -> None:
    """`setattr`, failing loudly when `name` is gone: a renamed part would otherwise stay on, unmeasured."""
    if not hasattr(owner, name):
        raise AttributeError(
            f"benchmarks parts: {getattr(owner, '__name__', owner)}.{name} is gone; update _switch_off to the new name"
        )
    setattr(owner, name, value)


def _switch_off(parts: set[str], replace: Replace = _replace) -> None:
    """Replace the named parts with no-ops, in this (the server's) process."""
    if "history" in parts:
        from edgeruntime.jobs.history import RunHistory

        replace(RunHistory, "_invocation_observer", lambda self, served: lambda inv: None)
        replace(RunHistory, "_background_observer", lambda self: lambda task: None)
    if "metrics" in parts:
        from edgeruntime.dashboard.metrics import Metrics

        replace(Metrics, "invocation", lambda self, record: None)
    if "access" in parts:
        from edgeruntime.core.logs import AccessLog

        replace(AccessLog, "__call__", lambda self, *values: None)
    if "meter" in parts:
        import edgeruntime.workers.worker

        replace(edgeruntime.workers.worker, "metered", lambda awaitable, meter: awaitable)
    if "watchdog" in parts:
        from edgeruntime.core.metering import LoopWatchdog

        replace(LoopWatchdog, "start", lambda self: None)
        replace(LoopWatchdog, "stop", lambda self: None)
    if "jobs" in parts:
        from edgeruntime.jobs.system import JobSystem

        async def start(self: Any) -> None:
            return None

        replace(JobSystem, "start", start)


def serve(argv: list[str]) -> int:
    """`python -m benchmarks.parts --serve PARTS edgeruntime-serve-args...`"""
    _switch_off(set(filter(None, argv[0].split(","))))
    from edgeruntime.serving.cli import main

    return main(argv[1:])


def serve_bare_batched(argv: list[str]) -> int:
    """`python -m benchmarks.parts --bare-batched --port N`: bare Starlette on edgeruntime's serving loop."""
    import asyncio

    import uvicorn

    from edgeruntime.serving.server import serving_loop

    port = int(argv[argv.index("--port") + 1])
    app = "benchmarks.apps.starlette_app:app"
    config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="none", access_log=False, log_level="warning")
    with asyncio.Runner(loop_factory=serving_loop("uvicorn")) as runner:
        runner.run(uvicorn.Server(config).serve())
    return 0


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(argv: list[str], url: str, duration: float) -> float:
    """µs of server CPU per request under wrk."""
    port = free_port()
    with tempfile.TemporaryDirectory() as store, tempfile.TemporaryFile() as log:
        env = {**os.environ, "EDGERUNTIME_DATABASE_URL": f"sqlite:///{store}/edgeruntime.db"}
        proc = subprocess.Popen(pinned(0, [*argv, "--port", str(port)]), cwd=REPO, env=env, stdout=log, stderr=log)
        try:
            target = url.format(port=port)
            wait_for(target, proc)
            run_wrk(target, 1, 64, post=False)  # warm up
            before = _cpu_seconds(proc.pid)
            load = run_wrk(target, duration, 64, post=False)
            return (_cpu_seconds(proc.pid) - before) / max(1, load.requests) * 1e6
        finally:
            stop(proc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks parts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="uvicorn", choices=("uvicorn", "hypercorn"))
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run (default 4)")
    parser.add_argument("--rounds", type=int, default=4, help="runs of every variant, interleaved (default 4)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None or not sys.platform.startswith("linux"):
        print("benchmarks parts needs wrk and Linux (/proc): apt-get install wrk", file=sys.stderr)
        return 2
    if args.server == "uvicorn":
        bare = [sys.executable, "-m", "uvicorn", "benchmarks.apps.starlette_app:app", "--loop", "uvloop"]
        bare += ["--http", "httptools", "--no-access-log", "--log-level", "warning", "--host", "127.0.0.1"]
        bare_batched = [sys.executable, "-m", "benchmarks.parts", "--bare-batched"]
    else:
        print("bare Starlette is measured under uvicorn only (hypercorn serves it from a child process)")
        bare = bare_batched = []
    runs: dict[str, list[float]] = {}
    for number in range(1, args.rounds + 1):
        for label, parts in VARIANTS.items():
            print(f"  round {number}: {label} ...", file=sys.stderr, flush=True)
            argv_er = [sys.executable, "-m", "benchmarks.parts", "--serve", ",".join(parts), "serve", str(FUNCTIONS)]
            argv_er += ["--no-watch", "--server", args.server, "--config", str(ROOT / "config.toml")]
            url = "http://127.0.0.1:{port}/functions/v1/hello"
            runs.setdefault(label, []).append(measure(argv_er, url, args.duration))
        if bare:
            print(f"  round {number}: bare Starlette ...", file=sys.stderr, flush=True)
            runs.setdefault("bare Starlette", []).append(measure(bare, "http://127.0.0.1:{port}/hello", args.duration))
            print(f"  round {number}: bare Starlette, writes batched ...", file=sys.stderr, flush=True)
            runs.setdefault(BARE_BATCHED, []).append(
                measure(bare_batched, "http://127.0.0.1:{port}/hello", args.duration)
            )
        time.sleep(0.5)
    default = statistics.median(runs["everything on (the default)"])
    print(f"# GET hello on {args.server}, µs of server CPU per request, median of {args.rounds} rounds")
    print("| edgeruntime serve | µs of CPU per request |")
    print("|---|---:|")
    for label, values in runs.items():
        median = statistics.median(values)
        delta = "" if label == "everything on (the default)" else f" ({median - default:+.1f})"
        print(f"| {label} | {median:.1f}{delta} |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        sys.exit(serve(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "--bare-batched":
        sys.exit(serve_bare_batched(sys.argv[2:]))
    sys.exit(main())
