"""`python -m tests.fakes` serves every fake until SIGTERM and writes the env that points at them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.examples.conftest import REPO


def test_run_the_fakes_by_hand(tmp_path: Path) -> None:
    env_file = tmp_path / "fakes.env"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes", "--env-file", str(env_file)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while not env_file.exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "no env file after 20 s"
            time.sleep(0.05)
        env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        r = httpx.post(f"{env['POSTHOG_HOST']}/capture", json={"api_key": env["POSTHOG_API_KEY"], "event": "e"})
        assert r.json() == {"status": 1}
        assert httpx.get(f"{env['SUPABASE_URL']}/rest/v1/tasks").status_code == 401  # keys are required
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
