"""Attacks of a hostile function on the others and on the server, beyond `tests/test_sandbox.py`.

Each test serves real functions with ``edgeruntime serve --isolation process`` on loopback and lets
function `attacker` try what a hostile function deployed beside other people's functions would:
read the server's files where they lie inside the functions directory, write into another
function, the shared code or the installed packages, and write its own frames to its channel to
put records into another function's run history. The servers run as `tests/test_sandbox.py` runs
them (see `server_prefix`), so each mode runs as it would in a deployment.
"""

from __future__ import annotations

import json
import shutil
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import HELLO, ServerProcess, write_function
from tests.probes import template_processes, worker_processes
from tests.test_sandbox import (
    ATTACK_CLIENT_TIMEOUT_SEC,
    HOSTILE,
    answer_of,
    server_prefix,
    serving_process,
    shut_down,
)

ATTACKER = (
    HOSTILE
    + """
import json


def read(path):
    with open(path, "rb") as f:
        return f.read(1 << 20).decode("latin-1")


def write(path):
    with open(path, "a") as f:
        f.write("raise SystemExit('the attacker ran here')\\n")
    return "written"


@serve
async def handler(req: Request) -> JSONResponse:
    asked = json.loads(await req.body())
    return JSONResponse({
        "reads": {path: attempt(lambda path=path: read(path)) for path in asked.get("reads", [])},
        "writes": {path: attempt(lambda path=path: write(path)) for path in asked.get("writes", [])},
        "mkdir": {path: attempt(lambda path=path: os.mkdir(path)) for path in asked.get("mkdir", [])},
    })
"""
)

VICTIM = """
from starlette.requests import Request
from starlette.responses import JSONResponse

import edgeruntime.jobs
from edgeruntime import serve


@serve
async def handler(req: Request) -> JSONResponse:
    secret = req.query_params.get("secret")
    job = await edgeruntime.jobs.enqueue("victim", {"card": secret}, delay=3600) if secret else None
    return JSONResponse({"job": job, "version": "original"})
"""


@pytest.fixture
def flat_project() -> Iterator[Path]:
    """A functions directory that other uids can read (tmp_path is inside a 0700 directory),
    inside a directory of its own where the test server writes its log."""
    path = Path(tempfile.mkdtemp(prefix="edgeruntime-attacks-"))
    path.chmod(0o755)
    (path / "functions").mkdir()
    try:
        yield path / "functions"
    finally:
        shutil.rmtree(path, ignore_errors=True)


def attack(server: ServerProcess, http: httpx.Client, asked: dict[str, list[str]]) -> dict[str, Any]:
    """What `attacker` got doing what `asked` says (reads, writes, mkdir: lists of paths)."""
    return answer_of(http.post(server.url("attacker"), content=json.dumps(asked)), server)


# -- the server's files inside the functions directory ---------------------------------------


@pytest.mark.e2e
def test_bwrap_hides_the_servers_files_that_lie_inside_the_functions_directory(flat_project: Path) -> None:
    """A project laid out flat: config.toml and the SQLite store among the functions. bubblewrap
    shows a worker the functions directory's top-level files and `_` directories: the server's
    own files there must stay hidden (docs/deployment.md: the jobs store, config.toml)."""
    prefix = server_prefix("bwrap")
    functions = flat_project
    write_function(functions, "attacker", ATTACKER)
    write_function(functions, "victim", VICTIM)
    jwt_secret = f"jwt-secret-{uuid.uuid4().hex}"
    config = functions / "config.toml"
    config.write_text(f'[auth]\njwt_secret = "{jwt_secret}"\n')
    (functions / "_data").mkdir()
    stores = {"top": functions / "jobs.db", "shared": functions / "_data" / "jobs.db"}
    card = f"4111-{uuid.uuid4().hex}"
    for where, store in stores.items():
        options = ["--no-watch", "--no-verify-jwt", "--isolation", "process", "--sandbox", "bwrap"]
        options += ["--config", str(config), "--database-url", f"sqlite:///{store}"]
        with (
            ServerProcess(functions, *options, prefix=prefix) as server,
            httpx.Client(timeout=ATTACK_CLIENT_TIMEOUT_SEC) as http,
        ):
            assert answer_of(http.get(server.url("victim"), params={"secret": card}), server)["job"] is not None
            files = [store, store.with_name(store.name + "-wal"), store.with_name(store.name + "-shm")]
            got = attack(server, http, {"reads": [str(config), *map(str, files)]})["reads"]
            assert shut_down(server) == 0
        assert store.exists() and card.encode() in b"".join(p.read_bytes() for p in files if p.exists())
        for path, result in got.items():
            content = result.get("value", "")
            assert card not in content and jwt_secret not in content, (where, path, result)


# -- writing into another function -----------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["bwrap", "uid"])
def test_a_function_cannot_write_into_another_function_the_shared_code_or_the_packages(
    flat_project: Path, mode: str
) -> None:
    """What the function would write runs as another function at its next boot (or on a hot
    reload): its `index.py`, a module of `_shared`, a new function, a `.pth` of site-packages."""
    prefix = server_prefix(mode)
    functions = flat_project
    write_function(functions, "attacker", ATTACKER)
    victim = write_function(functions, "victim", VICTIM)
    (functions / "_shared").mkdir()
    shared = functions / "_shared" / "util.py"
    shared.write_text("X = 1\n")
    write_function(functions, "hello", HELLO)
    before = {p: p.read_bytes() for p in (victim, shared)}
    site = Path(sysconfig.get_paths()["purelib"])
    targets = [victim, shared, functions / "victim" / "extra.py", functions / "config.toml", site / "zz_attack.pth"]
    options = ("--no-watch", "--no-verify-jwt", "--isolation", "process", "--sandbox", mode)
    with (
        ServerProcess(functions, *options, prefix=prefix) as server,
        httpx.Client(timeout=ATTACK_CLIENT_TIMEOUT_SEC) as http,
    ):
        got = attack(server, http, {"writes": [str(p) for p in targets], "mkdir": [str(functions / "planted")]})
        assert shut_down(server) == 0
    for path, result in [*got["writes"].items(), *got["mkdir"].items()]:
        assert not result["ok"], (path, result)
    assert {p: p.read_bytes() for p in before} == before
    for path in [*targets[2:], functions / "planted"]:
        assert not path.exists(), path


# -- run history -----------------------------------------------------------------------------

FORGER = """
import os
import pickle
import sys
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from edgeruntime import serve


@serve
async def handler(req: Request) -> PlainTextResponse:
    victim_execution = req.query_params["execution"]
    batch = [
        (990001, "charge-card", victim_execution, 10),  # TaskStarted(tid, name, execution_id)
        (990001, "failed", RuntimeError("card declined: 4111-1111-1111-1111"), None, 11),  # TaskDone
    ]
    data = pickle.dumps(batch)
    os.write(int(sys.argv[1]), len(data).to_bytes(4, "big") + data)  # the worker's end of its channel
    return PlainTextResponse("sent")
"""


def _victim_run(http: httpx.Client, server: ServerProcess, execution: str) -> dict[str, Any]:
    """The victim's run `execution` as the dashboard API shows it, once the history has it."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        runs = http.get(f"{server.base_url}/_edgeruntime/api/runs", params={"function": "victim"}).json()["runs"]
        found = [r for r in runs if r["execution_id"] == execution]
        if found:
            return dict(found[0])
        time.sleep(0.1)
    raise AssertionError(f"run {execution} not in the history:\n{server.output}")


@pytest.mark.e2e
def test_a_function_cannot_add_background_tasks_to_another_functions_run(flat_project: Path) -> None:
    """A worker writes its own frames to its channel: a `wait_until` task it reports must be
    recorded against one of its own function's executions, not against the victim's run. A
    worker naming an execution it was not given is hostile: it ends as a crash (500)."""
    functions = flat_project
    write_function(functions, "victim", VICTIM)
    write_function(functions, "forger", FORGER)
    options = ("--no-watch", "--no-verify-jwt", "--isolation", "process")
    with ServerProcess(functions, *options) as server, httpx.Client(timeout=ATTACK_CLIENT_TIMEOUT_SEC) as http:
        r = http.get(server.url("victim"))
        assert r.status_code == 200, server.output
        execution = r.headers["x-edgeruntime-execution-id"]
        before = _victim_run(http, server, execution)
        forged = http.get(server.url("forger"), params={"execution": execution})
        assert forged.status_code == 500, server.output
        assert forged.json()["code"] == "WORKER_ERROR"
        time.sleep(1)  # the history is written every 0.25 s
        after = _victim_run(http, server, execution)
        assert http.get(server.url("victim")).status_code == 200, server.output
        assert shut_down(server) == 0
    assert before["tasks"] == []
    assert after["tasks"] == [], after["tasks"]
    assert f"the other end sent a background task of execution '{execution}', which it was not given" in server.output
    assert "worker process of forger exited unexpectedly" in server.output


# -- tracing and descriptors -----------------------------------------------------------------

TRACER = (
    HOSTILE
    + """
import ctypes

libc = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH, PTRACE_DETACH, SYS_PIDFD_GETFD, WALL = 16, 17, 438, 0x40000000


def attach(pid):
    if libc.ptrace(PTRACE_ATTACH, pid, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    os.waitpid(pid, WALL)  # stopped: it can be let go (a failing test then does not hang its target)
    libc.ptrace(PTRACE_DETACH, pid, 0, 0)
    return "attached"


def take_descriptors(pid):
    # Another process's channel to the server, its listening socket: any descriptor it holds.
    pidfd = os.pidfd_open(pid)
    try:
        taken = []
        for fd in range(64):
            got = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
            if got >= 0:
                taken.append(os.readlink(f"/proc/self/fd/{got}"))
                os.close(got)
            elif ctypes.get_errno() != 9:  # EBADF: no such descriptor there
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        return taken
    finally:
        os.close(pidfd)


@serve
async def handler(req: Request) -> JSONResponse:
    pids = {name: int(pid) for name, pid in req.query_params.items()}
    return JSONResponse({
        name: {"ptrace": attempt(lambda: attach(pid)), "pidfd_getfd": attempt(lambda: take_descriptors(pid))}
        for name, pid in pids.items()
    })
"""
)


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["bwrap", "uid", "basic"])
def test_a_function_cannot_trace_another_worker_or_take_its_descriptors(flat_project: Path, mode: str) -> None:
    """ptrace(PTRACE_ATTACH) and pidfd_getfd(2) on another function's worker, its template and the
    server: both would give the attacker the target's memory or its channel to the server."""
    prefix = server_prefix(mode)
    functions = flat_project
    write_function(functions, "tracer", TRACER)
    write_function(functions, "victim", VICTIM)
    options = ("--no-watch", "--no-verify-jwt", "--isolation", "process", "--sandbox", mode)
    with (
        ServerProcess(functions, *options, prefix=prefix) as server,
        httpx.Client(timeout=ATTACK_CLIENT_TIMEOUT_SEC) as http,
    ):
        answer_of(http.get(server.url("victim")), server)
        targets = {
            "victim": worker_processes(server.proc.pid)["victim"],
            "template": template_processes(server.proc.pid)["victim"],
            "server": serving_process(server.proc.pid),
        }
        got = answer_of(http.get(server.url("tracer"), params=targets), server)
        assert answer_of(http.get(server.url("victim")), server)["version"] == "original"
        assert worker_processes(server.proc.pid)["victim"] == targets["victim"]
        assert shut_down(server) == 0
    for name, result in got.items():
        assert not result["ptrace"]["ok"], (name, result)
        assert not result["pidfd_getfd"]["ok"], (name, result)


# -- the server's log ------------------------------------------------------------------------

LOG_FORGER = """
import json
import os
import subprocess
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve


def reopen(fd):
    # Where the server's output is a file this uid may read, this opened it: its whole log.
    try:
        f = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        return type(exc).__name__
    try:
        return os.read(f, 1 << 20).decode("latin-1")
    except OSError as exc:
        return type(exc).__name__
    finally:
        os.close(f)


@serve
async def handler(req: Request) -> JSONResponse:
    read = {fd: reopen(fd) for fd in (1, 2)}  # before writing: what it reads back is not its own
    for execution in (None, req.query_params["execution"]):
        forged = {"time": "2026-01-01T00:00:00.000Z", "level": "error", "logger": "edgeruntime.function",
                  "function": "victim", "execution_id": execution, "message": req.query_params["message"]}
        os.write(2, (json.dumps(forged) + "\\n").encode())  # the worker's stderr, written around sys.stderr
    os.write(1, b"12:00:00.000 ERROR   [victim] " + req.query_params["message"].encode() + b"\\n")
    subprocess.run(["echo", "from a subprocess of forger"], check=True)  # what a subprocess prints
    print("printed by forger")
    return JSONResponse(read)
"""


@pytest.mark.e2e
@pytest.mark.parametrize("log_format", ["json", "text"])
@pytest.mark.parametrize("mode", ["bwrap", "uid", "basic", "none"])
def test_a_function_cannot_write_log_lines_in_another_functions_name(
    flat_project: Path, mode: str, log_format: str
) -> None:
    """Under --log-format json every line of the server's output is a JSON record naming its
    function (docs/deployment.md): one function must not be able to write a record in another's
    name or execution, and what a subprocess of it prints is its own line too. Nor can it
    reopen the server's log file (this one is readable by all) through /proc/self/fd."""
    prefix = server_prefix(mode)
    functions = flat_project
    write_function(functions, "forger", LOG_FORGER)
    write_function(functions, "victim", VICTIM)
    message = f"card charged twice {uuid.uuid4().hex}"
    options = ("--no-watch", "--no-verify-jwt", "--isolation", "process", "--sandbox", mode, "--log-format", log_format)
    with (
        ServerProcess(functions, *options, prefix=prefix) as server,
        httpx.Client(timeout=ATTACK_CLIENT_TIMEOUT_SEC) as http,
    ):
        victim = http.get(server.url("victim"))
        execution = victim.headers["x-edgeruntime-execution-id"]
        forged = http.get(server.url("forger"), params={"message": message, "execution": execution})
        assert forged.status_code == 200, server.output
        forger_execution = forged.headers["x-edgeruntime-execution-id"]
        assert shut_down(server) == 0
    for fd, content in forged.json().items():
        assert "Serving functions on" not in content, (fd, content)
    if log_format == "text":
        lines = server.output.splitlines()
        forgeries = [line for line in lines if message in line]
        assert len(forgeries) == 3, server.output  # two forged records and a forged text line, one line each
        assert all(line.split()[2] == "[forger]" for line in forgeries), forgeries
        assert not [line for line in forgeries if execution in line]
        assert [line for line in lines if line.endswith("[forger] from a subprocess of forger")]
        assert [line for line in lines if line.endswith(f"[forger] {forger_execution} printed by forger")]
        return
    records: list[dict[str, Any]] = []
    raw: list[str] = []
    for line in server.output.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            raw.append(line)
    assert raw == []
    assert not [r for r in records if r.get("function") == "victim" and message in r.get("message", "")]
    assert not [r for r in records if r.get("execution_id") == execution and r.get("function") != "victim"]
    ours = [r for r in records if message in r.get("message", "")]
    assert len(ours) == 3 and {r["function"] for r in ours} == {"forger"}, ours
    assert [r for r in records if r.get("function") == "forger" and "from a subprocess" in r.get("message", "")]
    printed = [r for r in records if r.get("message") == "printed by forger"]
    assert [(r["function"], r["execution_id"]) for r in printed] == [("forger", forger_execution)]


# -- two servers on one host -----------------------------------------------------------------

TENANT_A = """
import os
import uuid
from starlette.responses import JSONResponse
from edgeruntime import serve

SECRET = "tenant-a-" + uuid.uuid4().hex


@serve
async def handler(req):
    with open(os.path.join("/tmp", "tenant-a-secret"), "w") as f:  # private to its uid (umask 077)
        f.write(SECRET)
    return JSONResponse({"pid": os.getpid(), "uid": os.getuid(), "secret": SECRET})
"""

TENANT_B = (
    HOSTILE
    + """

def read():
    with open(os.path.join("/tmp", "tenant-a-secret")) as f:
        return f.read()


@serve
async def handler(req: Request) -> JSONResponse:
    pid = int(req.query_params["pid"])
    return JSONResponse({"uid": os.getuid(), "read": attempt(read), "kill": attempt(lambda: os.kill(pid, 9))})
"""
)


@pytest.mark.e2e
def test_same_named_functions_of_two_servers_do_not_share_a_uid(flat_project: Path) -> None:
    """docs/deployment.md: give functions you do not trust a server of their own. Under `uid`
    that server's function of the same name (an obvious one: `hello`, `send-email`) must not get
    the uid of yours: it would read its private /tmp files and signal its workers."""
    prefix = server_prefix("uid")
    tenants = flat_project / "tenant-a", flat_project / "tenant-b"
    for tenant, source in zip(tenants, (TENANT_A, TENANT_B), strict=True):
        tenant.mkdir(mode=0o755)
        write_function(tenant, "send-email", source)
    options = ("--no-watch", "--no-verify-jwt", "--isolation", "process", "--sandbox", "uid")
    try:
        with (
            ServerProcess(tenants[0], *options, prefix=prefix) as a,
            ServerProcess(tenants[1], *options, prefix=prefix) as b,
            httpx.Client(timeout=ATTACK_CLIENT_TIMEOUT_SEC) as http,
        ):
            victim = answer_of(http.get(a.url("send-email")), a)
            got = answer_of(http.get(b.url("send-email"), params={"pid": victim["pid"]}), b)
            again = answer_of(http.get(a.url("send-email")), a)
            assert shut_down(a) == 0 and shut_down(b) == 0
    finally:
        (Path("/tmp") / "tenant-a-secret").unlink(missing_ok=True)
    assert got["uid"] != victim["uid"]
    assert not got["read"]["ok"], got["read"]
    assert not got["kill"]["ok"], got["kill"]
    assert again["pid"] == victim["pid"]


# -- undoing the view ------------------------------------------------------------------------

UNMOUNTER = """
import ctypes
import json
import os
from starlette.responses import JSONResponse
from edgeruntime import serve

CLONE_NEWUSER, CLONE_NEWNS, MS_REC, MS_PRIVATE, MNT_DETACH = 0x10000000, 0x00020000, 0x4000, 0x40000, 2
FUNCTIONS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def in_a_namespace_of_its_own():
    # Root of a user namespace of its own may mount and unmount in a mount namespace of its own:
    # unmounting the view's tmpfs would show the other functions beneath it.
    libc = ctypes.CDLL(None, use_errno=True)
    out = {}
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
        return {"unshare": os.strerror(ctypes.get_errno())}
    out["unshare"] = "ok"
    libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None)
    for target in (FUNCTIONS, "/tmp"):
        ok = libc.umount2(target.encode(), MNT_DETACH) == 0
        out[target] = "unmounted" if ok else os.strerror(ctypes.get_errno())
    out["listing"] = sorted(os.listdir(FUNCTIONS))
    return out


@serve
def handler(req):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker's own threads stay out of it: unshare(CLONE_NEWUSER) needs one thread
        try:
            os.write(write, json.dumps(in_a_namespace_of_its_own()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return JSONResponse(json.loads(data))
"""


@pytest.mark.e2e
def test_bwrap_a_function_cannot_undo_its_view_from_a_namespace_of_its_own(flat_project: Path) -> None:
    """bubblewrap as root lets a worker (another uid, no capabilities) create user namespaces:
    the view's mounts come locked into them, so unmounting one shows nothing beneath it."""
    prefix = server_prefix("bwrap")
    functions = flat_project
    write_function(functions, "unmounter", UNMOUNTER)
    write_function(functions, "victim", VICTIM)
    options = ("--no-watch", "--no-verify-jwt", "--isolation", "process", "--sandbox", "bwrap")
    with (
        ServerProcess(functions, *options, prefix=prefix) as server,
        httpx.Client(timeout=ATTACK_CLIENT_TIMEOUT_SEC) as http,
    ):
        got = answer_of(http.get(server.url("unmounter")), server)
        assert shut_down(server) == 0
    if got["unshare"] != "ok":  # not root: bubblewrap's --disable-userns refuses it
        return
    assert "unmounted" not in got.values(), got
    assert got["listing"] == ["unmounter"], got
