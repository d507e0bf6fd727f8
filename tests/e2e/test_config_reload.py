"""Edits of config.toml and .env under a running `edgeruntime serve` apply without a restart."""

from __future__ import annotations

import concurrent.futures
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.helpers import SERVICE_ROLE, ServerProcess, child_pids, wait_until, write_function

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


def test_with_several_serving_processes_each_applies_an_edit_and_its_lines_are_logged_once(
    functions_dir: Path,
) -> None:
    write_function(functions_dir, "echo", ENV_ECHO)
    config = functions_dir.parent / "config.toml"
    config.write_text("[functions.echo]\nverify_jwt = true\n")
    env_file = functions_dir / ".env"
    env_file.write_text("GREETING=one\n")
    with ServerProcess(functions_dir, "--workers", "2") as server:
        wait_until(lambda: "Using edgeruntime" in server.output, 60, "the banner")
        serving = set(child_pids(server.proc.pid))
        assert len(serving) == 2, server.output
        url = server.url("echo")

        def answers(expected: tuple[int, str | None]) -> Callable[[], bool]:
            """Requests (4 at a time, each on its own connection, so both processes accept) until
            every serving process answered with `expected` (status, GREETING)."""
            seen: set[int] = set()

            def one(_: int) -> None:
                r = httpx.get(url, timeout=10)
                greeting = r.json()["deno"] if r.status_code == 200 else None
                if (r.status_code, greeting) == expected:
                    seen.add(r.json()["pid"])

            def check() -> bool:
                with concurrent.futures.ThreadPoolExecutor(4) as pool:
                    list(pool.map(one, range(8)))
                return serving <= seen

            return check

        config.write_text("[functions.echo]\nverify_jwt = false\n")
        wait_until(answers((200, "one")), 30, "verify_jwt = false applied in every serving process")
        env_file.write_text("GREETING=two\n")
        wait_until(answers((200, "two")), 30, "the .env edit applied in every serving process")
        config.write_text("[functions.echo]\nverify_jwt = false\nwall_clock_limit_sec = -5\n")
        wait_until(lambda: "still serving with the configuration loaded before" in server.output, 30, "error line")
        config.write_text("[functions.echo]\nverify_jwt = false\n[functions.nope]\nverify_jwt = false\n")
        wait_until(lambda: "[functions.nope]: no function 'nope'" in server.output, 30, "warning line")
        wait_until(answers((200, "two")), 30, "every serving process still serving")

        # Replaced one at a time (SIGHUP): the new serving processes are told of edits as well.
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "every serving process was replaced" in server.output, 60, "the rolling restart")
        wait_until(lambda: not serving & set(child_pids(server.proc.pid)), 30, "the old processes gone")
        serving = set(child_pids(server.proc.pid))
        assert len(serving) == 2, server.output
        env_file.write_text("GREETING=three\n")
        wait_until(answers((200, "three")), 30, "the .env edit applied in every new serving process")
        assert server.terminate() == 0  # every line written
    output = server.output
    reloaded = [line for line in output.splitlines() if "configuration reloaded" in line]
    assert len(reloaded) == 4, output
    assert "functions.echo.verify_jwt; no function reloaded" in reloaded[0]
    assert "env.GREETING; functions reloaded: echo" in reloaded[1]
    assert "functions.nope.verify_jwt; no function reloaded" in reloaded[2]
    assert "env.GREETING; functions reloaded: echo" in reloaded[3]
    assert output.count("still serving with the configuration loaded before") == 1, output
    assert output.count("[functions.nope]: no function 'nope'") == 1, output
    assert "Traceback" not in output
