"""`edgeruntime serve --log-format json`: every line the server writes, on stdout and stderr, is JSON."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import SERVICE_ROLE, free_port, write_function

pytestmark = pytest.mark.e2e

CHATTY = """
import logging
import warnings

from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import EdgeRuntime, serve

print("module loaded, version 1")


async def later() -> None:
    print("background work done")


async def handler(req: Request) -> JSONResponse:
    print("printed by the handler")
    logging.getLogger("some.library").warning("a library's warning")
    warnings.warn("a deprecated call", UserWarning, stacklevel=1)
    EdgeRuntime.wait_until(later())
    return JSONResponse({"version": 1})


serve(handler)
"""


def _records(path: Path) -> list[dict[str, Any]]:
    """Every line of `path` as a JSON object; fails on the first line that is not one."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"{path.name} line {number} is not JSON: {line!r}")
        assert isinstance(record, dict) and {"time", "level", "logger", "message"} <= record.keys(), line
        records.append(record)
    return records


def _wait_for(condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


@pytest.mark.parametrize(("server", "isolation"), [("hypercorn", "inline"), ("uvicorn", "process")])
def test_every_line_of_a_json_logging_server_parses(
    functions_dir: Path, tmp_path: Path, server: str, isolation: str
) -> None:
    source = write_function(functions_dir, "chatty", CHATTY)
    (functions_dir / ".env").write_text("SUPABASE_URL=http://elsewhere\nGREETING=hi\n")  # dropped, with a warning
    (functions_dir.parent / "config.toml").write_text('[edge_runtime.secrets]\nTOKEN = "env(ER_TEST_NEVER_SET)"\n')
    port = free_port()
    out_path, err_path = tmp_path / "stdout.log", tmp_path / "stderr.log"
    env = {k: v for k, v in os.environ.items() if k != "ER_TEST_NEVER_SET"}
    command = [sys.executable, "-m", "edgeruntime", "serve", str(functions_dir), "--port", str(port)]
    command += ["--log-format", "json", "--server", server, "--isolation", isolation]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, env={**env, "PYTHONUNBUFFERED": "1"})
        try:
            base = f"http://127.0.0.1:{port}"

            def healthy() -> bool:
                assert proc.poll() is None, err_path.read_text()
                try:
                    return httpx.get(f"{base}/_internal/health", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            _wait_for(healthy, "server ready")
            r = httpx.get(f"{base}/functions/v1/chatty", headers=SERVICE_ROLE, timeout=10)
            assert r.json() == {"version": 1}
            # A forged log line in the path (a newline, then JSON) is refused before any function
            # runs (control characters in a path are 404), and its access line stays one line.
            forged = "/functions/v1/chatty/%0A%7B%22level%22%3A%22critical%22%7D"
            assert httpx.get(base + forged, headers=SERVICE_ROLE, timeout=10).status_code == 404
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:  # the server's own complaint
                # (a malformed request is answered without a line; an upgrade nobody speaks is logged)
                raw.sendall(b"GET /_internal/health HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n")
                raw.recv(1024)
            source.write_text(CHATTY.replace("version 1", "version 2").replace('"version": 1', '"version": 2'))

            def reloaded() -> bool:
                return "reloaded chatty" in err_path.read_text(encoding="utf-8")

            _wait_for(reloaded, "reload")
            r = httpx.get(f"{base}/functions/v1/chatty", headers=SERVICE_ROLE, timeout=10)
            assert r.json() == {"version": 2}
            time.sleep(0.3)  # the background print
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)

    records = _records(out_path) + _records(err_path)
    messages = [r["message"] for r in records]

    def logged(text: str) -> list[dict[str, Any]]:
        return [r for r in records if text in r["message"]]

    # Before logging used to be set up: the env and config warnings.
    assert logged("Env name cannot start with SUPABASE_, skipping: SUPABASE_URL")[0]["level"] == "warning"
    assert logged("TOKEN: env(ER_TEST_NEVER_SET) is not set, skipping")
    # The banner, the file change and the reload.
    assert f"Serving functions on {base}/functions/v1/<function-name>" in messages
    assert logged(f"File change detected: {source}")
    # What the function printed, at import, in the handler and in the background, with its names.
    for text in ("module loaded, version 1", "module loaded, version 2"):
        [line] = logged(text)
        assert line["function"] == "chatty"
    printed = logged("printed by the handler")  # two requests reached the handler (not the forged one)
    assert len(printed) == 2 and all(r["function"] == "chatty" and r["execution_id"] for r in printed)
    assert len(logged("background work done")) == 2
    # Another library's logger and `warnings` keep their names and levels.
    assert {(r["logger"], r["level"]) for r in logged("a library's warning")} == {("some.library", "warning")}
    assert {(r["logger"], r["level"]) for r in logged("a deprecated call")} == {("py.warnings", "warning")}
    access = [r for r in records if r["logger"] == "edgeruntime.access"]
    assert [(r["path"], r["status"]) for r in access].count(("/functions/v1/chatty", 200)) == 2
    assert ('/functions/v1/chatty/%0A{"level":"critical"}', 404) in [(r["path"], r["status"]) for r in access]
    assert "critical" not in {r["level"] for r in records}
    assert logged("TerminationRequested")  # the shutdown line after SIGTERM
    if server == "uvicorn":  # its own loggers too (Hypercorn answers a bad request without a line)
        assert {(r["logger"], r["level"]) for r in logged("Unsupported upgrade request")} == {
            ("uvicorn.error", "warning")
        }


def test_a_startup_error_under_json_logs_is_a_json_line(functions_dir: Path) -> None:
    write_function(functions_dir, "chatty", CHATTY)
    (functions_dir / ".env").write_text("SUPABASE_URL=http://elsewhere\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        command = [sys.executable, "-m", "edgeruntime", "serve", str(functions_dir), "--log-format", "json"]
        done = subprocess.run(
            [*command, "--port", str(taken.getsockname()[1])], capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 2 and done.stdout == ""
    records = [json.loads(line) for line in done.stderr.splitlines()]
    assert [r["level"] for r in records] == ["warning", "error"]  # the env warning first, then the error
    assert records[1]["message"].startswith("edgeruntime: error: port ") and "already in use" in records[1]["message"]
