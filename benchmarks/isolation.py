"""Throughput of ``isolation = "process"`` against ``"inline"`` on the hello function.

Starts a real ``edgeruntime serve --no-watch`` for each isolation on a loopback port, drives it
for a few seconds with a bounded load generator (asyncio, raw HTTP/1.1 keep-alive connections),
and prints requests per second and the ratio. Goal: process >= 0.5x inline.

    python -m benchmarks.isolation [--seconds 4] [--connections 16,1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "functions" / "hello"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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


async def _connection(port: int, request: bytes, stop_at: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < stop_at:
            writer.write(request)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:  # the server closed a keep-alive connection: reconnect
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected response: {head[:60]!r}")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            counts[0] += 1
    finally:
        writer.close()


async def drive(port: int, seconds: float, connections: int) -> float:
    """Requests per second over `seconds`, with `connections` keep-alive connections."""
    request = b"GET /functions/v1/hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    warm: list[int] = [0]
    await asyncio.gather(*(_connection(port, request, time.monotonic() + 0.5, warm) for _ in range(connections)))
    counts: list[int] = [0]
    started = time.monotonic()
    await asyncio.gather(*(_connection(port, request, started + seconds, counts) for _ in range(connections)))
    return counts[0] / (time.monotonic() - started)


def measure(functions_dir: Path, isolation: str, seconds: float, connections: int) -> float:
    port = free_port()
    proc = subprocess.Popen(
        [
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
            "--log-format",
            "json",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        return asyncio.run(drive(port, seconds, connections))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.isolation", description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per run (default 4)")
    parser.add_argument(
        "--connections", default="16,1", help="comma-separated connection counts, one run each (default 16,1)"
    )
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.connections.split(",") if c.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        functions_dir = Path(tmp) / "functions"
        shutil.copytree(HELLO, functions_dir / "hello")
        for connections in counts:
            results = {iso: measure(functions_dir, iso, args.seconds, connections) for iso in ("inline", "process")}
            print(f"hello, {connections} keep-alive connection(s), {args.seconds:g} s each, loopback")
            for iso, rps in results.items():
                print(f"  isolation={iso:<8} {rps:8.0f} req/s")
            ratio = results["process"] / results["inline"]
            print(f"  process/inline = {ratio:.2f}x (goal >= 0.5x)")
            if connections == 1:
                added_ms = (1 / results["process"] - 1 / results["inline"]) * 1000
                print(f"  latency the process hop adds per request: {added_ms:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
