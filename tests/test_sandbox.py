"""Sandboxes of worker processes (process isolation), each mode tested by function code that attacks.

Function `attacker` does what a hostile function would: it reads another function's worker memory
(``/proc/<pid>/mem`` at the address of a module global) and environ, the server's environ, and
signals the other function's worker. Function `victim` holds a secret in a module global. Modes
that need root or bubblewrap run the test server under a bubblewrap view where this machine needs
one (see `server_prefix`), so that every mode runs in CI (root, bubblewrap installed).
"""

from __future__ import annotations

import asyncio
import http.server
import os
import pickle
import shutil
import signal
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

from edgeruntime.config.project import load_config
from edgeruntime.config.settings import Settings
from edgeruntime.exceptions import ConfigError
from edgeruntime.jobs.backends import open_store
from edgeruntime.testing import EdgeClient
from edgeruntime.workers.process import sandbox as sandbox_module
from edgeruntime.workers.process.frames import load_worker_frame
from edgeruntime.workers.process.parent import BOOT_TIMEOUT_SEC, ProcessWorker
from edgeruntime.workers.process.sandbox import (
    Sandbox,
    WorkerLauncher,
    function_env,
    interpreter_paths,
    resolve_sandbox,
)
from tests.helpers import HELLO, ServerProcess, free_port, run_cli, write_function
from tests.probes import PROBE, descendants, template_processes, worker_processes

ROOT = os.geteuid() == 0


def _bwrap_works() -> bool:
    try:
        resolve_sandbox("bwrap")
    except ConfigError:
        return False
    return True


BWRAP = shutil.which("bwrap") if _bwrap_works() else None
NO_BWRAP = "bubblewrap is not installed or cannot create namespaces here (apt-get install bubblewrap)"


def unavailable(reason: str) -> NoReturn:
    """Skip: a sandbox mode cannot run here; fail instead when EDGERUNTIME_REQUIRE_SANDBOX=1 (CI)."""
    if os.environ.get("EDGERUNTIME_REQUIRE_SANDBOX") == "1":
        pytest.fail(f"{reason} (EDGERUNTIME_REQUIRE_SANDBOX=1)")
    pytest.skip(reason)


#: The start of a hostile function: the usual imports, and `attempt(action)`, which says whether
#: an action the sandbox should refuse went through (the OSError's name when it did not).
HOSTILE = """
import os
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve


def attempt(action):
    try:
        return {"ok": True, "value": action()}
    except OSError as exc:
        return {"ok": False, "error": type(exc).__name__}
"""

ATTACKER = (
    HOSTILE
    + """

def read(path, offset=0, size=65536):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size).decode("latin-1")


@serve
async def handler(req: Request) -> JSONResponse:
    q = req.query_params
    victim, server = int(q["victim"]), int(q["server"])
    return JSONResponse({
        "victim_memory": attempt(lambda: read(f"/proc/{victim}/mem", int(q["address"]), int(q["length"]))),
        "victim_environ": attempt(lambda: read(f"/proc/{victim}/environ")),
        "server_environ": attempt(lambda: read(f"/proc/{server}/environ")),
        "signal": attempt(lambda: os.kill(victim, int(q["signal"]))),
        "signal_template": attempt(lambda: os.kill(int(q["template"]), int(q["signal"]))),
        "own_env": dict(os.environ),
        "processes": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    })
"""
)

VICTIM = """
import sys
import uuid
from starlette.responses import JSONResponse
from edgeruntime import serve

SECRET = ("victim-global-" + uuid.uuid4().hex).encode()


@serve
async def handler(req):
    # Where the bytes of SECRET are (after the object's header): what an attacker would look for.
    address = id(SECRET) + sys.getsizeof(b"") - 1
    return JSONResponse({"secret": SECRET.decode(), "address": address, "length": len(SECRET)})
"""

WORKS = (
    HOSTILE
    + """
import os
import tempfile
import uuid
from pathlib import Path
from typing import NoReturn

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse

import edgeruntime.jobs
from edgeruntime import Deno, serve
from edgeruntime.exceptions import JobsError
from _shared.greeting import GREETING

HERE = Path(__file__).parent


async def refused(function, payload):
    try:
        await edgeruntime.jobs.enqueue(function, payload)
    except JobsError as exc:
        return str(exc)


@serve
async def handler(req: Request) -> JSONResponse:
    q = req.query_params
    print("works: a line from the function", flush=True)
    scratch = Path(tempfile.gettempdir()) / f"works-{uuid.uuid4().hex}"
    scratch.write_text("scratch")
    tmp = scratch.read_text()
    scratch.unlink()
    async with httpx.AsyncClient() as client:
        outbound = (await client.get(q["url"])).text
    return JSONResponse({
        "own": (HERE / "data.txt").read_text(),
        "shared": GREETING,
        "tmp": tmp,
        "outbound": outbound,
        "job": await edgeruntime.jobs.enqueue("works", {"from": "works"}, delay=3600),
        "bad_name": await refused("not a name!", {}),
        "bad_payload": await refused("works", {"when": object()}),
        "dotenv": Deno.env.get("FROM_DOT_ENV"),
        "write_own_dir": attempt(lambda: (HERE / "new.txt").write_text("x")),
        "other_function": attempt(lambda: (HERE.parent / "probe" / "index.py").read_text()[:6]),
        "store": attempt(lambda: os.listdir(q["store"])),
        "config": attempt(lambda: Path(q["config"]).read_text()),
    })
"""
)


@pytest.fixture
def project() -> Iterator[Path]:
    """A project directory other uids can read (pytest's tmp_path is inside a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="edgeruntime-sandbox-"))
    path.chmod(0o755)
    (path / "functions").mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _root_view() -> list[str]:
    """bubblewrap options (as root) under which other uids can read the interpreter: the directories
    that close it (pyenv under /root, say) are replaced by ones holding only what it needs."""
    args: list[str] = []
    masked: list[Path] = []
    needed = list(interpreter_paths())
    for path in needed:
        blocked = sandbox_module._unreadable_by_others(path)
        if blocked is not None and blocked != path and blocked not in masked:
            masked.append(blocked)
            args += ["--tmpfs", str(blocked)]
    made: set[Path] = set()
    for path in needed:
        mask = next((m for m in masked if m in path.parents), None)
        if mask is None:
            continue
        for ancestor in reversed(path.parents):
            if mask in ancestor.parents and ancestor not in made:
                made.add(ancestor)
                args += ["--perms", "0755", "--dir", str(ancestor)]
        args += ["--ro-bind", str(path), str(path)]
    return args


def server_prefix(mode: str) -> list[str]:
    """What the test server runs under so that sandbox `mode` works as in a deployment (or skip)."""
    if mode == "bwrap" and BWRAP is None:
        unavailable(NO_BWRAP)
    if mode == "uid":
        if not ROOT:
            pytest.skip("sandbox uid needs the server to run as root")  # CI runs as root
        view = _root_view()
        if not view:
            return []
        if BWRAP is None:
            unavailable(f"other uids cannot read this interpreter, and {NO_BWRAP}")
        return [BWRAP, "--dev-bind", "/", "/", *view, "--die-with-parent", "--"]
    if mode == "basic" and ROOT:
        # Root reads every process's memory, dumpable or not: basic is for servers that are not
        # root, so the server runs as uid 1000 of its own user namespace, as such a server would.
        if BWRAP is None:
            unavailable(f"sandbox basic needs a server that is not root, and {NO_BWRAP}")
        return [
            BWRAP,
            "--unshare-user",
            "--uid",
            "1000",
            "--gid",
            "1000",
            "--dev-bind",
            "/",
            "/",
            "--die-with-parent",
            "--",
        ]
    return []


def serving_process(root: int) -> int:
    """The `edgeruntime serve` process started as `root` (under a prefix, a descendant of it)."""
    for pid, argv in descendants(root).items():
        if b"serve" in argv and b"edgeruntime" in argv:
            return pid
    return root


def shut_down(server: ServerProcess) -> int:
    """SIGTERM to the server itself, which writes out its log (bubblewrap would SIGKILL it)."""
    os.kill(serving_process(server.proc.pid), signal.SIGTERM)
    return server.proc.wait(30)


# -- the attack ------------------------------------------------------------------------------


#: The attack test's client waits longer than the server takes to give up on booting a worker
#: (BOOT_TIMEOUT_SEC, then a 503 saying why): a boot that hangs fails with the server's answer and
#: its log, not with a bare ReadTimeout at the same instant.
ATTACK_CLIENT_TIMEOUT_SEC = BOOT_TIMEOUT_SEC + 15


def answer_of(response: httpx.Response, server: ServerProcess) -> dict[str, Any]:
    """The function's JSON answer; anything but a 200 fails with the server's answer and log."""
    assert response.status_code == 200, f"{response.status_code} {response.text}\n{server.output}"
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["bwrap", "uid", "basic", "none"])
def test_a_hostile_function_attacks_another_function_and_the_server(project: Path, mode: str) -> None:
    prefix = server_prefix(mode)
    functions = project / "functions"
    write_function(functions, "attacker", ATTACKER)
    write_function(functions, "victim", VICTIM)
    server_secret = f"server-only-{uuid.uuid4().hex}"
    env = {"SERVER_ONLY_SECRET": server_secret, "EDGERUNTIME_DATABASE_URL": f"sqlite:///{project}/store.db"}
    options = ("--no-watch", "--no-verify-jwt", "--isolation", "process", "--sandbox", mode)
    kill = mode in ("bwrap", "uid")  # the modes that stop it: a real SIGKILL; else only ask whether it would work
    with (
        ServerProcess(functions, *options, env=env, prefix=prefix) as server,
        httpx.Client(timeout=ATTACK_CLIENT_TIMEOUT_SEC) as http,
    ):
        victim = answer_of(http.get(server.url("victim")), server)
        workers = worker_processes(server.proc.pid)
        params = {
            "victim": workers["victim"],
            "template": template_processes(server.proc.pid)["victim"],  # the one the victim was forked from
            "server": serving_process(server.proc.pid),
            "address": victim["address"],
            "length": victim["length"],
            "signal": 9 if kill else 0,
        }
        r = http.get(server.url("attacker"), params=params)
        attack = answer_of(r, server)
        again = answer_of(http.get(server.url("victim")), server)
        survivor = worker_processes(server.proc.pid).get("victim")
        assert shut_down(server) == 0
    own_env = attack.pop("own_env")
    if mode == "none":  # no sandbox: the same attack succeeds (so it would show a sandbox that fails)
        assert attack["signal"]["ok"]
        assert own_env["SERVER_ONLY_SECRET"] == server_secret
        if ROOT:
            assert attack["victim_memory"] == {"ok": True, "value": victim["secret"]}
            assert attack["server_environ"]["ok"] and server_secret in attack["server_environ"]["value"]
        return
    for target in ("victim_memory", "victim_environ", "server_environ"):
        assert not attack[target]["ok"], (target, attack[target])
    assert victim["secret"] not in r.text
    assert server_secret not in r.text
    assert "SERVER_ONLY_SECRET" not in own_env
    assert "EDGERUNTIME_DATABASE_URL" not in own_env
    if mode == "basic":  # what basic leaves open, as documented: the same user may signal
        assert attack["signal"]["ok"]
        return
    assert not attack["signal"]["ok"], attack["signal"]
    assert not attack["signal_template"]["ok"], attack["signal_template"]
    assert again["secret"] == victim["secret"]  # the same module, in the same process
    assert survivor == workers["victim"]
    if mode == "bwrap":  # its own PID namespace: neither the victim, its template nor the server is there
        assert workers["victim"] not in attack["processes"]
        assert params["template"] not in attack["processes"]
        assert params["server"] not in attack["processes"]
        assert len(attack["processes"]) <= 3, attack["processes"]


SNOOP = """
import os
from starlette.responses import JSONResponse
from edgeruntime import serve


def attempt(path):
    try:
        with open(path, "rb") as f:
            return {"ok": True, "value": f.read(4096).decode("latin-1")}
    except OSError as exc:
        return {"ok": False, "error": type(exc).__name__}


@serve
async def handler(req):
    template = os.getppid()
    return JSONResponse({
        "cmdline": attempt(f"/proc/{template}/cmdline"),
        "environ": attempt(f"/proc/{template}/environ"),
        "mem": attempt(f"/proc/{template}/mem"),
    })
"""


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["bwrap", "uid", "basic"])
def test_a_worker_cannot_read_the_template_it_was_forked_from(project: Path, mode: str) -> None:
    prefix = server_prefix(mode)
    functions = project / "functions"
    write_function(functions, "snoop", SNOOP)
    options = ("--no-watch", "--no-verify-jwt", "--isolation", "process", "--sandbox", mode)
    with ServerProcess(functions, *options, prefix=prefix) as server, httpx.Client(timeout=30) as http:
        r = http.get(server.url("snoop"))
        assert r.status_code == 200, server.output
        snooped = r.json()
        assert worker_processes(server.proc.pid)["snoop"] != template_processes(server.proc.pid)["snoop"]
        assert shut_down(server) == 0
    assert snooped["cmdline"]["ok"] and "edgeruntime.workers.process.template" in snooped["cmdline"]["value"]
    assert snooped["environ"] == {"ok": False, "error": "PermissionError"}  # non-dumpable, like a worker
    assert snooped["mem"] == {"ok": False, "error": "PermissionError"}


# -- what functions still do -----------------------------------------------------------------


class _Pong(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"pong"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def outbound() -> Iterator[str]:
    """A loopback HTTP server a function calls out to (a third-party API)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pong)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ping"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


async def _jobs(url: str) -> list[tuple[int, str]]:
    store = open_store(url)
    try:
        return [(job.id, job.function) for job in await store.jobs()]
    finally:
        await store.close()


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["bwrap", "uid", "basic", "none"])
def test_functions_still_work_and_stay_within_their_limits(project: Path, mode: str, outbound: str) -> None:
    prefix = server_prefix(mode)
    functions = project / "functions"
    write_function(functions, "works", WORKS)
    (functions / "works" / "data.txt").write_text("own file")
    (functions / "_shared").mkdir()
    (functions / "_shared" / "greeting.py").write_text('GREETING = "from _shared"\n')
    (functions / ".env").write_text("FROM_DOT_ENV=dotenv-value\n")
    write_function(functions, "probe", PROBE)
    write_function(functions, "hello", HELLO)
    config = project / "config.toml"
    config.write_text(
        '[auth]\njwt_secret = "a-jwt-secret-only-the-server-reads-0123456789"\n'
        "[functions.probe]\ncpu_soft_limit_ms = 100\ncpu_hard_limit_ms = 200\nmemory_limit_mb = 64\n"
    )
    if mode == "uid":
        write_function(functions, "closed", HELLO)
        (functions / "closed").chmod(0o700)
    store = project / ".edgeruntime"
    options = ("--no-watch", "--no-verify-jwt", "--isolation", "process", "--sandbox", mode)
    with ServerProcess(functions, *options, prefix=prefix) as server, httpx.Client(timeout=60) as http:
        r = http.get(server.url("works"), params={"url": outbound, "store": str(store), "config": str(config)})
        assert r.status_code == 200, server.output
        works = r.json()
        boot = http.get(server.url("probe")).json()["boot"]
        template = template_processes(server.proc.pid)["probe"]
        assert http.get(server.url("probe"), params={"spin": 1}).status_code == 546  # CPU hard limit
        after_cpu = http.get(server.url("probe")).json()["boot"]
        assert http.get(server.url("probe"), params={"hog": 60}).status_code == 546  # memory limit
        after_memory = http.get(server.url("probe")).json()["boot"]
        crash = http.get(server.url("probe"), params={"exit": 1})
        assert (crash.status_code, crash.json()["code"]) == (500, "WORKER_ERROR")
        after_crash = http.get(server.url("probe")).json()["boot"]
        assert template_processes(server.proc.pid)["probe"] == template  # each fresh worker forked from it
        assert http.get(server.url("hello")).status_code == 200
        closed = http.get(server.url("closed")) if mode == "uid" else None
        assert shut_down(server) == 0
    assert f"sandbox {mode})" in server.output  # the start-up line says which sandbox
    assert "worker processes: sandbox " in server.output
    assert len({boot, after_cpu, after_memory, after_crash}) == 4  # each end booted a fresh worker
    assert "CPU time hard limit reached" in server.output
    assert "memory limit reached" in server.output
    assert "exited unexpectedly" in server.output
    assert works["own"] == "own file"
    assert works["shared"] == "from _shared"
    assert works["tmp"] == "scratch"
    assert works["outbound"] == "pong"
    assert works["dotenv"] == "dotenv-value"
    assert works["bad_name"] == "enqueue: 'not a name!' is not a function name"  # the server's answer
    assert works["bad_payload"].startswith("enqueue('works'): payload is not JSON-serialisable")
    assert "works: a line from the function" in server.output
    assert asyncio.run(_jobs(f"sqlite:///{store / 'edgeruntime.db'}")) == [(works["job"], "works")]
    if mode in ("bwrap", "uid"):
        assert not works["write_own_dir"]["ok"]  # read-only view / another uid's directory
        assert not (functions / "works" / "new.txt").exists()
    if mode == "bwrap":  # other functions, the jobs store and config.toml are hidden
        assert not works["other_function"]["ok"]
        assert works["store"] == {"ok": True, "value": []}
        assert works["config"].get("value", "") == ""  # unreadable, or empty
    if closed is not None:  # a function its uid cannot read: a clear boot error
        assert closed.status_code == 503
        assert "cannot read" in server.output and "chmod -R o+rX" in server.output


READABLE_STORE = "worker processes: sandbox uid: the jobs store"


@pytest.mark.parametrize("private", [False, True])
def test_under_uid_a_jobs_store_other_users_may_read_is_warned_of_once_with_the_chmod(
    project: Path, private: bool
) -> None:
    prefix = server_prefix("uid")
    functions = project / "functions"
    write_function(functions, "hello", HELLO)
    store = project / ".edgeruntime"
    if not private:  # as an older edgeruntime left it: 0755 and 0644 with the usual umask
        store.mkdir(mode=0o755)
        store.chmod(0o755)
        database = store / "edgeruntime.db"
        sqlite3.connect(database).close()
        database.chmod(0o644)
    options = ("--no-watch", "--no-verify-jwt", "--isolation", "process", "--sandbox", "uid")
    with ServerProcess(functions, *options, prefix=prefix) as server:
        assert httpx.get(server.url("hello"), timeout=60).status_code == 200
        assert shut_down(server) == 0
    warnings = [line for line in server.output.splitlines() if READABLE_STORE in line]
    if private:
        assert warnings == [], server.output
        assert (store.stat().st_mode & 0o777, (store / "edgeruntime.db").stat().st_mode & 0o777) == (0o700, 0o600)
    else:
        assert len(warnings) == 1, server.output
        assert f"{store} (mode 0755)" in warnings[0] and warnings[0].endswith(f"chmod 700 {store}"), server.output
        store.chmod(0o700)  # what the warning says closes it
        with ServerProcess(functions, *options, prefix=prefix) as server:
            assert shut_down(server) == 0
        assert READABLE_STORE not in server.output, server.output


# -- the server's environment ----------------------------------------------------------------

ENV_PROBE = """
from starlette.responses import JSONResponse
from edgeruntime import Deno, serve


@serve
async def handler(req):
    return JSONResponse(Deno.env.to_object())
"""


@pytest.mark.parametrize("mode", ["bwrap", "basic", "none"])
async def test_a_worker_gets_its_function_env_not_the_servers(functions_dir: Path, mode: str) -> None:
    if mode == "bwrap" and BWRAP is None:
        unavailable(NO_BWRAP)
    write_function(functions_dir, "env", ENV_PROBE)
    (functions_dir / ".env").write_text("FROM_DOT_ENV=dotenv-value\n")
    (functions_dir.parent / "config.toml").write_text(
        '[edge_runtime.secrets]\nFORWARDED = "env(FORWARD_ME)"\nLITERAL = "literal-value"\n'
    )
    environ = {
        **os.environ,
        "SERVER_ONLY_SECRET": "server-only-value",
        "FORWARD_ME": "forwarded-value",
        "SUPABASE_URL": "http://127.0.0.1:9/elsewhere",
    }
    async with EdgeClient(functions_dir, isolation="process", sandbox=mode, environ=environ) as client:
        r = await client.invoke("env")
        assert r.status_code == 200, r.text
        deno = r.json()
        worker = client.app.functions["env"].worker
        assert isinstance(worker, ProcessWorker)
        try:  # what the worker was started with (its own /proc files are root's: it is non-dumpable)
            environ_file = Path(f"/proc/{worker.pid}/environ")
            exec_environ: str | None = environ_file.read_bytes().decode("latin-1")  # noqa: ASYNC240 (procfs)
        except PermissionError:  # not root: the server may not read it either
            exec_environ = None
    assert deno["FROM_DOT_ENV"] == "dotenv-value"
    assert deno["FORWARDED"] == "forwarded-value"
    assert deno["LITERAL"] == "literal-value"
    assert deno["SUPABASE_URL"] == "http://127.0.0.1:9/elsewhere"
    assert deno["SUPABASE_SERVICE_ROLE_KEY"] == client.settings.keys.service_role_key
    assert "PATH" in deno
    assert "EDGERUNTIME_DATABASE_URL" not in deno  # the store is the server's, whatever the sandbox
    if mode == "none":  # no sandbox: the server's environment, as before
        assert deno["SERVER_ONLY_SECRET"] == "server-only-value"
        return
    assert "SERVER_ONLY_SECRET" not in deno
    assert "FORWARD_ME" not in deno
    if exec_environ is not None:  # the function's env came over the channel, not through exec
        assert "PATH=" in exec_environ
        for secret in ("dotenv-value", "forwarded-value", client.settings.keys.service_role_key):
            assert secret not in exec_environ


# -- the channel -----------------------------------------------------------------------------

EVIL = """
import os
import pickle
import sys
from starlette.responses import PlainTextResponse
from edgeruntime import Deno, serve


class Evil:
    def __reduce__(self):
        return (exec, (f"open({Deno.env.get('MARKER')!r}, 'w').write('ran in the server')",))


@serve
async def handler(req):
    if "huge" in req.query_params:  # a frame that claims 4 GB: the server must not wait to buffer it
        data = (2**32 - 1).to_bytes(4, "big") + b"x" * 65536
    else:
        frame = pickle.dumps([("task", 1, Evil(), "x")])  # a batch of one frame
        data = len(frame).to_bytes(4, "big") + frame
    os.write(int(sys.argv[1]), data)  # the worker's end of the channel
    return PlainTextResponse("sent")
"""


async def test_a_frame_that_would_run_code_in_the_server_is_refused(
    functions_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "marker"
    write_function(functions_dir, "evil", EVIL)
    write_function(functions_dir, "hello", HELLO)
    (functions_dir / ".env").write_text(f"MARKER={marker}\n")
    async with EdgeClient(functions_dir, isolation="process") as client:
        r = await client.invoke("evil")
        assert (await client.invoke("hello")).status_code == 200
        huge = await client.invoke("evil", params={"huge": "1"})
        await asyncio.sleep(0.2)
    assert not marker.exists()
    assert r.status_code == 500 and r.json()["code"] == "WORKER_ERROR"
    assert "a worker frame may not hold builtins.exec" in caplog.text
    assert huge.status_code == 500 and huge.json()["code"] == "WORKER_ERROR"
    assert "the other end sent a 4294967295-byte batch (at most " in caplog.text


def test_worker_frames_hold_plain_data_and_builtin_exceptions_only() -> None:
    frame = ("task_done", 1, "failed", ValueError("boom"), None, {"b": [b"x", 1.5, None, True]})
    loaded = load_worker_frame(pickle.dumps(frame))
    assert loaded[:3] == frame[:3] and loaded[4:] == frame[4:]
    assert type(loaded[3]) is ValueError and loaded[3].args == ("boom",)
    for refused in (os.system, Path("/"), ConfigError("x"), type):
        with pytest.raises(pickle.UnpicklingError):
            load_worker_frame(pickle.dumps(("send", 1, refused)))


# -- config and resolution -------------------------------------------------------------------


def test_sandbox_keys_in_config_toml(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[edge_runtime]\nsandbox = "bwrap"\nworker_uid_range = [200000, 200999]\n')
    config = load_config(path)
    assert (config.sandbox, config.worker_uid_range) == ("bwrap", (200000, 200999))
    assert load_config(None).sandbox == "auto"


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('sandbox = "docker"', "[edge_runtime] sandbox", "auto, bwrap, uid, basic, none"),
        ("sandbox = true", "[edge_runtime] sandbox", "expected a string"),
        ("worker_uid_range = [5, 1]", "[edge_runtime] worker_uid_range", "1 <= first <= last"),
        ("worker_uid_range = [0, 10]", "[edge_runtime] worker_uid_range", "1 <= first <= last"),
        ('worker_uid_range = "1-10"', "[edge_runtime] worker_uid_range", "[first, last]"),
        ("worker_uid_range = [1, 2, 3]", "[edge_runtime] worker_uid_range", "[first, last]"),
    ],
)
def test_bad_sandbox_config_is_one_line_naming_file_and_key(tmp_path: Path, text: str, key: str, expected: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"[edge_runtime]\n{text}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: ") and expected in message
    assert "\n" not in message


def test_bwrap_asked_for_but_missing_exits_2_naming_the_install_command(hello_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    args = ("serve", str(hello_dir), "--port", str(free_port()), "--isolation", "process", "--no-watch")
    result = run_cli(*args, "--sandbox", "bwrap", env={"PATH": str(empty)})
    assert result.returncode == 2
    assert result.stderr == (
        "edgeruntime: error: --sandbox: bubblewrap (bwrap) is not installed; install it: apt-get install bubblewrap\n"
    )
    config = hello_dir.parent / "config.toml"
    config.write_text('[edge_runtime]\nisolation = "process"\nsandbox = "bwrap"\n')
    result = run_cli("serve", str(hello_dir), "--port", str(free_port()), "--no-watch", env={"PATH": str(empty)})
    assert result.returncode == 2
    assert result.stderr.startswith(f"edgeruntime: error: {config}: [edge_runtime] sandbox: bubblewrap (bwrap)")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_auto_takes_the_strongest_mode_that_works_and_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    chosen = resolve_sandbox("auto")
    assert chosen.mode == "basic"
    assert chosen.warning is not None and "apt-get install bubblewrap" in chosen.warning
    with pytest.raises(ConfigError, match=r"^--sandbox: 'uid' needs the server to run as root$"):
        resolve_sandbox("uid", origin="--sandbox")
    # As root, where the uids of the range do not exist (a container's user namespace):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    uid_map = tmp_path / "uid_map"
    uid_map.write_text("         0          0      65536\n")
    monkeypatch.setattr(sandbox_module, "UID_MAP", uid_map)
    with pytest.raises(ConfigError, match=r"^x.toml: \[edge_runtime\] worker_uid_range: uids 1879048192-1879113727"):
        resolve_sandbox("uid", uid_origin="x.toml: [edge_runtime] worker_uid_range")
    fallback = resolve_sandbox("auto")
    assert fallback.mode == "basic"
    assert fallback.warning is not None and "NOT isolated" in fallback.warning
    assert resolve_sandbox("basic").warning == (
        "the server runs as root, which reads any worker's memory: basic protects nothing"
    )
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match=r"^--sandbox: 'uid': other uids cannot read /"):
        resolve_sandbox("uid", (1000, 1999), origin="--sandbox", functions_dir=closed)


def test_each_function_gets_its_own_uid_the_same_in_every_server(tmp_path: Path) -> None:
    small = WorkerLauncher(Sandbox("uid", uid_range=(5000, 5002)), tmp_path)
    uids = [small.uid_for(name) for name in ("a", "b", "c")]
    assert sorted(uids) == [5000, 5001, 5002]  # type: ignore[type-var]
    assert small.uid_for("b") == uids[1]
    with pytest.raises(ConfigError, match="all 3 uids are taken"):
        small.uid_for("d")
    first = WorkerLauncher(Sandbox("uid", uid_range=(100_000, 165_535)), tmp_path)
    second = WorkerLauncher(Sandbox("uid", uid_range=(100_000, 165_535)), tmp_path)
    assert first.uid_for("send-email") == second.uid_for("send-email")
    assert WorkerLauncher(Sandbox("basic"), tmp_path).uid_for("send-email") is None


def test_settings_withhold_the_server_environment_only_under_process_isolation(functions_dir: Path) -> None:
    environ = {"PATH": "/usr/bin", "LC_ALL": "C.UTF-8", "SERVER_ONLY_SECRET": "x", "SUPABASE_URL": "http://h"}
    process = Settings.build(functions_dir, environ=environ, isolation="process")
    assert "SERVER_ONLY_SECRET" in process.env
    assert "SERVER_ONLY_SECRET" not in process.isolated_env
    assert {k: process.isolated_env[k] for k in ("PATH", "LC_ALL", "SUPABASE_URL")} == {
        "PATH": "/usr/bin",
        "LC_ALL": "C.UTF-8",
        "SUPABASE_URL": "http://h",
    }
    assert function_env(process, Sandbox("basic")) is process.isolated_env
    assert function_env(process, Sandbox("none")) is process.env
    with pytest.raises(ConfigError, match=r"^--sandbox: expected one of auto, bwrap, uid, basic, none, got 'jail'$"):
        Settings.build(functions_dir, environ=environ, isolation="process", sandbox="jail")
