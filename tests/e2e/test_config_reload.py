"""Edits of config.toml and .env under a running `edgeruntime serve` apply without a restart."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.helpers import SERVICE_ROLE, ServerProcess, write_function

pytestmark = pytest.mark.e2e

#: Answers with the env it sees (its worker's Deno.env and os.environ) and its worker's pid.
ENV_ECHO = """
import os
from starlette.responses import JSONResponse
from edgeruntime import Deno, serve

async def handler(req):
    return JSONResponse({"deno": Deno.env.get("GREETING"), "os": os.environ.get("GREETING"), "pid": os.getpid()})

serve(handler)
"""


def until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout} s")


@pytest.mark.parametrize("isolation", ["inline", "process"])
def test_config_toml_and_env_edits_apply_live_and_a_broken_edit_keeps_the_running_config(
    functions_dir: Path, isolation: str
) -> None:
    write_function(functions_dir, "echo", ENV_ECHO)
    config = functions_dir.parent / "config.toml"
    config.write_text("[functions.echo]\nverify_jwt = true\n")
    env_file = functions_dir / ".env"
    env_file.write_text("GREETING=hello-secret-value\n")
    args = ["--isolation", isolation] + (["--sandbox", "none"] if isolation == "process" else [])
    with ServerProcess(functions_dir, *args) as server:
        url = server.url("echo")
        assert httpx.get(url, timeout=10).status_code == 401
        first = httpx.get(url, headers=SERVICE_ROLE, timeout=10).json()
        assert first["deno"] == first["os"] == "hello-secret-value"

        # verify_jwt off: the next request needs no key.
        config.write_text("[functions.echo]\nverify_jwt = false\n")
        until(lambda: httpx.get(url, timeout=10).status_code == 200, what="verify_jwt = false applied")
        until(lambda: "configuration reloaded" in server.output, what="the log line")
        assert "functions.echo.verify_jwt; no function reloaded" in server.output

        # A new value in .env reaches the function (inline: os.environ too; process: the worker's env).
        env_file.write_text("GREETING=bonjour-secret-value\n")
        until(lambda: httpx.get(url, timeout=10).json()["deno"] == "bonjour-secret-value", what=".env applied")
        body = httpx.get(url, timeout=10).json()
        assert body["os"] == "bonjour-secret-value"
        if isolation == "process":
            assert body["pid"] != first["pid"]  # a fresh worker process, booted with the new env
        until(lambda: "env.GREETING; functions reloaded: echo" in server.output, what="the log line")

        # A broken edit: one line naming the file and the key; the running config stays.
        config.write_text("[functions.echo]\nverify_jwt = true\nwall_clock_limit_sec = -5\n")
        until(lambda: "still serving with the configuration loaded before" in server.output, what="error line")
        [error] = [line for line in server.output.splitlines() if "still serving" in line]
        assert str(config) in error and "wall_clock_limit_sec" in error
        assert httpx.get(url, timeout=10).status_code == 200  # verify_jwt still off
        config.write_text("[functions.echo\n")  # not TOML at all
        until(lambda: server.output.count("still serving with the configuration") == 2, what="second error line")
        assert httpx.get(url, timeout=10).status_code == 200

        # What cannot change while serving is said to need a restart; the rest applies.
        config.write_text("[edge_runtime]\nkeep_alive_timeout_sec = 3\n[functions.echo]\nverify_jwt = true\n")
        until(lambda: httpx.get(url, timeout=10).status_code == 401, what="verify_jwt = true applied")
        until(lambda: "edge_runtime.keep_alive_timeout_sec cannot change while serving" in server.output)
        assert server.proc.poll() is None
    output = server.output
    assert "secret-value" not in output  # values never reach the log
    assert "Traceback" not in output
