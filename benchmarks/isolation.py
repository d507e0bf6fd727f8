"""``isolation = "process"`` against ``"inline"``: the boot of a worker process, and hello's throughput.

First the boot: the median of N boots of a hello worker process in the default sandbox (``auto``),
forked from its template as ``edgeruntime serve`` does (goal: at most 15 ms), beside the same
boots spawned as fresh interpreters. Then hello: a real ``edgeruntime serve --no-watch`` for each
isolation on a loopback port, on Uvicorn by default, driven by ``wrk`` (or a Python load generator
where wrk is missing) with 64 and then 1 keep-alive connection(s). As in ``benchmarks peers`` the
server is pinned to core 0 and the load to core 1 (``--no-pin``: the server is not pinned), so a
worker process shares the server's core; the isolations take turns for ``--rounds`` rounds and the medians are
compared. Goal: process >= 0.7x inline on Uvicorn. Each isolation's CPU per request is printed too
(the server's and its worker processes', read from ``/proc`` over the measured seconds): on a
shared machine it varies less than requests per second, and inline/process of it is the
throughput ratio when the server's core does nothing else.

    python -m benchmarks isolation [--server uvicorn] [--seconds 5] [--rounds 3] [--connections 64,1] [--boots 20]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks import peers, sandbox as boots

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "functions" / "hello"


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            if httpx.get(f"{url}/_internal/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"server at {url} not ready after {timeout} s")


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, float, float]:
    """Parent pid, own CPU seconds and the CPU seconds of reaped children of process `pid`."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS, (int(fields[13]) + int(fields[14])) / _TICKS


def tree_cpu(root: int) -> tuple[float, float]:
    """CPU seconds so far of process `root` (the server) and of all its descendants (templates,
    worker processes, the reaped ones included): read before and after a run, the difference is
    what the run cost each (Linux; (0, 0) elsewhere)."""
    stats: dict[int, tuple[int, float, float]] = {}
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return 0.0, 0.0
    for pid in pids:
        try:
            stats[pid] = _stat(pid)
        except (OSError, ValueError, IndexError):
            continue
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    own = stats.get(root, (0, 0.0, 0.0))[1]
    descendants = 0.0
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        _, cpu, reaped = stats[pid]
        descendants += cpu + reaped
        todo.extend(children.get(pid, ()))
    return own, descendants


@dataclass
class Run:
    """One measured run: requests per second, and µs of CPU per request of the server process and
    of its worker processes (and their templates)."""

    rps: float
    server_us: float
    workers_us: float

    @property
    def total_us(self) -> float:
        return self.server_us + self.workers_us


def measure(functions_dir: Path, isolation: str, server: str, seconds: float, connections: int, pin: bool) -> Run:
    """Requests per second of GET hello on a fresh server, after a second of warm-up, and the CPU
    each request cost (less noisy than requests per second on a shared machine)."""
    port = peers.free_port()
    argv = [
        sys.executable,
        "-m",
        "edgeruntime",
        "serve",
        str(functions_dir),
        "--port",
        str(port),
        "--no-watch",
        "--no-verify-jwt",
        "--isolation",
        isolation,
        "--server",
        server,
        "--log-format",
        "json",
    ]
    proc = subprocess.Popen(
        peers.pinned(0, argv) if pin else argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        hello = f"{url}/functions/v1/hello"
        peers.load(hello, 1, connections, post=False)
        before = tree_cpu(proc.pid)
        load = peers.load(hello, seconds, connections, post=False)
        after = tree_cpu(proc.pid)
        requests = max(1, load.requests)
        return Run(load.rps, (after[0] - before[0]) / requests * 1e6, (after[1] - before[1]) / requests * 1e6)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def boot_lines(count: int) -> list[str]:
    """The boot of a hello worker process in the default sandbox, forked and spawned."""
    return asyncio.run(boots.run(["auto"], ["template", "spawn"], count, 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks isolation", description=__doc__)
    parser.add_argument("--server", choices=("uvicorn", "hypercorn"), default="uvicorn")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the isolations taking turns (default 3)")
    parser.add_argument(
        "--connections", default="64,1", help="comma-separated connection counts, one run each (default 64,1)"
    )
    parser.add_argument("--boots", type=int, default=20, help="worker boots to take the median of (default 20)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server (and its workers) to core 0")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.connections.split(",") if c.strip()]
    logging.getLogger("edgeruntime").setLevel(logging.WARNING)
    if args.boots:
        for line in boot_lines(args.boots):
            print(line, flush=True)
    pin = not args.no_pin and peers.HAS_TASKSET
    generator = "wrk" if shutil.which("wrk") else "a Python load generator"
    placement = "server on core 0, load on core 1" if pin else "server unpinned"
    with tempfile.TemporaryDirectory() as tmp:
        functions_dir = Path(tmp) / "functions"
        shutil.copytree(HELLO, functions_dir / "hello")
        for connections in counts:
            measured: dict[str, list[Run]] = {"inline": [], "process": []}
            for _ in range(args.rounds):
                for isolation, runs in measured.items():
                    runs.append(measure(functions_dir, isolation, args.server, args.seconds, connections, pin))
            results = {isolation: [run.rps for run in runs] for isolation, runs in measured.items()}
            print(
                f"hello on {args.server}, {connections} keep-alive connection(s), {generator}, {placement}, "
                f"{args.seconds:g} s x {args.rounds} rounds (load average {os.getloadavg()[0]:.2f})"
            )
            for isolation, runs in measured.items():
                spread = ", ".join(f"{r.rps:.0f}" for r in runs)
                cpu = (
                    f"server {statistics.median(r.server_us for r in runs):.1f}"
                    f" + worker processes {statistics.median(r.workers_us for r in runs):.1f}"
                )
                rps = statistics.median(r.rps for r in runs)
                total = statistics.median(r.total_us for r in runs)
                print(f"  isolation={isolation:<8} median {rps:8.0f} req/s  ({spread})")
                print(f"  {'':<18} µs of CPU per request {total:.1f} ({cpu})")
            cpu_ratio = statistics.median(r.total_us for r in measured["inline"]) / statistics.median(
                r.total_us for r in measured["process"]
            )
            print(
                f"  CPU per request, inline/process = {cpu_ratio:.2f}x "
                "(the throughput ratio when the server's core does nothing else)"
            )
            ratios = [p / i for p, i in zip(results["process"], results["inline"], strict=True)]
            ratio = statistics.median(results["process"]) / statistics.median(results["inline"])
            print(
                f"  process/inline = {ratio:.2f}x (goal >= 0.7x on uvicorn; per round "
                f"{', '.join(f'{r:.2f}' for r in ratios)})"
            )
            if connections == 1:
                added_ms = (1 / statistics.median(results["process"]) - 1 / statistics.median(results["inline"])) * 1000
                print(f"  latency the process hop adds per request: {added_ms:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
