"""`edgeruntime serve --workers 2`: two serving processes behind one port, on a real socket.

Every request here opens a connection of its own (module-level `httpx` calls), so each one goes
through the shared listening socket to whichever serving process accepts it. The clients run in
threads, bounded in time; every server is stopped and reaped by `ServerProcess`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from edgeruntime.jobs.backends import open_store
from edgeruntime.jobs.store import CronTick, Run
from tests.helpers import SERVICE_ROLE, ServerProcess, child_pids, wait_until, write_function
from tests.jobs.conftest import postgres_url  # noqa: F401  (a fixture: a fresh Postgres schema)

pytestmark = pytest.mark.e2e

#: Answers with its pid; `?sleep_ms=` holds the response; `?id=` is written to $BEGIN_LOG first,
#: with the pid and the time it began.
WHO = """
import asyncio
import os
import time
from starlette.responses import JSONResponse
from edgeruntime import serve

LOG = os.environ.get("BEGIN_LOG")

@serve
async def handler(req):
    rid = req.query_params.get("id")
    if rid and LOG:
        with open(LOG, "a") as f:
            f.write(f"{rid} {os.getpid()} {time.time()}\\n")
    ms = float(req.query_params.get("sleep_ms", "0"))
    if ms:
        await asyncio.sleep(ms / 1000)
    return JSONResponse({"pid": os.getpid()})
"""

BANNER = "Using edgeruntime"


def start(functions_dir: Path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
    """`serve --workers 2 ARGS`, returned once the banner says both serving processes accept connections."""
    server = ServerProcess(functions_dir, "--workers", "2", "--no-verify-jwt", *args, env=env)
    try:
        wait_until(lambda: BANNER in server.output or server.proc.poll() is not None, 90, "the banner")
        assert server.proc.poll() is None, server.output
        assert len(child_pids(server.proc.pid)) == 2, server.output
    except BaseException:
        server.stop()
        raise
    return server


def pid_of(server: ServerProcess, name: str = "who", **params: str) -> int:
    r = httpx.get(server.url(name), params=params, timeout=30)
    assert r.status_code == 200, r.text
    pid: int = r.json()["pid"]
    return pid


def both_answer(server: ServerProcess, pids: set[int], timeout: float = 30) -> None:
    """Requests (a few at a time, so both processes accept) until each of `pids` answered one."""
    seen: set[int] = set()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:

        def round_trip() -> bool:
            seen.update(pool.map(lambda _: pid_of(server), range(4)))
            return pids <= seen

        wait_until(round_trip, timeout, f"answers from each of {pids} (seen {seen})", interval=0)


@dataclass
class Outcome:
    id: int
    started: float
    ended: float
    pid: int | None
    error: str | None


class Load:
    """`threads` clients sending requests to `who` in a loop, each on a new connection, until stopped."""

    def __init__(self, server: ServerProcess, threads: int, sleep_ms: int) -> None:
        self.server = server
        self.sleep_ms = sleep_ms
        self.outcomes: list[Outcome] = []
        self._ids = iter(range(1, 1_000_000))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would drown the report
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self) -> None:
        deadline = time.monotonic() + 120  # bounded whatever happens to the test
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                rid = next(self._ids)
            started = time.monotonic()
            pid, error = None, None
            try:
                r = httpx.get(self.server.url("who"), params={"id": rid, "sleep_ms": self.sleep_ms}, timeout=30)
                if r.status_code == 200:
                    pid = r.json()["pid"]
                else:
                    error = f"HTTP {r.status_code}: {r.text[:100]}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.outcomes.append(Outcome(rid, started, time.monotonic(), pid, error))

    def answered_by(self, pid: int) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes if o.pid == pid)

    def failures(self) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.error is not None]


def begun(log: Path) -> dict[int, int]:
    """Request id → the pid of the serving process that began it (from $BEGIN_LOG)."""
    return {rid: pid for rid, (pid, _) in begun_when(log).items()}


def begun_when(log: Path) -> dict[int, tuple[int, float]]:
    """Request id → the pid of the serving process that began it and when (from $BEGIN_LOG)."""
    if not log.exists():
        return {}
    out: dict[int, tuple[int, float]] = {}
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            out[int(parts[0])] = (int(parts[1]), float(parts[2]))
    return out


@pytest.fixture
def who_dir(functions_dir: Path) -> Path:
    write_function(functions_dir, "who", WHO)
    return functions_dir


# -- the two processes ------------------------------------------------------------------------


@pytest.mark.parametrize("server_kind", ["uvicorn", "hypercorn"])
def test_two_serving_processes_share_one_port_and_the_banner_says_so(who_dir: Path, server_kind: str) -> None:
    server = start(who_dir, "--no-watch", "--server", server_kind)
    with server:
        pids = set(child_pids(server.proc.pid))
        both_answer(server, pids)
        assert f"(server {server_kind}, 2 serving processes, policy per_worker, isolation inline)" in server.output
        assert server.output.count("Serving functions on") == 1  # the supervisor's banner, once
        assert server.terminate() == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()


def test_workers_in_config_toml(who_dir: Path) -> None:
    (who_dir.parent / "config.toml").write_text("[edge_runtime]\nworkers = 2\n")
    server = ServerProcess(who_dir, "--no-watch", "--no-verify-jwt")
    with server:
        wait_until(lambda: BANNER in server.output, 90, "the banner")
        assert "2 serving processes" in server.output
        assert len(child_pids(server.proc.pid)) == 2
    # The flag wins over the file.
    with ServerProcess(who_dir, "--no-watch", "--no-verify-jwt", "--workers", "1") as single:
        wait_until(lambda: BANNER in single.output, 30, "the banner")
        assert "(server uvicorn, 1 serving process," in single.output
        assert child_pids(single.proc.pid) == []


def test_sigkill_of_a_serving_process_under_load_fails_only_its_requests_in_flight(
    who_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "begun.log"
    server = start(who_dir, "--no-watch", env={"BEGIN_LOG": str(log)})
    with server:
        victim, survivor = child_pids(server.proc.pid)
        with Load(server, threads=6, sleep_ms=300) as load:
            wait_until(lambda: load.answered_by(victim) >= 3 and load.answered_by(survivor) >= 3, 60, "both serving")

            def victim_busy() -> bool:
                # Begun less than half its 300 ms sleep ago: still in flight when it is killed
                # (one begun earlier may have been answered already, its answer still on its way).
                done = {o.id for o in load.outcomes if o.pid is not None}
                now = time.time()
                return any(
                    pid == victim and rid not in done and now - at < 0.15 for rid, (pid, at) in begun_when(log).items()
                )

            wait_until(victim_busy, 30, "a request in flight on the victim", interval=0.005)
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            wait_until(
                lambda: victim not in (now := child_pids(server.proc.pid)) and len(now) == 2,
                60,
                "a new serving process",
            )
            (replacement,) = set(child_pids(server.proc.pid)) - {survivor}
            wait_until(lambda: load.answered_by(replacement) >= 3, 60, "answers from the replacement")
            time.sleep(1)
        failures = load.failures()
        begun_on = begun(log)
    failed = {o.id for o in failures}
    # What the victim had begun and never answered: in flight on it when it was killed.
    in_flight = {rid for rid, pid in begun_on.items() if pid == victim} - {o.id for o in load.outcomes if o.pid}
    after_kill = [o for o in load.outcomes if o.started > killed]
    detail = f"{len(failures)} failed: {[(o.id, o.error) for o in failures][:5]}; in flight on the victim: {in_flight}"
    print(f"\n[SIGKILL under load] {len(load.outcomes)} requests, {detail}")
    assert replacement != victim
    # Every request that was in flight on the victim failed, and only those: none that began on
    # another process, none sent after the kill.
    assert in_flight and in_flight <= failed, detail
    assert all(begun_on.get(rid, victim) == victim for rid in failed), detail
    assert all(o.started < killed for o in failures), detail
    assert after_kill and all(o.error is None for o in after_kill), detail
    assert "was killed by SIGKILL; starting another" in server.output


#: An async handler whose code never awaits: it blocks its serving process's event loop.
HANG = """
import time
from starlette.responses import JSONResponse
from edgeruntime import serve

@serve
async def handler(req):
    time.sleep(600)
    return JSONResponse({})
"""


def test_a_serving_process_whose_event_loop_hangs_is_killed_and_replaced(who_dir: Path) -> None:
    write_function(who_dir, "hang", HANG)
    server = start(who_dir, "--no-watch", env={"EDGERUNTIME_HANG_TIMEOUT_SEC": "2"})
    with server:
        before = set(child_pids(server.proc.pid))
        both_answer(server, before)
        hung: list[str] = []

        def call_hang() -> None:
            try:
                r = httpx.get(server.url("hang"), timeout=60)
                hung.append(f"HTTP {r.status_code}")
            except httpx.HTTPError as exc:
                hung.append(type(exc).__name__)

        caller = threading.Thread(target=call_hang, daemon=True)
        caller.start()
        wait_until(lambda: "has said nothing for" in server.output, 30, "the hang found")
        wait_until(lambda: len(set(child_pids(server.proc.pid)) - before) == 1, 60, "a new serving process")
        caller.join(30)
        after = set(child_pids(server.proc.pid))
        both_answer(server, after)  # the survivor and the replacement both serve
        output = server.output
    (victim,) = before - after
    assert f"serving process [{victim}] has said nothing for " in output
    assert f"serving process [{victim}] was killed by SIGKILL; starting another" in output
    assert hung and not hung[0].startswith("HTTP 2"), hung  # its request died with it


@pytest.mark.parametrize("server_kind", ["uvicorn", "hypercorn"])
def test_sighup_under_load_replaces_every_process_and_refuses_nothing(who_dir: Path, server_kind: str) -> None:
    server = start(who_dir, "--no-watch", "--server", server_kind)
    with server:
        old = set(child_pids(server.proc.pid))
        with Load(server, threads=4, sleep_ms=50) as load:
            wait_until(lambda: all(load.answered_by(pid) >= 3 for pid in old), 60, "both serving")
            server.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "every serving process was replaced" in server.output, 120, "the rolling restart")
            wait_until(lambda: not old & set(child_pids(server.proc.pid)), 60, "the old processes gone")
            new = set(child_pids(server.proc.pid))
            wait_until(lambda: all(load.answered_by(pid) >= 3 for pid in new), 60, "the new ones serving")
        failures = load.failures()
    print(f"\n[SIGHUP under load, {server_kind}] {len(load.outcomes)} requests, {len(failures)} failed")
    assert len(new) == 2 and not new & old
    assert failures == [], failures[:5]


def test_a_new_process_that_cannot_start_stops_the_restart_and_the_old_ones_keep_serving(who_dir: Path) -> None:
    config = who_dir.parent / "config.toml"
    config.write_text("[edge_runtime]\npolicy = 'per_worker'\n")
    server = start(who_dir, "--no-watch")
    with server:
        old = set(child_pids(server.proc.pid))
        config.write_text("[edge_runtime]\npolicy = 'sometimes'\n")  # a deploy with a broken config
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "restart stopped" in server.output, 90, "the failed restart")
        assert set(child_pids(server.proc.pid)) == old
        both_answer(server, old)
        config.write_text("[edge_runtime]\npolicy = 'per_worker'\n")  # fixed: the next SIGHUP goes through
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "every serving process was replaced" in server.output, 120, "the rolling restart")
    assert "[edge_runtime] policy: expected one of per_worker, per_request, got 'sometimes'" in server.output


def test_serving_processes_stop_when_their_supervisor_is_killed(who_dir: Path) -> None:
    server = start(who_dir, "--no-watch")
    with server:
        pids = child_pids(server.proc.pid)
        server.proc.kill()
        server.proc.wait(10)
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), 60, "the serving processes gone")
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.url("who"), timeout=5)
    assert "the supervisor of the serving processes has gone: shutting down" in server.output


def test_hot_reload_reloads_every_serving_process_and_logs_each_line_once(who_dir: Path) -> None:
    source = who_dir / "who" / "index.py"
    source.write_text(WHO.replace('{"pid": os.getpid()}', '{"pid": os.getpid(), "v": 1}'))
    server = start(who_dir)
    with server:
        pids = set(child_pids(server.proc.pid))
        both_answer(server, pids)
        time.sleep(0.5)  # the watcher settles before the edit
        move_in(source, WHO.replace('{"pid": os.getpid()}', '{"pid": os.getpid(), "v": 2}'))
        every_process_serves(server, pids, 2)
        assert server.terminate() == 0  # every line written
    # One watcher (the supervisor's), and one serving process says what it reloaded.
    lines = server.output.splitlines()
    detected = [line for line in lines if "File change detected" in line]
    assert len(detected) == 1 and f"File change detected: {source} (added)" in detected[0], server.output
    assert len([line for line in lines if line.endswith("reloaded who")]) == 1, server.output


def test_a_syntax_error_in_an_edit_is_logged_once_and_the_fix_reaches_every_serving_process(who_dir: Path) -> None:
    source = who_dir / "who" / "index.py"
    server = start(who_dir)
    with server:
        pids = set(child_pids(server.proc.pid))
        both_answer(server, pids)
        time.sleep(0.5)  # the watcher settles before the edit
        move_in(source, WHO + "\ndef broken(:\n")
        wait_until(lambda: "cannot boot: SyntaxError" in server.output, 30, "the syntax error logged")
        time.sleep(1.0)  # every serving process compiles the broken file before it is fixed
        move_in(source, WHO.replace('{"pid": os.getpid()}', '{"pid": os.getpid(), "v": 3}'))
        every_process_serves(server, pids, 3)
        assert server.terminate() == 0  # every line written
    lines = server.output.splitlines()
    errors = [line for line in lines if "function who cannot boot: SyntaxError" in line]
    assert len(errors) == 1 and f"{source}" in errors[0], server.output
    assert len([line for line in lines if line.endswith("reloaded who")]) == 2, server.output


def test_what_holds_for_the_whole_server_is_logged_once_at_start_and_on_a_config_edit(who_dir: Path) -> None:
    """The sandbox lines, a syntax error already there and the store's journal mode are said by the
    supervisor alone, and a syntax error in a function a config.toml edit enables by one serving
    process, not by each."""
    write_function(who_dir, "broken", "def handler(:\n")
    write_function(who_dir, "later", "def handler(:\n")
    config = who_dir.parent / "config.toml"
    config.write_text("[functions.later]\nenabled = false\n")
    # An in-memory store: SQLite's journal mode (not WAL) is said too.
    server = start(who_dir, "--isolation", "process", "--sandbox", "basic", "--database-url", "sqlite:///:memory:")
    with server:
        # (Under process isolation `who` answers with its worker's pid, not its serving process's.)
        assert {httpx.get(server.url("who"), timeout=30).status_code for _ in range(6)} == {200}
        time.sleep(0.5)  # the watcher settles before the edit
        move_in(config, "[functions.later]\nenabled = true\n")
        wait_until(lambda: "configuration reloaded" in server.output, 30, "the edit applied")
        time.sleep(1.0)  # every serving process has applied it
        # Either serving process answers for the newly enabled function, with its boot error.
        assert {httpx.get(server.url("later"), timeout=30).status_code for _ in range(6)} == {503}
        assert server.terminate() == 0  # every line written
    lines = server.output.splitlines()
    for needle in (
        "function broken cannot boot: SyntaxError",
        "function later cannot boot: SyntaxError",
        "jobs: database :memory: is held in memory",
    ):
        assert len([line for line in lines if needle in line]) == 1, (needle, server.output)
    sandbox = [line.split(" ", 1)[1] for line in lines if "worker processes: sandbox basic" in line]  # no time
    assert sandbox and len(sandbox) == len(set(sandbox)), server.output


# -- what they share ----------------------------------------------------------------------------


def move_in(target: Path, text: str) -> None:
    """Make `text` the content of `target` (a function's index.py, or config.toml) in one change:
    written to a draft in the project directory, outside the functions directory, then moved over it."""
    drafts = target.parent.parent.parent if target.name == "index.py" else target.parent
    draft = drafts / f"{target.name}.draft"
    draft.write_text(text)
    os.replace(draft, target)


def every_process_serves(server: ServerProcess, pids: set[int], version: int) -> None:
    """Wait until each of the serving processes `pids` has answered with `version` of `who`."""
    fresh: set[int] = set()

    def all_fresh() -> bool:
        for _ in range(4):
            r = httpx.get(server.url("who"), timeout=30)
            if r.status_code == 200 and r.json().get("v") == version:
                fresh.add(r.json()["pid"])
        return fresh == pids

    wait_until(all_fresh, 30, f"version {version} from each of {pids} (seen {fresh})", interval=0)


_REQUESTS = re.compile(r"^edgeruntime_requests_total\{([^}]*)\} ([0-9.e+]+)$", re.M)


def requests_total(server: ServerProcess, function: str) -> float:
    r = httpx.get(f"{server.base_url}/_internal/metrics", timeout=30)
    assert r.status_code == 200, r.text
    return sum(float(v) for labels, v in _REQUESTS.findall(r.text) if f'function="{function}"' in labels)


def test_metrics_report_the_totals_of_every_serving_process(who_dir: Path) -> None:
    server = start(who_dir, "--no-watch")
    sent = 200
    with server:
        pids = set(child_pids(server.proc.pid))
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answered = collections.Counter(pool.map(lambda _: pid_of(server), range(sent)))
        assert set(answered) == pids, answered  # both served some: the total is not one process's
        # Each scrape reaches either process, on a connection of its own: every one sees the total.
        for _ in range(6):
            assert requests_total(server, "who") == sent
        # The counts of replaced processes are kept: totals never go back.
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "every serving process was replaced" in server.output, 120, "the rolling restart")
        wait_until(lambda: not pids & set(child_pids(server.proc.pid)), 60, "the old processes gone")
        for _ in range(4):
            assert requests_total(server, "who") == sent
        pid_of(server)
        assert requests_total(server, "who") == sent + 1
    print(f"\n[metrics] {sent} requests answered by {dict(answered)}")


BACKGROUND = """
import asyncio
import os
from pathlib import Path
from starlette.responses import JSONResponse
from edgeruntime import EdgeRuntime, serve

async def work(marker, seconds):
    await asyncio.sleep(seconds)
    Path(marker).write_text("done")

@serve
async def handler(req):
    body = await req.json()
    EdgeRuntime.wait_until(work(body["marker"], body["seconds"]))
    return JSONResponse({"pid": os.getpid()}, status_code=202)
"""


async def _background_runs(url: str) -> list[Run]:
    store = open_store(url)
    try:
        return await store.runs("bg", 1000, kind="background")
    finally:
        await store.close()


def test_sigterm_drains_background_work_in_every_process_and_records_what_is_cut(
    functions_dir: Path, tmp_path: Path
) -> None:
    write_function(functions_dir, "bg", BACKGROUND)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    graceful = 5.0
    server = start(functions_dir, "--no-watch", "--database-url", url, "--graceful-exit-timeout", str(graceful))
    markers = tmp_path / "markers"
    markers.mkdir()
    with server:
        pids = set(child_pids(server.proc.pid))
        kinds: dict[int, set[str]] = {pid: set() for pid in pids}
        sent: dict[str, int] = collections.Counter()

        def post(n: int) -> None:
            kind = "short" if n % 2 else "long"
            seconds = 1.5 if kind == "short" else 120
            r = httpx.post(
                server.url("bg"), json={"marker": str(markers / f"{kind}-{n}"), "seconds": seconds}, timeout=30
            )
            assert r.status_code == 202, r.text
            kinds[r.json()["pid"]].add(kind)
            sent[kind] += 1

        numbers = iter(range(1, 10_000))
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            wait_until(
                lambda: (
                    list(pool.map(post, [next(numbers) for _ in range(6)]))
                    and all(k == {"short", "long"} for k in kinds.values())
                ),
                60,
                f"short and long work pending in both processes ({kinds})",
                interval=0,
            )
        stopped = time.monotonic()
        status = server.terminate(timeout=graceful + 30)
        took = time.monotonic() - stopped
    runs = asyncio.run(_background_runs(url))
    done = sorted(p.name for p in markers.iterdir())
    print(
        f"\n[SIGTERM] {dict(sent)} sent, {len(done)} finished in {took:.1f} s; "
        f"runs: {collections.Counter(r.status for r in runs)}"
    )
    assert status == 0, server.output
    assert took < graceful + 10, took
    # The short work of both processes finished within the graceful-exit timeout; the long work
    # was cut, and the run history says so.
    assert all(name.startswith("short-") for name in done) and len(done) == sent["short"], done
    statuses = collections.Counter(r.status for r in runs)
    assert statuses == {"completed": sent["short"], "cut": sent["long"]}, statuses
    assert all(r.error for r in runs if r.status == "cut"), {r.error for r in runs}


CRON = """
[cron.tick]
function = "tick"
schedule = "1 seconds"
overlap = "allow"

[jobs]
poll_interval_ms = 100
"""

RECORD = """
import os
from starlette.responses import JSONResponse
from edgeruntime import serve

LOG = os.environ["RECORD_LOG"]

@serve
async def handler(req):
    key = req.headers.get("x-edgeruntime-scheduled-for") or req.headers.get("x-edgeruntime-job-id")
    with open(LOG, "a") as f:
        f.write(f"{key} {req.headers.get('x-edgeruntime-attempt', '-')} {os.getpid()}\\n")
    return JSONResponse({"ok": True})
"""


async def _ticks(url: str) -> list[CronTick]:
    store = open_store(url)
    try:
        return await store.ticks("tick", limit=500)
    finally:
        await store.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """One store file (SQLite) or schema (Postgres) both serving processes share."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


def test_a_one_second_cron_fires_each_tick_once_across_the_processes(
    functions_dir: Path, tmp_path: Path, store_url: str
) -> None:
    write_function(functions_dir, "tick", RECORD)
    (functions_dir.parent / "config.toml").write_text(CRON)
    log = tmp_path / "ticks.log"
    server = start(functions_dir, "--no-watch", "--database-url", store_url, env={"RECORD_LOG": str(log)})
    with server:
        time.sleep(11)
        assert server.terminate() == 0
    lines = [line.split() for line in log.read_text().splitlines()]
    counts = collections.Counter(line[0] for line in lines)
    ticks = [t for t in asyncio.run(_ticks(store_url)) if t.trigger == "schedule"]
    seconds = sorted(int(t.scheduled_for) for t in ticks)
    print(
        f"\n[cron x2 processes] {len(lines)} deliveries of {len(counts)} ticks, "
        f"by {len({line[2] for line in lines})} process(es)"
    )
    assert {k: n for k, n in counts.items() if n > 1} == {}
    assert len(seconds) == len(set(seconds)) == len(counts)
    assert seconds == list(range(seconds[0], seconds[0] + len(seconds))), seconds  # none missed
    assert len(seconds) >= 9
    assert all(str(t.status) == "succeeded" for t in ticks), {str(t.status) for t in ticks}


ENQUEUE = """
from starlette.responses import JSONResponse
from edgeruntime import jobs, serve

@serve
async def handler(req):
    body = await req.json()
    ids = [await jobs.enqueue("record", {"n": n}) for n in range(body["count"])]
    return JSONResponse({"ids": ids})
"""


async def _job_counts(url: str) -> dict[str, int]:
    store = open_store(url)
    try:
        return await store.count_jobs()
    finally:
        await store.close()


def _instance_ids(url: str) -> set[str]:
    """The instance ids that claimed jobs (the jobs table keeps the last one's)."""
    query = "SELECT DISTINCT worker_id FROM edgeruntime_jobs WHERE worker_id IS NOT NULL"
    if url.startswith("sqlite:"):
        import sqlite3

        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            return {row[0] for row in conn.execute(query)}
    import psycopg

    with psycopg.connect(url) as conn:
        return {row[0] for row in conn.execute(query)}


def test_five_hundred_queued_jobs_are_each_delivered_once(functions_dir: Path, tmp_path: Path, store_url: str) -> None:
    write_function(functions_dir, "record", RECORD)
    write_function(functions_dir, "enqueue", ENQUEUE)
    (functions_dir.parent / "config.toml").write_text("[jobs]\npoll_interval_ms = 100\nlease_sec = 30\n")
    log = tmp_path / "jobs.log"
    server = start(functions_dir, "--no-watch", "--database-url", store_url, env={"RECORD_LOG": str(log)})
    with server:
        r = httpx.post(server.url("enqueue"), json={"count": 500}, headers=SERVICE_ROLE, timeout=120)
        assert r.status_code == 200, r.text
        ids = r.json()["ids"]
        wait_until(lambda: asyncio.run(_job_counts(store_url)).get("succeeded", 0) == 500, 120, "500 jobs done", 0.5)
        time.sleep(1)  # a duplicate delivery would show in the log by now
        assert server.terminate() == 0
    lines = [line.split() for line in log.read_text().splitlines()]
    delivered = collections.Counter(line[0] for line in lines)
    by_process = collections.Counter(line[2] for line in lines)
    print(f"\n[500 jobs] delivered by {dict(by_process)}")
    assert sorted(int(k) for k in delivered) == sorted(ids)  # none lost
    assert {k: n for k, n in delivered.items() if n > 1} == {}  # none twice
    assert {line[1] for line in lines} == {"1"}
    assert asyncio.run(_job_counts(store_url)) == {"succeeded": 500}
    # Each serving process claimed under an instance id of its own (host:pid:random).
    instances = _instance_ids(store_url)
    assert sorted(i.split(":")[1] for i in instances) == sorted(by_process), (instances, by_process)


# -- what functions must not get ------------------------------------------------------------------------

SOCKETS = """
import os
import socket
import stat
import subprocess
import sys
from starlette.responses import JSONResponse
from edgeruntime import serve

CHECK = '''
import json, os, socket, stat
found = []
for name in os.listdir("/proc/self/fd"):
    fd = int(name)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            continue
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        continue
    with sock:
        found.append([fd, int(sock.family), sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)])
print(json.dumps(found))
'''

@serve
async def handler(req):
    # What a process the function starts inherits, even when it asks for every descriptor.
    out = subprocess.run([sys.executable, "-c", CHECK], close_fds=False, capture_output=True, text=True)
    return JSONResponse({"inherited": out.stdout, "pid": os.getpid()})
"""


@pytest.mark.parametrize(
    ("isolation", "server_kind"), [("inline", "uvicorn"), ("inline", "hypercorn"), ("process", "uvicorn")]
)
def test_functions_never_get_the_listening_socket_or_the_control_channel(
    functions_dir: Path, isolation: str, server_kind: str
) -> None:
    import json

    write_function(functions_dir, "sockets", SOCKETS)
    server = start(functions_dir, "--no-watch", "--isolation", isolation, "--sandbox", "none", "--server", server_kind)
    with server:
        for _ in range(4):
            r = httpx.get(server.url("sockets"), timeout=60)
            assert r.status_code == 200, r.text
            inherited = json.loads(r.json()["inherited"])
            # No listening socket: it could accept the connections meant for the server (and read
            # other functions' requests, credentials included).
            assert [s for s in inherited if s[2]] == [], inherited
            # No control channel (a Unix socket). Under process isolation the worker process's own
            # channel to its serving process is the function's already, and may be passed on.
            unix = [s for s in inherited if s[1] == socket.AF_UNIX]
            assert len(unix) <= (1 if isolation == "process" else 0), inherited


def test_ctrl_c_to_the_process_group_stops_every_serving_process_once(who_dir: Path) -> None:
    """A terminal's Ctrl-C reaches the supervisor and the serving processes together: nothing is replaced."""
    import subprocess
    import sys

    from tests.helpers import free_port

    port = free_port()
    log = who_dir.parent / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeruntime", "serve", str(who_dir), "--port", str(port), "--workers", "2"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: BANNER in log.read_text() or proc.poll() is not None, 90, "the banner")
        pids = child_pids(proc.pid)
        assert len(pids) == 2, log.read_text()
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(45) == 0, log.read_text()
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), 30, "the serving processes gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    output = log.read_text()
    assert "starting another" not in output and "Traceback" not in output, output


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_auto_on_one_cpu_is_one_supervised_process_that_rolls_over_on_sighup(who_dir: Path) -> None:
    # `auto` counts the CPUs the server may use: taskset leaves it one. It is still supervised, so
    # a unit's ExecReload (SIGHUP) replaces it rather than ending it.
    server = ServerProcess(who_dir, "--no-watch", "--no-verify-jwt", "--workers", "auto", prefix=["taskset", "-c", "0"])
    with server:
        wait_until(lambda: BANNER in server.output, 90, "the banner")
        assert "(server uvicorn, 1 serving process," in server.output
        (old,) = child_pids(server.proc.pid)
        assert pid_of(server) == old
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "every serving process was replaced" in server.output, 120, "the rolling restart")
        wait_until(lambda: old not in child_pids(server.proc.pid), 60, "the old process gone")
        (new,) = child_pids(server.proc.pid)
        assert pid_of(server) == new != old
        assert server.terminate() == 0


# -- WebSockets across serving processes ------------------------------------------------------

#: Says which serving process holds the connection, then echoes.
WS_WHO = """
import os
from edgeruntime import serve, upgrade_websocket

async def handler(req):
    ws = await upgrade_websocket(req)
    await ws.send_text(str(os.getpid()))
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return None
        await ws.send_text(message.get("text") or "")

serve(handler)
"""


async def _sockets_on_both(server: ServerProcess, pids: set[int]) -> dict[int, list[str]]:
    """Open WebSockets until each serving process holds one, echo on each, then SIGTERM the server:
    what each connection received, by the pid of the process that held it, closes included."""
    url = f"ws://127.0.0.1:{server.port}/functions/v1/ws-who"
    held: dict[int, ClientConnection] = {}
    seen: dict[int, list[str]] = {}
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(60):  # the kernel spreads new connections; bounded all the same
            ws = await stack.enter_async_context(connect(url, open_timeout=20))
            pid = int(await asyncio.wait_for(ws.recv(), 20))
            if pid not in held:
                held[pid] = ws
            if set(held) == pids:
                break
        assert set(held) == pids, f"connections reached only {set(held)} of {pids}"
        for pid, ws in held.items():
            await ws.send(f"hello {pid}")
            seen[pid] = [str(await asyncio.wait_for(ws.recv(), 20))]
        server.proc.send_signal(signal.SIGTERM)
        for pid, ws in held.items():
            try:
                async with asyncio.timeout(30):
                    while True:
                        seen[pid].append(str(await ws.recv()))
            except ConnectionClosed as exc:
                assert exc.rcvd is not None
                seen[pid].append(f"closed {exc.rcvd.code} {exc.rcvd.reason}")
    return seen


@pytest.mark.parametrize("server_kind", ["uvicorn", "hypercorn"])
def test_websockets_are_served_by_every_process_and_closed_1001_at_sigterm(
    functions_dir: Path, server_kind: str
) -> None:
    write_function(functions_dir, "ws-who", WS_WHO)
    server = start(functions_dir, "--no-watch", "--server", server_kind)
    with server:
        pids = set(child_pids(server.proc.pid))
        seen = asyncio.run(_sockets_on_both(server, pids))
        assert server.proc.wait(60) == 0, server.output
    # Each process echoed on its own connections and, told to stop, closed them as the platform
    # does when a worker is terminated: 1001 with the stop reason.
    assert seen == {pid: [f"hello {pid}", "closed 1001 termination"] for pid in pids}, seen
