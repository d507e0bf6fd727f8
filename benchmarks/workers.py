"""`edgeruntime serve --workers 2` against `--workers 1`, and the default server against bare Starlette, in one run.

Prints, as ratios measured in the same run (medians of interleaved rounds: the machine is shared):

- a CPU-bound function (about 5 ms of pure-Python work a request) with ``--workers 2`` against
  ``--workers 1`` (goal >= 1.7x on a 2-core machine). Nothing is pinned to a core: the servers
  may use every core, and so does the load generator (wrk, one thread), which needs little CPU at
  a few hundred requests a second. The CPU time each serving process used is printed too: it
  shows whether both did work, or one took every connection;
- GET hello with ``--workers 2`` against 1 (reported, no goal: wrk shares the cores with the
  servers and needs as much CPU as they do at tens of thousands of requests a second);
- the default ``edgeruntime serve`` (no ``--server``) against bare Starlette on Uvicorn, as
  ``benchmarks peers`` measures them (server on core 0, wrk on core 1): GET hello (goal >= 0.9x)
  and POST 202 + ``wait_until`` against Starlette's background task (goal >= 2x, p99 <= 20 ms).

Usage::

    python -m benchmarks workers [--duration 8] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import peers
from benchmarks.peers import Load, Target

#: The CPU-bound function: `ROUNDS` (calibrated to ~5 ms here) of a pure-Python loop per request.
CPU_FUNCTION = """
import os
from starlette.responses import JSONResponse
from edgeruntime import serve

ROUNDS = int(os.environ["CPU_ROUNDS"])

@serve
async def handler(req):
    total = 0
    for i in range(ROUNDS):
        total += i * i
    return JSONResponse({"pid": os.getpid(), "total": total})
"""

# Both functions answer without a JWT (as bare Starlette does); the CPU-bound one may run for the
# whole benchmark in one worker (the 1 s CPU soft limit would retire it every ~200 requests).
CONFIG = """
[functions.hello]
verify_jwt = false

[functions.cpu]
verify_jwt = false
cpu_soft_limit_ms = 3600000
cpu_hard_limit_ms = 7200000
"""

CPU_TARGET_MS = 5.0
CPU_CONNECTIONS = 16


def calibrate(target_ms: float = CPU_TARGET_MS) -> int:
    """Loop rounds that take about `target_ms` of CPU in this interpreter (the median of a few tries)."""
    rounds = 10_000
    samples = []
    for _ in range(7):
        started = time.thread_time()
        total = 0
        for i in range(rounds):
            total += i * i
        samples.append((time.thread_time() - started) * 1000)
    return max(1, int(rounds * target_ms / statistics.median(samples)))


@contextlib.contextmanager
def project() -> Iterator[Path]:
    """A functions directory holding `hello` (as `benchmarks peers` serves it) and `cpu`."""
    with tempfile.TemporaryDirectory(prefix="edgeruntime-bench-") as tmp:
        functions = Path(tmp) / "functions"
        (functions / "hello").mkdir(parents=True)
        shutil.copy(peers.FUNCTIONS / "hello" / "index.py", functions / "hello" / "index.py")
        (functions / "cpu").mkdir()
        (functions / "cpu" / "index.py").write_text(CPU_FUNCTION)
        (Path(tmp) / "config.toml").write_text(CONFIG)
        yield functions


def cpu_seconds(pid: int) -> float:
    """User + system CPU time `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serving_processes(pid: int) -> list[int]:
    """The serving processes of a supervisor (none when `pid` serves by itself)."""
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


@dataclass
class Run:
    workers: int
    path: str
    load: Load
    #: CPU seconds each process that served used during the load (the supervisor's children, or itself).
    cpu_sec: list[float]
    #: How long the load ran.
    seconds: float

    @property
    def cores(self) -> float:
        """The cores the serving processes used on average during the load."""
        return sum(self.cpu_sec) / self.seconds

    @property
    def cpu_ms_per_request(self) -> float:
        """The servers' CPU time per request answered (the handler's work and the server's own)."""
        return 1000 * sum(self.cpu_sec) / max(1, self.load.requests)


def measure_workers(functions: Path, workers: int, path: str, duration: float, connections: int, rounds: int) -> Run:
    """`serve --workers N` (default server, unpinned) under wrk on `path`, also unpinned."""
    port = peers.free_port()
    argv = [sys.executable, "-m", "edgeruntime", "serve", str(functions), "--no-watch", "--workers", str(workers)]
    env = {"CPU_ROUNDS": str(rounds)}
    with tempfile.TemporaryDirectory() as store, tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [*argv, "--port", str(port)],
            cwd=peers.REPO,
            env={**os.environ, **env, "EDGERUNTIME_DATABASE_URL": f"sqlite:///{store}/edgeruntime.db"},
            stdout=log,
            stderr=log,
        )
        try:
            url = f"http://127.0.0.1:{port}{path}"
            peers.wait_for(url, proc, timeout=60)
            deadline = time.monotonic() + 60
            while workers > 1 and len(serving_processes(proc.pid)) < workers and time.monotonic() < deadline:
                time.sleep(0.05)
            # Every serving process gets the warm-up: it boots the function in each one.
            unpinned_load(url, 2, connections)
            pids = serving_processes(proc.pid) or [proc.pid]
            before = [cpu_seconds(pid) for pid in pids]
            result = unpinned_load(url, duration, connections)
            used = [cpu_seconds(pid) - start for pid, start in zip(pids, before, strict=True)]
        finally:
            peers.stop(proc)
    return Run(workers, path, result, used, duration)


def unpinned_load(url: str, duration: float, connections: int) -> Load:
    """wrk (one thread) on any core; a Python generator where wrk is missing."""
    if shutil.which("wrk") is None:
        return peers.load(url, duration, connections, post=False)
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{int(duration)}s", "--latency", url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60).stdout
    return peers.parse_wrk(out)


def default_target() -> Target:
    """`edgeruntime serve` as a user runs it: no --server (and no JWT on the benchmark's functions)."""
    argv = [sys.executable, "-m", "edgeruntime", "serve", str(peers.FUNCTIONS), "--no-watch"]
    argv += ["--config", str(peers.ROOT / "config.toml")]
    return Target("default", "edgeruntime", argv, "/functions/v1/hello", "/functions/v1/bg")


def starlette_target() -> Target:
    return next(t for t in peers.targets("uvicorn", isolation_process=False) if t.app == "starlette")


def _median_run(runs: Sequence[Run]) -> Run:
    """The median round (by req/s) of one measurement: its figures belong together."""
    ranked = sorted(runs, key=lambda r: r.load.rps)
    middle = ranked[len(ranked) // 2]
    errors = sum(r.load.errors for r in runs)
    load = Load(**{**asdict(middle.load), "errors": errors})
    return Run(middle.workers, middle.path, load, middle.cpu_sec, middle.seconds)


def report(
    runs: dict[tuple[int, str], Run], default: peers.Result, starlette: peers.Result, rounds_ms: float, load: str
) -> str:
    lines = [
        f"# measured with load average {load}; the CPU-bound function's loop: {rounds_ms:.1f} ms of CPU",
        "",
        "| workers | endpoint | req/s | p50 ms | p99 ms | errors | CPU s per serving process | CPU ms a request |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for (workers, path), run in sorted(runs.items()):
        cpu = ", ".join(f"{c:.1f}" for c in run.cpu_sec)
        lines.append(
            f"| {workers} | GET {path} | {run.load.rps:.0f} | {run.load.p50_ms:.1f} | {run.load.p99_ms:.1f} "
            f"| {run.load.errors} | {cpu} | {run.cpu_ms_per_request:.2f} |"
        )
    lines.append("")
    for path in ("/functions/v1/cpu", "/functions/v1/hello"):
        one, two = runs.get((1, path)), runs.get((2, path))
        if one and two:
            goal = " (goal >= 1.7x)" if path.endswith("cpu") else " (reported: wrk shares the 2 cores)"
            lines.append(
                f"- GET {path}: --workers 2 / --workers 1 = {two.load.rps / one.load.rps:.2f}x{goal}; "
                f"the serving processes used {one.cores:.2f} and {two.cores:.2f} cores"
            )
            if path.endswith("cpu") and two.cores < 1.7 * one.cores:
                lines.append(
                    f"  note: two CPU-bound serving processes used {two.cores:.2f} cores where one used "
                    f"{one.cores:.2f}: something else held the CPU (load average {os.getloadavg()[0]:.2f}), so this "
                    "ratio measures the machine's spare cores more than edgeruntime"
                )
    if default.hello and starlette.hello:
        lines.append(
            f"- GET hello: default edgeruntime serve / bare Starlette on Uvicorn = "
            f"{default.hello.rps / starlette.hello.rps:.2f}x (goal >= 0.9x)"
        )
    if default.bg and starlette.bg:
        lines.append(
            f"- POST 202 + background: default edgeruntime serve (wait_until) / Starlette BackgroundTask = "
            f"{default.bg.rps / starlette.bg.rps:.2f}x (goal >= 2x); edgeruntime p99 {default.bg.p99_ms:.1f} ms "
            f"(goal <= 20 ms)"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks workers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per load run (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--connections", type=int, default=64, help="connections for GET hello and the peers")
    parser.add_argument("--quick", action="store_true", help="2 s runs, one round: for checking the harness")
    args = parser.parse_args(argv)
    duration = 2.0 if args.quick else args.duration
    rounds = 1 if args.quick else max(1, args.rounds)
    print(
        f"# --workers 2 vs 1 and the default server vs bare Starlette: {os.cpu_count()} cores, "
        f"{duration:.0f} s per run, {rounds} round(s); load average {os.getloadavg()[0]:.2f} at the start",
        flush=True,
    )
    peers.byte_compile()
    cpu_rounds = calibrate()
    started_load = os.getloadavg()
    measured: dict[tuple[int, str], list[Run]] = {}
    compared: dict[str, list[peers.Result]] = {"default": [], "starlette": []}
    with project() as functions:
        for number in range(1, rounds + 1):
            for path, connections in (
                ("/functions/v1/cpu", CPU_CONNECTIONS),
                ("/functions/v1/hello", args.connections),
            ):
                for workers in (1, 2):
                    print(f"  round {number}: --workers {workers} GET {path} ...", file=sys.stderr, flush=True)
                    run = measure_workers(functions, workers, path, duration, connections, cpu_rounds)
                    measured.setdefault((workers, path), []).append(run)
            for name, target in (("default", default_target()), ("starlette", starlette_target())):
                print(f"  round {number}: {name} (peers harness) ...", file=sys.stderr, flush=True)
                compared[name].append(peers.measure(target, duration, args.connections))
    runs = {key: _median_run(value) for key, value in measured.items()}
    default, starlette = (peers.median_result(compared[name]) for name in ("default", "starlette"))
    ended_load = os.getloadavg()
    load = f"{started_load[0]:.2f} at the start, {ended_load[0]:.2f} at the end (1 min)"
    text = report(runs, default, starlette, CPU_TARGET_MS, load)
    print(text)
    peers.RESULTS.mkdir(exist_ok=True)
    data = {
        "workers": {
            f"{w} {p}": {**asdict(r), "cpu_ms_per_request": r.cpu_ms_per_request} for (w, p), r in runs.items()
        },
        "default": asdict(default),
        "starlette": asdict(starlette),
        "cpu_rounds": cpu_rounds,
        "load": load,
    }
    (peers.RESULTS / f"workers-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
