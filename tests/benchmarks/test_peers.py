"""`benchmarks peers`: Deno, the runtime edgeruntime emulates, measured beside the Python peers."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx

from benchmarks import peers
from benchmarks.peers import Load, Result
from tests.deploy.tools import missing
from tests.helpers import free_port


def _load(rps: float, p99_ms: float = 10.0) -> Load:
    return Load(rps=rps, p50_ms=1.0, p99_ms=p99_ms, errors=0, requests=int(rps))


def test_the_report_prints_the_ratios_to_deno_beside_the_python_peers() -> None:
    results = [
        Result(
            "uvicorn",
            "edgeruntime",
            hello=_load(20_000),
            bg=_load(10_000, p99_ms=12.5),
            bg_completed_pct=100.0,
            kib_per_pending_task=4.5,
        ),
        Result("uvicorn", "starlette", hello=_load(16_000), bg=_load(5_000)),
        Result("hypercorn", "edgeruntime", hello=_load(5_000), bg=_load(4_000)),
        Result("hypercorn", "starlette", hello=_load(5_000), bg=_load(2_000)),
        Result("deno", "deno", hello=_load(100_000), bg=_load(40_000, p99_ms=3.0)),
    ]
    lines = peers.report(results, {}).splitlines()
    assert "| deno | deno | 100000 |" in "\n".join(lines)
    assert "- uvicorn: hello edgeruntime / Deno = 0.20x (goal >= 0.2x on the fastest server)" in lines
    assert "- uvicorn: 202+background edgeruntime / Deno waitUntil = 0.25x; p99 12.5 ms vs Deno 3.0 ms" in lines
    assert "- hypercorn: hello edgeruntime / Deno = 0.05x (goal >= 0.2x on the fastest server)" in lines
    # The goals printed are issue 18's: ahead of bare Starlette on Uvicorn, level on Hypercorn.
    assert "- uvicorn: hello edgeruntime / bare Starlette = 1.25x (goal >= 1.1x)" in lines
    assert "- hypercorn: hello edgeruntime / bare Starlette = 1.00x (goal >= 1.0x)" in lines
    assert (
        "- uvicorn: 202+background edgeruntime / starlette BackgroundTasks = 2.00x (goal >= 2x); "
        "edgeruntime p99 12.5 ms (goal <= 20 ms)"
    ) in lines
    done = "- uvicorn: background tasks completed 100.0 % (goal 100 %), 4.5 KiB per pending task (goal <= 5 KiB)"
    assert done in lines
    # Deno is a column of its own, not a server the Python apps are compared on.
    assert not any(line.startswith("- deno:") for line in lines)


def test_without_deno_the_benchmark_says_how_to_install_it() -> None:
    # The `deno` package made unimportable and PATH emptied: no binary anywhere.
    code = (
        "import sys; sys.modules['deno'] = None\n"
        "from benchmarks.peers import DENO_MISSING, find_deno\n"
        "print(find_deno()); print(DENO_MISSING)\n"
    )
    env = {**os.environ, "PATH": ""}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    found, message = done.stdout.splitlines()
    assert found == "None"
    assert "pip install deno" in message


def test_the_deno_app_serves_both_endpoints_with_access_to_its_port_only() -> None:
    binary = peers.find_deno()
    if binary is None:
        missing(peers.DENO_MISSING)
    target = peers.deno_target(binary)
    port = free_port()
    argv = peers.command(target, port)
    assert [a for a in argv if a.startswith(("-A", "--allow"))] == [f"--allow-net=127.0.0.1:{port}"]
    assert {"--no-remote", "--no-npm"} <= set(argv)
    proc = peers.start(target, port)
    try:
        base = f"http://127.0.0.1:{port}"
        peers.wait_for(base + target.hello_path, proc, timeout=60)
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.get(target.hello_path).json() == {"ok": True}
            accepted = client.post(target.bg_path, json={})
            assert accepted.status_code == 202 and accepted.json() == {"accepted": True}
            assert client.get(target.bg_path).json() == {"started": 1, "completed": 0}
            deadline = time.monotonic() + 20
            counts = client.get(target.bg_path).json()
            while counts["completed"] < 1 and time.monotonic() < deadline:
                time.sleep(0.2)
                counts = client.get(target.bg_path).json()
            assert counts == {"started": 1, "completed": 1}
            assert client.get("/nothing").status_code == 404
    finally:
        peers.stop(proc)


def test_the_background_endpoint_is_booted_before_it_is_measured() -> None:
    """One POST before the runs: the function behind it is up when its 202s are timed (a worker
    process booting during the run would put its boot into the run's p99)."""
    target = next(t for t in peers.targets("uvicorn", False) if t.app == "starlette")
    port = free_port()
    proc = peers.start(target, port)
    try:
        base = f"http://127.0.0.1:{port}"
        peers.wait_for(base + target.hello_path, proc, timeout=60)
        peers.boot_background_endpoint(base + target.bg_path)
        assert peers.background_counts(base, target)["started"] == 1
        try:
            peers.boot_background_endpoint(base + target.hello_path)  # GET only: 405
        except RuntimeError as exc:
            assert "405" in str(exc)
        else:
            raise AssertionError("a POST that is not answered 202 must fail the run")
    finally:
        peers.stop(proc)


def test_the_report_prints_what_bounds_the_goals_in_the_same_run() -> None:
    """The raw ASGI app is the most any Python app gets from a server; Little's law bounds the p99."""
    results = [
        Result("hypercorn", "edgeruntime", hello=_load(3_000), bg=_load(2_000, p99_ms=40.0)),
        Result("hypercorn", "starlette", hello=_load(3_000), bg=_load(2_000)),
        Result("hypercorn", "asgi", hello=_load(4_500), bg=_load(3_000)),
        Result("deno", "deno", hello=_load(100_000), bg=_load(40_000)),
    ]
    lines = peers.report(results, {}, connections=64).splitlines()
    assert (
        "- hypercorn: the ceiling, a raw ASGI app (no framework): hello 4500 req/s = 1.50x bare Starlette, "
        "0.04x Deno; 202+background 1.50x Starlette BackgroundTasks"
    ) in lines
    assert (
        "- hypercorn: 202 mean latency at 64 connections = 32.0 ms (Little's law); a p99 <= 20 ms needs "
        ">= 3200 req/s, edgeruntime served 2000"
    ) in lines


def test_the_raw_asgi_app_serves_both_endpoints_on_each_server() -> None:
    for server in ("uvicorn", "hypercorn"):
        target = next(t for t in peers.targets(server, False) if t.app == "asgi")
        port = free_port()
        proc = peers.start(target, port)
        try:
            base = f"http://127.0.0.1:{port}"
            peers.wait_for(base + target.hello_path, proc, timeout=60)
            with httpx.Client(base_url=base, timeout=10) as client:
                hello = client.get(target.hello_path)
                assert hello.status_code == 200 and hello.json() == {"ok": True}
                accepted = client.post(target.bg_path, json={})
                assert accepted.status_code == 202 and accepted.json() == {"accepted": True}
                assert peers.background_counts(base, target) == {"started": 1, "completed": 0}
                deadline = time.monotonic() + 20
                while peers.background_counts(base, target)["completed"] < 1 and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert peers.background_counts(base, target) == {"started": 1, "completed": 1}
                assert client.get("/nothing").status_code == 404
        finally:
            peers.stop(proc)
