"""Instructions per request, counted by callgrind: edgeruntime against bare Starlette on Uvicorn.

Requests per second on a shared 2-core machine move by 10 % from one minute to the next, so a
change worth 3 % is lost in them. Instructions are not: each server runs under
``valgrind --tool=callgrind`` with the counting switched off while it starts and warms up, then on
for a fixed number of requests (a client on loopback, keep-alive connections), then dumped. The
count covers every thread of the server (the run-history writer's SQLite work included) and the
background work of the requests (``POST bg`` waits for its 2 s tasks before the dump), not the
kernel's work for the sockets. It does not say how long a request takes: cache misses and system
calls cost time that no instruction count shows, so the wall-clock benchmarks (`peers`,
`workers`) stay the judges; this one says whether a change to the request path did less work.
Usage::

    python -m benchmarks instructions [--requests 3200] [--connections 32] [--apps edgeruntime,starlette,asgi]

Needs valgrind (Debian: ``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from benchmarks import peers

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
MISSING = "valgrind is not installed: apt-get install valgrind (it brings callgrind and callgrind_control)"
#: Seconds for the background work of the counted requests (2 s tasks) to end before the dump.
SETTLE_SEC = 3.5


#: The apps that can be counted: the peers benchmark's, on Uvicorn (its command lines and
#: endpoints); "asgi", the raw ASGI app, is the least any app can cost (counted when asked for).
APPS = ("edgeruntime", "starlette", "asgi")


def target(app_name: str) -> peers.Target:
    """`app_name` on Uvicorn, as `benchmarks peers` serves it."""
    return next(t for t in peers.targets("uvicorn", False) if t.app == app_name)


def totals(dump: str) -> int:
    """The instructions a callgrind dump counted (its `totals:` line, else its `summary:` line)."""
    found = re.search(r"^totals:\s+(\d+)", dump, re.M) or re.search(r"^summary:\s+(\d+)", dump, re.M)
    if found is None:
        raise ValueError("no totals in the callgrind dump")
    return int(found.group(1))


async def _connection(port: int, request: bytes, count: int) -> int:
    """Send `count` requests one after the other on one keep-alive connection; the 2xx answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answered = 0
    try:
        for _ in range(count):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            answered += head.startswith(b"HTTP/1.1 2")
    finally:
        writer.close()
    return answered


def send_requests(port: int, path: str, post: bool, total: int, connections: int) -> int:
    """`total` requests over `connections` connections (each sends its share in turn); the 2xx answered."""
    if post:
        request = (
            b"POST %s HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        )
    else:
        request = b"GET %s HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
    request = request.replace(b"%s", path.encode(), 1)

    async def run() -> int:
        shares = [total // connections + (i < total % connections) for i in range(connections)]
        counts = await asyncio.gather(*(_connection(port, request, n) for n in shares if n))
        return sum(counts)

    return asyncio.run(run())


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode} before it answered")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s under valgrind")


def count(app_name: str, endpoint: str, requests: int, connections: int) -> float:
    """Instructions per request of `app_name` serving `endpoint` ("hello" or "bg")."""
    port = peers.free_port()
    app = target(app_name)
    path = app.hello_path if endpoint == "hello" else app.bg_path
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        counting = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
        argv = [*counting, *peers.command(app, port)]
        env = {**os.environ, "EDGERUNTIME_DATABASE_URL": f"sqlite:///{tmp}/edgeruntime.db"}
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_ready(f"http://127.0.0.1:{port}{app.hello_path}", proc)
            warm = max(connections, requests // 5)
            send_requests(port, path, endpoint == "bg", warm, connections)
            time.sleep(SETTLE_SEC if endpoint == "bg" else 0.5)
            subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
            answered = send_requests(port, path, endpoint == "bg", requests, connections)
            if answered != requests:
                raise RuntimeError(f"{app_name} answered {answered} of {requests} requests with a 2xx")
            time.sleep(SETTLE_SEC if endpoint == "bg" else 0.5)
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
            dump = Path(f"{out}.1")
            deadline = time.monotonic() + 30
            while not (dump.exists() and "totals:" in dump.read_text()) and time.monotonic() < deadline:
                time.sleep(0.1)
            return totals(dump.read_text()) / requests
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(30)


def report(counts: dict[tuple[str, str], float]) -> str:
    lines = ["| app | endpoint | instructions per request |", "|---|---|---:|"]
    for (app_name, endpoint), value in counts.items():
        lines.append(f"| {app_name} | {endpoint} | {value:,.0f} |")
    lines.append("")
    for endpoint in ("hello", "bg"):
        ours, theirs = counts.get(("edgeruntime", endpoint)), counts.get(("starlette", endpoint))
        if ours and theirs:
            lines.append(f"- {endpoint}: edgeruntime / bare Starlette = {ours / theirs:.2f}x the instructions")
        least = counts.get(("asgi", endpoint))
        if least:
            above = [
                f"{name} {value - least:,.0f}"
                for (name, kind), value in counts.items()
                if kind == endpoint and name != "asgi"
            ]
            if above:
                lines.append(f"- {endpoint}: instructions above the raw ASGI app's: {', '.join(above)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks instructions", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3200, help="requests counted per endpoint (default 3200)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--apps", default="edgeruntime,starlette")
    parser.add_argument("--endpoints", default="hello,bg")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print(MISSING, file=sys.stderr)
        return 2
    names = [name for name in args.apps.split(",") if name]
    unknown = sorted(set(names) - set(APPS))
    endpoints = [name for name in args.endpoints.split(",") if name]
    if unknown or not names or not set(endpoints) <= {"hello", "bg"} or not endpoints or args.requests < 1:
        print(
            "--apps takes edgeruntime,starlette,asgi; --endpoints hello,bg; --requests a positive count",
            file=sys.stderr,
        )
        return 2
    peers.byte_compile()
    counts: dict[tuple[str, str], float] = {}
    for name in names:
        for endpoint in endpoints:
            print(f"  counting {name} {endpoint} ...", file=sys.stderr, flush=True)
            counts[name, endpoint] = count(name, endpoint, args.requests, args.connections)
    print(f"# instructions per request under callgrind: {args.requests} requests on {args.connections} connections")
    print()
    print(report(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
