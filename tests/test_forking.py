"""Worker processes forked from their function's template: exit statuses, template death, env
separation, descriptors, reloads, idle templates, the fallback to spawned workers; the output of a
function's processes (ProcessOutput)."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edgeruntime.core.context import ExecutionContext
from edgeruntime.core.events import StopReason
from edgeruntime.core.worker_state import default_worker
from edgeruntime.testing import EdgeClient
from edgeruntime.workers.process import forking
from edgeruntime.workers.process.forking import MAX_OUTPUT_LINE_BYTES, ForkedProcess, ProcessOutput, SpawnedProcess
from edgeruntime.workers.process.parent import ProcessWorker
from edgeruntime.workers.process.sandbox import TEMPLATE_MODULE, Sandbox, WorkerLauncher
from edgeruntime.workers.supervisor import FunctionSupervisor
from tests.helpers import HELLO, write_function
from tests.probes import environ_for, eventually, parent_of, write_probe

ROOT = os.geteuid() == 0

#: Answers with what the worker process holds: its pid, its parent, its descriptors and its env.
INSPECT = """
import os
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import Deno, serve

SEEN_AT_BOOT = os.environ.get("SET_BY_A_REQUEST")


def descriptors():
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass  # the directory's own descriptor, closed by now
    return found


@serve
async def handler(req: Request) -> JSONResponse:
    answer = {
        "fds": descriptors(),
        "env": Deno.env.to_object(),
        "seen_at_boot": SEEN_AT_BOOT,
        "seen_now": os.environ.get("SET_BY_A_REQUEST"),
    }
    if "set" in req.query_params:
        os.environ["SET_BY_A_REQUEST"] = req.query_params["set"]
    return JSONResponse(answer)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def argv_of(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def forked_worker(client: EdgeClient, name: str) -> ProcessWorker:
    worker = client.app.functions[name].worker
    assert isinstance(worker, ProcessWorker) and isinstance(worker.proc, ForkedProcess), worker
    return worker


def template_pid(worker: ProcessWorker) -> int:
    """The host pid of the template `worker` was forked from: its parent, running the template module."""
    assert worker.pid is not None
    parent = parent_of(worker.pid)
    assert parent is not None and TEMPLATE_MODULE.encode() in argv_of(parent)
    return parent


async def ask(worker: ProcessWorker, query: bytes = b"") -> dict[str, Any]:
    """Send one GET straight to `worker` (not through the supervisor's routing); its JSON answer."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": query,
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 54321),
    }
    body: list[bytes] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    await worker.handle(scope, receive, send, ExecutionContext(worker.name, default_worker()))
    answer: dict[str, Any] = json.loads(b"".join(body))
    return answer


# -- exit statuses and template death ----------------------------------------------------------


async def test_the_exit_status_of_a_forked_worker_reaches_the_server(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_probe(functions_dir)
    async with EdgeClient(functions_dir, isolation="process") as client:
        assert (await client.invoke("probe")).status_code == 200
        first = forked_worker(client, "probe")
        template = template_pid(first)
        r = await client.invoke("probe", params={"exit": 1})  # os._exit(3)
        assert (r.status_code, r.json()["code"]) == (500, "WORKER_ERROR")
        assert first.exit_status == 3
        assert first.pid is not None and not alive(first.pid)  # reaped by its template: no zombie left
        assert (await client.invoke("probe")).status_code == 200
        second = forked_worker(client, "probe")
        assert template_pid(second) == template  # the template outlives its workers
        assert second.pid is not None
        os.kill(second.pid, signal.SIGKILL)  # from outside, as the OOM killer would
        await eventually(lambda: second.exit_status is not None, what="the crash")
        assert second.exit_status == -signal.SIGKILL
        assert (await client.invoke("probe")).status_code == 200
    assert f"exited unexpectedly (exit status 3): isolate: {first.id}" in caplog.text
    assert f"exited unexpectedly (exit status -9): isolate: {second.id}" in caplog.text


async def test_a_template_that_dies_takes_its_workers_with_it_and_is_replaced(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_probe(functions_dir)
    async with EdgeClient(functions_dir, isolation="process") as client:
        assert (await client.invoke("probe")).status_code == 200
        assert (await client.invoke("hello")).status_code == 200
        worker = forked_worker(client, "probe")
        template = template_pid(worker)
        other = template_pid(forked_worker(client, "hello"))
        assert other != template  # one template per function
        in_flight = asyncio.ensure_future(client.invoke("probe", params={"sleep": 30}))
        await asyncio.sleep(0.3)
        os.kill(template, signal.SIGKILL)
        r = await asyncio.wait_for(in_flight, 20)
        assert (r.status_code, r.json()["code"]) == (500, "WORKER_ERROR")
        assert worker.pid is not None
        await eventually(lambda: not alive(worker.pid), what="the worker's end")  # type: ignore[arg-type]
        r = await client.invoke("probe")
        assert r.status_code == 200
        replacement = template_pid(forked_worker(client, "probe"))
        assert replacement != template
        assert client.app.launcher is not None
        probe_template = client.app.launcher.template("probe")
        assert probe_template is not None and probe_template.starts == 2
        assert (await client.invoke("hello")).status_code == 200
        assert template_pid(forked_worker(client, "hello")) == other  # the other function's is untouched
    assert "template process of probe exited unexpectedly" in caplog.text
    assert "its worker processes end with it" in caplog.text
    assert not alive(replacement) and not alive(other)  # ended with the server


async def test_a_template_without_workers_is_ended_after_a_while(
    hello_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forking, "TEMPLATE_IDLE_SEC", 0.5)
    async with EdgeClient(hello_dir, isolation="process") as client:
        assert (await client.invoke("hello")).status_code == 200
        supervisor = client.app.functions["hello"]
        worker = forked_worker(client, "hello")
        template = template_pid(worker)
        supervisor._end(worker, StopReason.EARLY_DROP)
        await eventually(lambda: not alive(template), what="the idle template's end")
        assert (await client.invoke("hello")).status_code == 200  # a new template, a new worker
        assert template_pid(forked_worker(client, "hello")) != template


def take_pid(pid: int) -> subprocess.Popen[bytes] | None:
    """A process of this test's running as `pid` (free now: its process was reaped), or None if
    another process took that pid first. Root only: it sets the pid namespace's last pid."""
    for _ in range(20):  # another process forking in between gets the pid meant for ours: again
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        proc = subprocess.Popen(["sleep", "30"])
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
        if Path(f"/proc/{pid}").exists():
            return None
    return None


@pytest.mark.skipif(not ROOT, reason="gives a process a chosen pid (ns_last_pid): needs root")
async def test_a_forked_workers_pid_taken_by_another_process_is_never_signalled(
    functions_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forked worker that exits while it boots is reaped by its template, which then reports
    its exit. Until the server has read that report the worker's pid may be another process's:
    the server must not open, read or signal that process as its worker."""
    from edgeruntime.workers.process import parent

    write_function(functions_dir, "dies", "import os\nos._exit(3)\n")
    monkeypatch.setattr(parent, "REAP_TIMEOUT_SEC", 0.2)  # the server gives up waiting for the report and kills
    strangers: list[subprocess.Popen[bytes]] = []

    async def pid_reused(sock: Any) -> int | None:
        pid = await forking.peer_pid(sock)
        assert pid is not None and client.app.launcher is not None
        template = client.app.launcher.template("dies")
        assert template is not None and template.current is not None
        control, readable = template.current.control.fileno(), template.current._readable
        loop = asyncio.get_running_loop()
        loop.remove_reader(control)  # the template's report waits there, not read yet
        loop.call_later(1.0, loop.add_reader, control, readable)
        await eventually(lambda: not Path(f"/proc/{pid}").exists(), what="the worker reaped by its template")
        stranger = take_pid(pid)
        if stranger is not None:
            strangers.append(stranger)
        return pid

    monkeypatch.setattr(parent, "peer_pid", pid_reused)
    try:
        async with EdgeClient(functions_dir, isolation="process", sandbox="none") as client:
            r = await client.invoke("dies")
            assert (r.status_code, r.json()["code"]) == (500, "WORKER_ERROR")
            template = client.app.launcher.template("dies") if client.app.launcher else None
            assert template is not None and template.current is not None
            current = template.current
            await eventually(lambda: current.live == 0, what="the template's report read")
        if not strangers:
            pytest.skip("another process took the worker's pid first")
        assert strangers[0].poll() is None  # not killed as the worker
    finally:
        for stranger in strangers:
            stranger.kill()
            stranger.wait()


# -- what a worker and its template hold -------------------------------------------------------


@pytest.mark.skipif(not ROOT, reason="reads the non-dumpable template's environ: needs root")
async def test_a_template_holds_no_env_and_its_workers_do_not_see_each_others_changes(functions_dir: Path) -> None:
    write_function(functions_dir, "inspect", INSPECT)
    (functions_dir / ".env").write_text("FROM_DOT_ENV=dotenv-secret-value\n")
    environ = {**os.environ, "SERVER_ONLY_SECRET": "server-only-value"}
    async with EdgeClient(functions_dir, isolation="process", sandbox="none", environ=environ) as client:
        first = (await client.invoke("inspect", params={"set": "from-the-first-worker"})).json()
        worker = forked_worker(client, "inspect")
        template = template_pid(worker)
        supervisor = client.app.functions["inspect"]
        supervisor._end(worker, StopReason.MEMORY)
        await eventually(lambda: worker.exit_status is not None, what="the first worker's end")
        second = (await client.invoke("inspect")).json()
        assert template_pid(forked_worker(client, "inspect")) == template
        exec_environ = Path(f"/proc/{template}/environ").read_bytes().decode("latin-1")  # noqa: ASYNC240 (procfs)
        service_role_key = client.settings.keys.service_role_key
    # Sandbox none: a worker's env is the server's whole environment and the function's, as before.
    for answer in (first, second):
        assert answer["env"]["FROM_DOT_ENV"] == "dotenv-secret-value"
        assert answer["env"]["SERVER_ONLY_SECRET"] == "server-only-value"
    assert first["seen_now"] is None
    assert second["seen_at_boot"] is None and second["seen_now"] is None  # its predecessor's write stayed its own
    # ...but the template, started before any function's env was sent, holds none of it.
    assert "PATH=" in exec_environ
    for secret in ("dotenv-secret-value", "server-only-value", service_role_key):
        assert secret not in exec_environ


async def test_a_worker_holds_its_channel_and_stdio_only(functions_dir: Path) -> None:
    write_function(functions_dir, "inspect", INSPECT)
    async with EdgeClient(functions_dir, isolation="process") as client:
        assert (await client.invoke("inspect")).status_code == 200
        supervisor = client.app.functions["inspect"]
        first = forked_worker(client, "inspect")
        template = template_pid(first)
        supervisor._prepare_successor()  # a second worker of the same template, both alive
        assert supervisor._successor is not None
        second = await asyncio.shield(supervisor._successor)
        assert isinstance(second, ProcessWorker) and isinstance(second.proc, ForkedProcess)
        assert second.pid is not None and parent_of(second.pid) == template
        held = [(await ask(worker))["fds"] for worker in (first, second)]
        template_fds = {fd: os.readlink(f"/proc/{template}/fd/{fd}") for fd in os.listdir(f"/proc/{template}/fd")}
    for fds in held:
        assert {"0", "1", "2"} <= set(fds)
        # Its stdout and stderr: its template's pipes, which the server reads (not the server's own).
        assert fds["1"] == template_fds["1"] != fds["2"] == template_fds["2"], fds
        assert fds["1"].startswith("pipe:") and fds["2"].startswith("pipe:"), fds
        assert fds["2"] not in {os.readlink(f"/proc/self/fd/{fd}") for fd in ("1", "2")}
        rest = [target for fd, target in fds.items() if fd not in ("0", "1", "2")]
        sockets = [t for t in rest if t.startswith("socket:")]
        # The channel, and the event loop's own: its epoll and its self-pipe (a socket pair).
        assert len(sockets) == 3 and sorted(set(rest) - set(sockets)) == ["anon_inode:[eventpoll]"], fds
    assert not {t for t in held[0].values() if t.startswith("socket:")} & {
        t for t in held[1].values() if t.startswith("socket:")
    }
    # The template: stdio, its control socket, one pidfd per live worker; no worker's channel.
    rest = sorted(target for fd, target in template_fds.items() if fd not in ("0", "1", "2"))
    assert rest[:2] == ["anon_inode:[pidfd]"] * 2 and len(rest) == 3 and rest[2].startswith("socket:"), template_fds


# -- reloads and the sandbox's view ------------------------------------------------------------

SHARED_USER = """
from starlette.responses import JSONResponse
from edgeruntime import serve
from _shared.greeting import GREETING

@serve
async def handler(req):
    return JSONResponse({"greeting": GREETING})
"""

EXTRA_USER = """
from starlette.responses import JSONResponse
from edgeruntime import serve
from _shared.greeting import GREETING
from _extra.more import MORE

@serve
async def handler(req):
    return JSONResponse({"greeting": GREETING, "more": MORE})
"""


@pytest.mark.parametrize("mode", ["bwrap", "none"])
async def test_a_reload_reads_the_new_files_and_a_new_entry_gets_a_new_template(functions_dir: Path, mode: str) -> None:
    from tests.test_sandbox import BWRAP, NO_BWRAP, unavailable

    if mode == "bwrap" and BWRAP is None:
        unavailable(NO_BWRAP)
    (functions_dir / "_shared").mkdir()
    (functions_dir / "_shared" / "greeting.py").write_text('GREETING = "first"\n')
    write_function(functions_dir, "greet", SHARED_USER)
    async with EdgeClient(functions_dir, isolation="process", sandbox=mode) as client:
        assert (await client.invoke("greet")).json() == {"greeting": "first"}
        assert client.app.launcher is not None
        template = client.app.launcher.template("greet")
        assert template is not None
        first = template_pid(forked_worker(client, "greet"))
        (functions_dir / "_shared" / "greeting.py").write_text('GREETING = "second"\n')
        client.app.reload({"_shared"})
        assert (await client.invoke("greet")).json() == {"greeting": "second"}
        assert template_pid(forked_worker(client, "greet")) == first  # the template imported none of it
        # A directory the template's bubblewrap does not show: the next worker needs a new template.
        (functions_dir / "_extra").mkdir()
        (functions_dir / "_extra" / "more.py").write_text('MORE = "extra"\n')
        write_function(functions_dir, "greet", EXTRA_USER)
        client.app.reload({"greet"})
        r = await client.invoke("greet")
        assert r.status_code == 200, r.text
        assert r.json() == {"greeting": "second", "more": "extra"}
        if mode == "bwrap":
            assert template.starts == 2
            await eventually(lambda: not alive(first), what="the old template's end once its workers ended")
        else:  # without bubblewrap every template sees the whole filesystem
            assert template.starts == 1


async def test_a_template_serves_a_view_until_the_functions_directory_changes(functions_dir: Path) -> None:
    write_function(functions_dir, "a", HELLO)
    (functions_dir / "_shared").mkdir()
    bwrap = WorkerLauncher(Sandbox("bwrap", bwrap="/usr/bin/bwrap"), functions_dir)
    plain = WorkerLauncher(Sandbox("basic"), functions_dir)
    own = (functions_dir / "a").resolve()
    views = {launcher: launcher.view(own, 256) for launcher in (bwrap, plain)}

    def unchanged() -> dict[WorkerLauncher, bool]:
        return {launcher: launcher.view(own, 256) == view for launcher, view in views.items()}

    write_function(functions_dir, "b", HELLO)  # another function: hidden from a's workers anyway
    (functions_dir / ".env").write_text("A=1\n")  # dot-files are hidden
    (functions_dir / "_shared" / "x.py").write_text("X = 1\n")  # inside a bound directory: seen as it changes
    assert unchanged() == {bwrap: True, plain: True}
    assert bwrap.view(own, 128) != views[bwrap]  # the size of its /tmp
    (functions_dir / "util.py").write_text("")  # a new top-level file: bubblewrap binds the ones it found
    assert unchanged() == {bwrap: False, plain: True}
    views[bwrap] = bwrap.view(own, 256)
    (functions_dir / "_shared").rename(functions_dir / "_old")
    (functions_dir / "_shared").mkdir()  # replaced
    assert unchanged() == {bwrap: False, plain: True}
    views[bwrap] = bwrap.view(own, 256)
    (functions_dir / "a").rename(functions_dir / "a-old")
    write_function(functions_dir, "a", HELLO)  # the function's own directory replaced
    assert unchanged() == {bwrap: False, plain: False}


# -- where workers are not forked --------------------------------------------------------------

THREAD_AT_START = """
import threading
import time

threading.Thread(target=time.sleep, args=(3600,), daemon=True, name="started-by-sitecustomize").start()
"""


async def test_a_template_with_a_thread_refuses_to_fork_and_workers_are_spawned(
    hello_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(THREAD_AT_START))
    # Every interpreter started from here on (templates, spawned workers) starts a thread first.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p))
    async with EdgeClient(hello_dir, isolation="process", sandbox="none") as client:
        assert (await client.invoke("hello")).status_code == 200
        worker = client.app.functions["hello"].worker
        assert isinstance(worker, ProcessWorker) and isinstance(worker.proc, SpawnedProcess)
        assert client.app.launcher is not None
        template = client.app.launcher.template("hello")
        assert template is not None and template.refused
        await eventually(lambda: template.current is None and not template.retired, what="the template's end")
        r = await client.invoke("hello", params={"again": "1"})
        assert r.status_code == 200
    assert "the template of hello has a thread and cannot fork safely" in caplog.text


async def test_without_templates_workers_are_spawned_as_before(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_probe(functions_dir)
    async with EdgeClient(
        functions_dir, isolation="process", limits={"cpu_soft_limit_ms": 200, "cpu_hard_limit_ms": 300}
    ) as client:
        assert client.app.launcher is not None
        client.app.launcher.forks = False  # as where forking is not available
        assert client.app.launcher.template("probe") is None
        assert (await client.invoke("probe")).status_code == 200
        worker = client.app.functions["probe"].worker
        assert isinstance(worker, ProcessWorker) and isinstance(worker.proc, SpawnedProcess)
        assert (await client.invoke("probe", params={"spin": 1})).status_code == 546
        r = await client.invoke("probe", params={"exit": 1})
        assert r.status_code == 500
        assert (await client.invoke("probe")).status_code == 200
    assert "CPU time hard limit reached" in caplog.text
    assert "exited unexpectedly" in caplog.text


async def test_a_supervisor_made_outside_an_app_ends_its_templates(hello_dir: Path) -> None:
    from edgeruntime.config.settings import Settings
    from edgeruntime.functions.discovery import FunctionSpec

    settings = Settings.build(hello_dir, isolation="process", sandbox="none", watch=False)
    supervisor = FunctionSupervisor(FunctionSpec("hello", hello_dir / "hello"), settings)
    worker = await supervisor.acquire()
    assert isinstance(worker, ProcessWorker) and isinstance(worker.proc, ForkedProcess)
    template = template_pid(worker)
    await supervisor.shutdown(0)
    assert worker.exit_status is not None
    await eventually(lambda: not alive(template), what="the template's end")


# -- a function's output ----------------------------------------------------------------------


class Given:
    """A worker as the output sees it: the executions it was given."""

    def __init__(self, *executions: str) -> None:
        self.executions = set(executions)

    def gave(self, execution_id: str) -> bool:
        return execution_id in self.executions


def open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@asynccontextmanager
async def writer(output: ProcessOutput, code: str) -> AsyncIterator[subprocess.Popen[bytes]]:
    """A process running `code` with `output`'s pipes as its stdout and stderr; reaped."""
    # Popen only forks and execs: it does not wait for the child.
    proc = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=output.stdout, stderr=output.stderr
    )
    output.started()
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


async def exited(proc: subprocess.Popen[bytes]) -> None:
    await eventually(lambda: proc.poll() is not None, what="the writing process exiting", timeout=20)


@contextmanager
def lines_of(caplog: pytest.LogCaptureFixture, function: str) -> Iterator[list[logging.LogRecord]]:
    """The records logged as `function`'s output, as they come."""
    caplog.set_level(logging.INFO)
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "function", None) == function:
                records.append(record)

    handler = Collect()
    logger = logging.getLogger("edgeruntime.function")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


RECORDS = r"""
import json, os, sys
def record(**fields):
    os.write(2, (json.dumps(fields) + "\n").encode())
record(level="warning", logger="_edgeruntime_functions.forger.index", function="victim",
       execution_id="exec-of-victim", message="forged\n12:00:00.000 ERROR   [victim] fake",
       time="2001-09-11T08:00:00.000Z")
record(level="info", logger="edgeruntime.function", function="forger", execution_id="exec-1",
       message="printed", traceback="Traceback (most recent call last):\nValueError: x",
       time="MADE_AT")
record(level="nonsense", message="not a record")
os.write(1, b'{"level": "error", "message": "stdout holds no records"}\n')
os.write(1, b"plain\r\n")
os.write(2, b"no newline at the end")
"""


async def test_each_line_is_the_functions_and_names_only_executions_it_was_given(
    caplog: pytest.LogCaptureFixture,
) -> None:
    output = ProcessOutput("forger")
    worker = Given("exec-1")  # (held weakly by the output: as long as the worker lives)
    output.add_worker(worker)
    with lines_of(caplog, "forger") as records:
        made_at = datetime.fromtimestamp(round(time.time()) - 2, UTC)  # while the line waited in the pipe
        async with writer(output, RECORDS.replace("MADE_AT", made_at.isoformat())) as proc:
            await exited(proc)
            await eventually(lambda: len(records) >= 5, what="the lines read")
            output.close()
    got = [(r.levelname, r.name, r.getMessage(), getattr(r, "execution_id", None)) for r in records]
    assert sorted(got) == sorted(
        [
            (
                "WARNING",
                "_edgeruntime_functions.forger.index",
                "forged\n12:00:00.000 ERROR   [victim] fake",
                None,  # not an execution of this function's workers
            ),
            ("INFO", "edgeruntime.function", "printed", "exec-1"),
            ("ERROR", "edgeruntime.function", '{"level": "nonsense", "message": "not a record"}', None),
            ("INFO", "edgeruntime.function", '{"level": "error", "message": "stdout holds no records"}', None),
            ("INFO", "edgeruntime.function", "plain", None),
            ("ERROR", "edgeruntime.function", "no newline at the end", None),  # logged once the pipe ends
        ]
    )
    printed = next(r for r in records if r.getMessage() == "printed")
    assert getattr(printed, "traceback", None) == "Traceback (most recent call last):\nValueError: x"
    # Its time is when the function logged it, not when the server read its line; a time made up
    # (a line dated years back) is not believed.
    assert printed.created == made_at.timestamp()
    forged = next(r for r in records if r.getMessage().startswith("forged"))
    assert abs(forged.created - time.time()) < 60


async def test_a_long_line_is_cut_and_says_how_much(caplog: pytest.LogCaptureFixture) -> None:
    output = ProcessOutput("long")
    code = f"import os\nos.write(1, b'x' * {MAX_OUTPUT_LINE_BYTES + 12345} + b'\\nafter\\n')"
    with lines_of(caplog, "long") as records:
        async with writer(output, code) as proc:
            await exited(proc)
            await eventually(lambda: len(records) >= 2, what="the lines read")
            output.close()
    assert [r.getMessage() for r in records] == [
        "x" * MAX_OUTPUT_LINE_BYTES + " [12345 more bytes of this line were cut]",
        "after",
    ]


FLOOD = """
import os
line = b"y" * 99 + b"\\n"
for _ in range(20000):  # 2 MB: many times what a pipe holds
    os.write(1, line)
"""


async def _per_turn(
    caplog: pytest.LogCaptureFixture, code: str, lines: int, reading: Callable[[list[logging.LogRecord]], float]
) -> list[float]:
    """Run `code` with a ProcessOutput's pipes until its `lines` lines are logged: how much
    `reading` (of the records logged so far) grew in each turn of the event loop meanwhile."""
    output = ProcessOutput("flood")
    loop = asyncio.get_running_loop()
    growth: list[float] = []
    with lines_of(caplog, "flood") as records:

        async def ticker() -> None:
            last = reading(records)
            while True:
                await asyncio.sleep(0)
                now = reading(records)
                growth.append(now - last)
                last = now

        tick = loop.create_task(ticker())
        try:
            async with writer(output, code) as proc:
                await exited(proc)
                await eventually(lambda: len(records) == lines, what="every line", timeout=30)
        finally:
            tick.cancel()
        output.close()
    return growth


async def test_a_flood_takes_turns_with_the_event_loop_and_loses_nothing(caplog: pytest.LogCaptureFixture) -> None:
    # Without this test process's own collections: a full one walks every object the tests before
    # it left (over 100 ms in a pytest-xdist worker that ran hundreds of them), whatever the turn.
    gc.disable()
    try:
        # The event loop's thread's CPU time in each turn: what the turn did, however long the
        # machine kept the process waiting (other tests beside this one on a loaded machine).
        gaps = await _per_turn(caplog, FLOOD, 20000, lambda _: time.thread_time())
    finally:
        gc.enable()
    assert max(gaps) < 0.1, max(gaps)


SHORT_LINES = """
import os
lines = b"y\\n" * 5000
for _ in range(10):  # 50,000 lines of one character: a read of the pipe holds thousands
    os.write(1, lines)
"""


async def test_a_flood_of_short_lines_is_logged_a_few_dozen_lines_a_turn(caplog: pytest.LogCaptureFixture) -> None:
    """However many lines one read of the pipe brings, a turn of the event loop logs a few dozen of
    them (at most two batches: one after a read, one left from the turn before), not all of them."""
    per_turn = await _per_turn(caplog, SHORT_LINES, 50000, len)
    assert 0 < max(per_turn) <= 2 * 64, max(per_turn)


async def test_while_the_servers_log_is_backed_up_the_function_waits(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    backlog = [forking.OUTPUT_BACKLOG_LINES]
    monkeypatch.setattr(forking, "log_backlog", lambda: backlog[0])
    output = ProcessOutput("flood")
    with lines_of(caplog, "flood") as records:
        async with writer(output, FLOOD) as proc:
            await asyncio.sleep(1)
            assert proc.poll() is None  # blocked on its full pipe
            assert len(records) <= 200  # what was read before the server looked at its log (a turn's lines)
            backlog[0] = 0
            await exited(proc)
            await eventually(lambda: len(records) == 20000, what="every line", timeout=30)
        output.close()


async def test_no_descriptor_is_left_behind() -> None:
    before = open_descriptors()
    for _ in range(3):
        output = ProcessOutput("hello")
        async with writer(output, "print('hi')") as proc:
            await exited(proc)
        output.close()
    unstarted = ProcessOutput("hello")  # its process never started (Popen failed)
    unstarted.close()
    assert open_descriptors() == before


@pytest.mark.parametrize("spawn", [False, True], ids=["forked", "spawned"])
async def test_the_output_of_workers_and_templates_is_closed_with_them(functions_dir: Path, spawn: bool) -> None:
    """Each template (and each spawned worker) has two pipes: the server closes its ends when the
    process is gone, crashed or ended, so a server whose workers come and go holds no more."""
    events = write_probe(functions_dir)
    before = open_descriptors()
    async with EdgeClient(functions_dir, isolation="process", environ=environ_for(events)) as client:
        assert client.app.launcher is not None
        client.app.launcher.forks = not spawn
        for _ in range(3):
            assert (await client.invoke("probe", params={"exit": "1"})).status_code == 500
            assert (await client.invoke("hello")).status_code == 200
        worker = client.app.functions["hello"].worker
        assert isinstance(worker, ProcessWorker) and worker.proc is not None and worker.proc.output is not None
        assert isinstance(worker.proc, SpawnedProcess if spawn else ForkedProcess)
    assert open_descriptors() == before
