"""edgeruntime against its peers, in one run on this machine.

The same two endpoints on every app: ``GET hello`` → ``{"ok": true}``; ``POST bg`` → 202 at once
and 2 s of background work (edgeruntime: ``EdgeRuntime.wait_until``; Starlette: ``BackgroundTask``;
FastAPI: ``BackgroundTasks``; a raw ASGI app, the ceiling of any Python app on each server: a task of
the loop; Deno, the runtime edgeruntime emulates: ``Deno.serve`` with an
``EdgeRuntime.waitUntil`` shim, when the ``deno`` package or binary is installed). Each server
process is pinned to core 0 and the load generator (wrk, or a Python generator when wrk is missing)
to core 1. Prints req/s, p50/p99, RSS per pending background task, background completion and cold
start, with ratios against the peers measured in the same run, and what bounds the goals in that run:
the raw ASGI app's ratios, and the 202 run's mean latency (connections / throughput, Little's law),
which its p99 cannot be under. Usage::

    python -m benchmarks peers [--duration 8] [--rounds 3] [--servers hypercorn,uvicorn] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
RESULTS = ROOT / "results"
FUNCTIONS = ROOT / "functions"
HAS_TASKSET = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
DENO_APP = ROOT / "apps" / "deno_app.ts"
DENO_MISSING = (
    "Deno is not installed, so there is no Deno column: pip install deno "
    "(it ships the binary; `pip install -e '.[bench]'` brings it)"
)
POST_LUA = 'wrk.method = "POST"\nwrk.body = "{}"\nwrk.headers["Content-Type"] = "application/json"\n'


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


@dataclass
class Result:
    server: str
    app: str
    hello: Load | None = None
    bg: Load | None = None
    bg_completed_pct: float | None = None
    kib_per_pending_task: float | None = None
    cold_start_ms: float | None = None
    notes: list[str] = field(default_factory=list)


def byte_compile() -> None:
    """Write the bytecode of edgeruntime and the peer apps, as installing a package does.

    The peers load precompiled modules from site-packages, while edgeruntime runs from this
    checkout: with PYTHONDONTWRITEBYTECODE set (or a read-only tree) every start would compile
    edgeruntime from source and the cold start would measure the compiler, not the runtime.
    """
    for directory in (REPO / "edgeruntime", ROOT):
        compileall.compile_dir(directory, quiet=1)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinned(core: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv] if HAS_TASKSET else argv


@dataclass
class Target:
    """One app on one server: how to start it and where its endpoints are."""

    server: str
    app: str
    argv: list[str]
    hello_path: str
    bg_path: str
    env: dict[str, str] = field(default_factory=dict)


def find_deno() -> str | None:
    """The deno binary: the `deno` package's (the bench extra), else one on PATH; None when neither."""
    try:
        from deno import find_deno_bin
    except ImportError:
        pass
    else:
        try:
            found: str = find_deno_bin()
            return found
        except FileNotFoundError:
            pass
    return shutil.which("deno")


def deno_target(binary: str) -> Target:
    """Deno.serve with the `waitUntil` shim; `start` adds the one port it may listen on."""
    # No remote, npm, config or lock file: the app runs offline, with network access to its port only.
    argv = [binary, "run", "--no-prompt", "--no-remote", "--no-npm", "--no-config", "--no-lock"]
    return Target("deno", "deno", argv, "/hello", "/bg", env={"DENO_NO_UPDATE_CHECK": "1"})


def targets(server: str, isolation_process: bool) -> list[Target]:
    found = []
    er_serve = [
        sys.executable,
        "-m",
        "edgeruntime",
        "serve",
        str(FUNCTIONS),
        "--no-watch",
        "--server",
        server,
        "--config",
        str(ROOT / "config.toml"),
    ]
    found.append(Target(server, "edgeruntime", er_serve, "/functions/v1/hello", "/functions/v1/bg"))
    if isolation_process:
        found.append(
            Target(
                server,
                "edgeruntime-process",
                [*er_serve, "--isolation", "process"],
                "/functions/v1/hello",
                "/functions/v1/bg",
            )
        )
    for app in ("starlette", "fastapi", "asgi"):
        module = f"benchmarks.apps.{app}_app:app"
        if server == "hypercorn":
            argv = [sys.executable, "-m", "hypercorn", module, "--log-level", "warning"]
        else:
            argv = [
                sys.executable,
                "-m",
                "uvicorn",
                module,
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ]
        found.append(Target(server, app, argv, "/hello", "/bg"))
    return found


def command(target: Target, port: int) -> list[str]:
    """The command line that serves `target` on 127.0.0.1:`port`."""
    argv = list(target.argv)
    if target.app.startswith("edgeruntime"):
        argv += ["--port", str(port)]
    elif target.app == "deno":
        argv += [f"--allow-net=127.0.0.1:{port}", str(DENO_APP), str(port)]
    elif target.server == "hypercorn":
        argv += ["--bind", f"127.0.0.1:{port}"]
    else:
        argv += ["--host", "127.0.0.1", "--port", str(port)]
    return argv


def start(target: Target, port: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    argv = command(target, port)
    # Output goes to a file: a pipe nobody reads fills up and blocks the server's log writes.
    with tempfile.TemporaryFile() as log:
        return subprocess.Popen(
            pinned(0, argv), cwd=REPO, env={**os.environ, **target.env, **(env or {})}, stdout=log, stderr=log
        )


def wait_for(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> float:
    """Seconds until `url` answers 200 (polled every 2 ms)."""
    started = time.perf_counter()
    with httpx.Client(timeout=1) as client:
        while time.perf_counter() - started < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                if client.get(url).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.002)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def rss_kib(pid: int) -> int:
    """Resident set of `pid` (taskset execs the server, so the pid is the server's) and its descendants.

    The whole tree, because the process started is not always the one that serves: `python -m
    hypercorn` only supervises the worker it spawns, and edgeruntime's process isolation runs the
    functions (and their pending tasks) in children. Pages the processes share count once per
    process; the benchmark reads a difference, in which the ones already there cancel out.
    """
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # a process that ended while the tree was read
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        pending.extend(children.get(current, ()))
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s)", text)
    if not match:
        return float("nan")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(url: str, duration: float, connections: int, post: bool) -> Load:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(POST_LUA if post else "")
    try:
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{int(duration)}s", "--latency", "-s", script.name, url]
        out = subprocess.run(pinned(1, argv), capture_output=True, text=True, timeout=duration + 60).stdout
    finally:
        os.unlink(script.name)
    return parse_wrk(out)


def parse_wrk(out: str) -> Load:
    """The figures of wrk's `--latency` report."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    return Load(rps, p50, p99, errors, requests)


async def _py_load(url: str, duration: float, connections: int, post: bool) -> Load:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                r = await (client.post(url, json={}) if post else client.get(url))
                if r.status_code >= 400:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            latencies.append((time.perf_counter() - t0) * 1000)

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(connections)))
    latencies.sort()
    n = len(latencies)
    return Load(n / duration, latencies[n // 2], latencies[min(n - 1, int(n * 0.99))], errors, n)


def load(url: str, duration: float, connections: int, post: bool) -> Load:
    if shutil.which("wrk"):
        return run_wrk(url, duration, connections, post)
    return asyncio.run(_py_load(url, duration, connections, post))


_METRIC = re.compile(r"^(edgeruntime_requests_total|edgeruntime_background_tasks_total)\{([^}]*)\} ([0-9.e+]+)$", re.M)


def background_counts(base: str, target: Target) -> dict[str, int]:
    """Background tasks started (202s) and completed so far.

    The peers count in their own memory (GET on the bg endpoint). edgeruntime is read from its
    metrics: a worker retired by a limit under load takes its module's counters with it, while
    the server counts every worker's requests and tasks.
    """
    if not target.app.startswith("edgeruntime"):
        counts: dict[str, int] = httpx.get(base + target.bg_path, timeout=30).json()
        return counts
    text = httpx.get(base + "/_internal/metrics", timeout=30).text
    started = completed = 0
    for name, labels, value in _METRIC.findall(text):
        if 'function="bg"' not in labels:
            continue
        if name == "edgeruntime_requests_total" and 'status="202"' in labels:
            started += int(float(value))
        elif name == "edgeruntime_background_tasks_total" and 'outcome="completed"' in labels:
            completed += int(float(value))
    return {"started": started, "completed": completed}


def measure(target: Target, duration: float, connections: int) -> Result:
    result = Result(target.server, target.app)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # A fresh run-history database for every run: one left by earlier runs would make each run
    # slower than the last, and the figures depend on nothing but this run.
    store = tempfile.TemporaryDirectory()
    proc = start(target, port, {"EDGERUNTIME_DATABASE_URL": f"sqlite:///{store.name}/edgeruntime.db"})
    try:
        result.cold_start_ms = wait_for(base + target.hello_path, proc) * 1000
        # Warm up both endpoints: a function that boots during the measured run (the background
        # one, under process isolation a worker process's first boot: ~0.3 s) would put its boot
        # into that run's p99. The single task of this POST ends before the 202 run starts.
        boot_background_endpoint(base + target.bg_path)
        load(base + target.hello_path, 1, connections, post=False)
        result.hello = load(base + target.hello_path, duration, connections, post=False)
        time.sleep(0.5)
        rss_before = rss_kib(proc.pid)
        result.bg = load(base + target.bg_path, duration, connections, post=True)
        rss_after = rss_kib(proc.pid)
        counts = background_counts(base, target)
        pending = counts["started"] - counts["completed"]
        if pending > 0:
            result.kib_per_pending_task = max(0, rss_after - rss_before) / pending
        deadline = time.monotonic() + 30
        while counts["completed"] < counts["started"] and time.monotonic() < deadline:
            time.sleep(0.25)
            counts = background_counts(base, target)
        result.bg_completed_pct = 100.0 * counts["completed"] / max(1, counts["started"])
    except (RuntimeError, TimeoutError, httpx.HTTPError) as exc:
        result.notes.append(str(exc).splitlines()[0][:200])
    finally:
        stop(proc)
        store.cleanup()
    return result


def boot_background_endpoint(url: str) -> None:
    """POST once to the 202 endpoint `url`, so that what serves it is up before it is measured."""
    response = httpx.post(url, content=b"{}", headers={"content-type": "application/json"}, timeout=60)
    if response.status_code != 202:
        raise RuntimeError(f"POST {url} answered {response.status_code}, not 202")


def _median(values: list[float | None]) -> float | None:
    present = sorted(v for v in values if v is not None)
    return statistics.median(present) if present else None


def median_result(same: Sequence[Result]) -> Result:
    """One app on one server measured in several rounds: the median of each figure.

    This machine is shared: a neighbour's load slows a whole run now and then. Rounds
    interleave the apps, so such a slowdown hits one round of each rather than one app.
    """
    first = same[0]
    merged = Result(first.server, first.app, notes=[note for r in same for note in r.notes])
    for name in ("hello", "bg"):
        loads = [getattr(r, name) for r in same if getattr(r, name) is not None]
        if loads:
            setattr(
                merged,
                name,
                Load(
                    statistics.median(x.rps for x in loads),
                    statistics.median(x.p50_ms for x in loads),
                    statistics.median(x.p99_ms for x in loads),
                    sum(x.errors for x in loads),
                    sum(x.requests for x in loads),
                ),
            )
    merged.bg_completed_pct = min((r.bg_completed_pct for r in same if r.bg_completed_pct is not None), default=None)
    merged.kib_per_pending_task = _median([r.kib_per_pending_task for r in same])
    merged.cold_start_ms = _median([r.cold_start_ms for r in same])
    return merged


#: Starts of each app whose median is the cold start (odd: the median is one of them).
COLD_STARTS = 5


def twenty_functions(directory: Path, server: str) -> tuple[Target, Target]:
    """A project of 20 hello functions in `directory`, and the two cold starts compared on it.

    (edgeruntime serving the project, bare Starlette on the same server.) The first function
    checks no JWT, so a plain GET is its first 200.
    """
    functions = directory / "functions"
    config = ["[functions.f01]", "verify_jwt = false"]
    for i in range(1, 21):
        (functions / f"f{i:02d}").mkdir(parents=True)
        shutil.copy(FUNCTIONS / "hello" / "index.py", functions / f"f{i:02d}" / "index.py")
    (directory / "config.toml").write_text("\n".join(config) + "\n")
    er = Target(
        server,
        "edgeruntime",
        [sys.executable, "-m", "edgeruntime", "serve", str(functions), "--no-watch", "--server", server],
        "/functions/v1/f01",
        "",
    )
    bare = next(t for t in targets(server, False) if t.app == "starlette")
    return er, bare


def cold_starts(er: Target, bare: Target, starts: int) -> dict[str, list[float]]:
    """ms from exec to the first 200 of each app, `starts` times each, the two taking turns."""
    times: dict[str, list[float]] = {"er": [], "bare": []}
    for _ in range(starts):
        for key, target in (("er", er), ("bare", bare)):
            port = free_port()
            proc = start(target, port)
            try:
                times[key].append(wait_for(f"http://127.0.0.1:{port}{target.hello_path}", proc) * 1000)
            finally:
                stop(proc)
    return times


def cold_start_20(server: str) -> tuple[float, float]:
    """(edgeruntime with 20 functions, bare Starlette) ms to the first 200, median of COLD_STARTS."""
    with tempfile.TemporaryDirectory() as tmp:
        times = cold_starts(*twenty_functions(Path(tmp), server), COLD_STARTS)
        return statistics.median(times["er"]), statistics.median(times["bare"])


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


#: GET hello's goal against bare Starlette on each server (issue 18): ahead on Uvicorn, level on Hypercorn.
HELLO_GOAL = {"uvicorn": 1.1, "hypercorn": 1.0}


#: The p99 goal of the 202 run (issue 18), in seconds.
BG_P99_GOAL_SEC = 0.020


def report(results: list[Result], cold: dict[str, tuple[float, float]], connections: int = 64) -> str:
    lines = [
        "| server | app | hello req/s | p50 ms | p99 ms | bg req/s | bg p50 ms | bg p99 ms | bg done % "
        "| KiB/pending task | cold start ms | notes |",
        "|" + "---|" * 12,
    ]
    for r in results:
        lines.append(
            f"| {r.server} | {r.app} | {_fmt(r.hello.rps if r.hello else None)} "
            f"| {_fmt(r.hello.p50_ms if r.hello else None, '.1f')} "
            f"| {_fmt(r.hello.p99_ms if r.hello else None, '.1f')} | {_fmt(r.bg.rps if r.bg else None)} "
            f"| {_fmt(r.bg.p50_ms if r.bg else None, '.1f')} | {_fmt(r.bg.p99_ms if r.bg else None, '.1f')} "
            f"| {_fmt(r.bg_completed_pct, '.1f')} | {_fmt(r.kib_per_pending_task, '.1f')} "
            f"| {_fmt(r.cold_start_ms)} | {'; '.join(r.notes)} |"
        )
    lines.append("")
    deno = next((r for r in results if r.app == "deno"), None)
    for server in sorted({r.server for r in results} - {"deno"}):
        by_app = {r.app: r for r in results if r.server == server}
        er, st, fa = by_app.get("edgeruntime"), by_app.get("starlette"), by_app.get("fastapi")
        if er and st and er.hello and st.hello:
            lines.append(
                f"- {server}: hello edgeruntime / bare Starlette = {er.hello.rps / st.hello.rps:.2f}x "
                f"(goal >= {HELLO_GOAL.get(server, 1.0):.1f}x)"
            )
        for peer in (st, fa):
            if er and peer and er.bg and peer.bg:
                lines.append(
                    f"- {server}: 202+background edgeruntime / {peer.app} BackgroundTasks = "
                    f"{er.bg.rps / peer.bg.rps:.2f}x (goal >= 2x); edgeruntime p99 {er.bg.p99_ms:.1f} ms "
                    f"(goal <= 20 ms)"
                )
        if er and er.bg_completed_pct is not None:
            cost = "-" if er.kib_per_pending_task is None else f"{er.kib_per_pending_task:.1f}"
            lines.append(
                f"- {server}: background tasks completed {er.bg_completed_pct:.1f} % (goal 100 %), "
                f"{cost} KiB per pending task (goal <= 5 KiB)"
            )
        if er and deno and er.hello and deno.hello:
            lines.append(
                f"- {server}: hello edgeruntime / Deno = {er.hello.rps / deno.hello.rps:.2f}x "
                f"(goal >= 0.2x on the fastest server)"
            )
        if er and deno and er.bg and deno.bg:
            lines.append(
                f"- {server}: 202+background edgeruntime / Deno waitUntil = {er.bg.rps / deno.bg.rps:.2f}x; "
                f"p99 {er.bg.p99_ms:.1f} ms vs Deno {deno.bg.p99_ms:.1f} ms"
            )
        proc = by_app.get("edgeruntime-process")
        if er and proc and er.hello and proc.hello:
            lines.append(
                f"- {server}: hello process isolation / inline = {proc.hello.rps / er.hello.rps:.2f}x"
                " (goal >= 0.7x on uvicorn)"
            )
        raw = by_app.get("asgi")
        if raw and raw.hello and st and st.hello:
            against_deno = f", {raw.hello.rps / deno.hello.rps:.2f}x Deno" if deno and deno.hello else ""
            lines.append(
                f"- {server}: the ceiling, a raw ASGI app (no framework): hello {raw.hello.rps:.0f} req/s = "
                f"{raw.hello.rps / st.hello.rps:.2f}x bare Starlette{against_deno}"
                + (
                    f"; 202+background {raw.bg.rps / st.bg.rps:.2f}x Starlette BackgroundTasks"
                    if raw.bg and st.bg
                    else ""
                )
            )
        if er and er.bg:
            # wrk keeps every connection busy: the mean latency is connections / throughput, and a
            # p99 is at least the mean.
            needed = connections / BG_P99_GOAL_SEC
            lines.append(
                f"- {server}: 202 mean latency at {connections} connections = {1000 * connections / er.bg.rps:.1f} ms"
                f" (Little's law); a p99 <= {1000 * BG_P99_GOAL_SEC:.0f} ms needs >= {needed:.0f} req/s,"
                f" edgeruntime served {er.bg.rps:.0f}"
            )
        if server in cold:
            e, b = cold[server]
            lines.append(
                f"- {server}: cold start, 20 functions: edgeruntime {e:.0f} ms vs bare Starlette {b:.0f} ms "
                f"= {e / b:.2f}x (goal <= 1.0x)"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per load run (default 8)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--servers", default="hypercorn,uvicorn")
    parser.add_argument("--quick", action="store_true", help="2 s runs, for checking the harness")
    parser.add_argument("--no-process", action="store_true", help="skip the process-isolation variant")
    parser.add_argument(
        "--rounds", type=int, default=3, help="measure every app this many times, interleaved; report medians"
    )
    args = parser.parse_args(argv)
    duration = 2.0 if args.quick else args.duration
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    generator = "wrk" if shutil.which("wrk") else "a Python load generator (install wrk for better figures)"
    print(
        f"# edgeruntime vs peers: {os.cpu_count()} cores, load by {generator}, "
        f"server on core 0 and load on core 1{'' if HAS_TASKSET else ' (taskset missing: unpinned)'}; "
        f"{duration:.0f} s per run, {args.connections} connections",
        flush=True,
    )
    deno = find_deno()
    if deno is None:
        print(f"# {DENO_MISSING}", flush=True)
    byte_compile()
    rounds: list[list[Result]] = []
    cold: dict[str, tuple[float, float]] = {}
    for number in range(1, max(1, args.rounds) + 1):
        results: list[Result] = []
        for server in servers:
            for target in targets(server, isolation_process=not args.no_process):
                print(f"  round {number}: measuring {target.app} on {server} ...", file=sys.stderr, flush=True)
                results.append(measure(target, duration, args.connections))
            if number == 1:
                print(f"  measuring cold start on {server} ...", file=sys.stderr, flush=True)
                cold[server] = cold_start_20(server)
        if deno is not None:
            print(f"  round {number}: measuring Deno ...", file=sys.stderr, flush=True)
            results.append(measure(deno_target(deno), duration, args.connections))
        rounds.append(results)
    results = [median_result(same) for same in zip(*rounds, strict=True)]
    text = report(results, cold, args.connections)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data: dict[str, Any] = {"results": [asdict(r) for r in results], "cold_start_20": cold}
    (RESULTS / f"peers-{stamp}.json").write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
