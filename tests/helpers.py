"""Shared test helpers: fixture functions on disk and a real `edgeruntime serve` subprocess."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from edgeruntime.config.keys import demo_keys
from edgeruntime.config.project import DEFAULT_JWT_SECRET

KEYS = demo_keys(DEFAULT_JWT_SECRET)
SERVICE_ROLE = {"Authorization": f"Bearer {KEYS.service_role_key}"}
ANON = {"Authorization": f"Bearer {KEYS.anon_key}"}

HELLO = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve

async def handler(req: Request) -> JSONResponse:
    return JSONResponse({"message": "hello", "path": req.url.path})

serve(handler)
"""


#: Records every run in $RUNS_FILE and answers with the credential headers it received.
CREDENTIALS_ECHO = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import Deno, serve

async def handler(req: Request) -> JSONResponse:
    with open(Deno.env.get("RUNS_FILE"), "a") as f:
        f.write("ran\\n")
    def seen(name):
        return [v.decode("latin-1") for k, v in req.scope["headers"] if k == name]
    return JSONResponse({
        "authorization": seen(b"authorization"),
        "apikey": seen(b"apikey"),
        "starlette": req.headers.get("authorization"),
    })

serve(handler)
"""


def forged_token(role: str = "service_role") -> str:
    """An unsigned JWT (`alg: none`) claiming `role`: what an attacker sends."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'iss': 'supabase-demo', 'role': role, 'exp': 4102444800})}."


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send `data` as is to 127.0.0.1:`port` and read until the server closes (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:  # the server may answer (431) and close before reading it all
            pass
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def status_of(response: bytes) -> int | None:
    """The status code of a raw HTTP/1.1 response, None if there is none."""
    if not response.startswith(b"HTTP/1.1 "):
        return None
    return int(response[9:12])


def write_function(functions_dir: Path, name: str, source: str) -> Path:
    """Write `<functions_dir>/<name>/index.py` with `source` (dedented)."""
    path = functions_dir / name / "index.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source).lstrip(), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def reap(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """End `proc` if it still runs: SIGTERM (so what it buffered is written), SIGKILL if it has not
    exited within `timeout` seconds; waited for either way."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


class ServerProcess:
    """`edgeruntime serve` in a subprocess on a free loopback port; always reaped."""

    def __init__(
        self,
        functions_dir: Path,
        *args: str,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        cwd: Path | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        """`prefix`: a command the server runs under (a bubblewrap view of the filesystem, say)."""
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = functions_dir.parent / f"serve-{self.port}.log"
        self._log: IO[bytes] = open(self.log_path, "wb")
        command = [sys.executable, "-m", "edgeruntime", "serve", str(functions_dir), "--port", str(self.port), *args]
        self.proc = subprocess.Popen(
            [*prefix, *command],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            cwd=cwd,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output}")
            try:
                if httpx.get(f"{self.base_url}/_internal/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.output}")

    def url(self, name: str, path: str = "") -> str:
        return f"{self.base_url}/functions/v1/{name}{path}"

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        """SIGTERM (so buffered log lines are written), SIGKILL if it does not exit in 10 s."""
        reap(self.proc)
        self._log.close()

    def __enter__(self) -> ServerProcess:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def child_pids(pid: int) -> list[int]:
    """The processes `pid` started that still run (Linux: /proc/PID/task/PID/children)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:  # it has exited
        return []


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `predicate()` until it is true; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def run_cli(
    *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python -m edgeruntime ARGS` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "edgeruntime", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


class RecordingTransport(asyncio.Transport):
    """Records what reaches the socket."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.fail = fail

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.fail:
            raise ConnectionResetError("gone")
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 8000) if name == "peername" else default
