"""The Dockerfile and .dockerignore: their shape, and the image's install and start steps replayed in a venv."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.image import (
    DOCKERFILE,
    REPO,
    Dockerfile,
    Instruction,
    ReplayError,
    build_context,
    replay,
)
from tests.deploy.tools import REQUIRE, missing
from tests.helpers import ANON, free_port

# The commands of RUN steps the replay runs: installing Python packages, in the stage's venv.
REPLAYED = {"python", "pip", "set"}
# The commands of RUN steps it leaves to Docker: they create the image's user, which needs root and
# a throwaway system. A RUN with any other command (apt-get, ...) fails the test: teach the replay.
USER_SETUP = {"groupadd", "useradd", "mkdir", "chown"}


def _option(args: tuple[str, ...] | list[str], name: str) -> str:
    return args[args.index(name) + 1]


def _commands(run: Instruction) -> list[str]:
    return [part.split()[0] for part in re.split(r"&&|;|\|\|", run.args[0]) if part.split()]


def _is_install_step(run: Instruction) -> bool:
    return set(_commands(run)) <= REPLAYED


def test_no_instruction_takes_a_comment_as_arguments() -> None:
    # The deployment guide's old snippet had `COPY src dest   # ...`: Docker's parser keeps `#` and
    # the words after it as more paths, and the build fails.
    broken = Dockerfile.parse_string("FROM python:3.12-slim\nCOPY src /src/app        # a checkout\n")
    assert "#" in broken.stages[0].instructions[0].args
    parsed = Dockerfile.parse()
    for instruction in parsed.instructions:
        assert not any(arg.startswith("#") for arg in instruction.args), f"line {instruction.line}: {instruction}"


def test_a_slim_runtime_stage_installs_the_wheel_the_builder_stage_builds() -> None:
    parsed = Dockerfile.parse()
    assert len(parsed.stages) >= 2
    builder, final = parsed.stages[0], parsed.final
    assert builder.name is not None
    assert any("python -m build" in run.args[0] for run in builder.all("RUN"))
    copies = [c for c in final.all("COPY") if c.flag("from") == builder.name]
    assert copies, "the runtime stage copies nothing from the builder"
    assert final.base.split(":")[-1].endswith("-slim"), final.base
    # Only the built wheel reaches the runtime stage, not the builder's sources or tools.
    assert not any(c.args[0] == "edgeruntime" for c in final.all("COPY"))
    args = dict(a.args[0].split("=", 1) for a in final.all("ARG") if "=" in a.args[0])
    # Uvicorn (the default server) comes with the package; Postgres is what several containers share.
    assert "postgres" in args["EXTRAS"].split(",")
    assert any("pip install" in run.args[0] and "${EXTRAS}" in run.args[0] for run in final.all("RUN"))


def test_the_image_runs_as_a_user_that_cannot_change_its_code() -> None:
    final = Dockerfile.parse().final
    user = final.last("USER")
    assert user is not None, "the image would run as root"
    uid, _, gid = user.args[0].partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) >= 1000, user
    assert gid == "" or gid.isdigit()
    # COPY makes root the owner whatever USER says, unless told otherwise: the server cannot
    # rewrite the functions it serves.
    for copy in final.all("COPY"):
        assert copy.flag("chown") is None and copy.flag("chmod") is None, f"line {copy.line}: {copy}"
    setup = " ".join(run.args[0] for run in final.all("RUN"))
    # The server owns only the SQLite store's directory.
    assert re.search(r"chown \S+ /app/\.edgeruntime(\s|$)", setup), setup
    assert "chown -R" not in setup


def test_cmd_healthcheck_and_expose_agree() -> None:
    final = Dockerfile.parse().final
    cmd, health, expose = final.last("CMD"), final.last("HEALTHCHECK"), final.last("EXPOSE")
    assert cmd is not None and health is not None and expose is not None
    assert final.last("ENTRYPOINT") is None
    # Exec form: the server itself is PID 1 and receives `docker stop`'s SIGTERM (a shell would not pass it on).
    assert cmd.json
    assert cmd.args[:3] == ("edgeruntime", "serve", "/app/functions")
    assert _option(cmd.args, "--host") == "0.0.0.0"
    port = _option(cmd.args, "--port")
    assert expose.args == (port,)
    assert "--no-watch" in cmd.args
    # Every CPU the container may use, behind the one port.
    assert _option(cmd.args, "--workers") == "auto"
    assert health.json and health.args[0] == "CMD"
    assert re.search(rf"'http://127\.0\.0\.1:{port}/_internal/health'", " ".join(health.args)), health
    assert health.flag("timeout") is not None and health.flag("start-period") is not None
    stop = final.last("STOPSIGNAL")
    assert stop is None or stop.args == ("SIGTERM",)


def _project(root: Path) -> Path:
    files = {
        "pyproject.toml": "",
        "README.md": "",
        "config.toml": "",
        "edgeruntime/__init__.py": "",
        "edgeruntime/dashboard/static/index.html": "",
        "functions/hello/index.py": "",
        "functions/hello/helper.py": "",
        "functions/.env.example": "KEY=\n",
        # What must never reach an image:
        ".env": "SUPABASE_SERVICE_ROLE_KEY=secret\n",
        "functions/.env": "STRIPE_SECRET_KEY=secret\n",
        "functions/hello/.env.local": "SECRET=1\n",
        "functions/.env.production": "SECRET=1\n",
        "production.env": "SECRET=1\n",
        "functions/hello/prod.env": "SECRET=1\n",
        ".edgeruntime/edgeruntime.db": "history",
        "functions/.edgeruntime/edgeruntime.db": "history",
        ".git/config": "",
        ".venv/bin/python": "",
        "functions/hello/__pycache__/index.cpython-311.pyc": "",
        "edgeruntime/app.pyc": "",
        "tests/test_app.py": "",
        "benchmarks/peers.py": "",
        "docs/deployment.md": "",
        "dist/edgeruntime-0.1.0-py3-none-any.whl": "",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    shutil.copy(REPO / ".dockerignore", root / ".dockerignore")
    shutil.copy(DOCKERFILE, root / "Dockerfile")
    return root


def test_dockerignore_keeps_secrets_local_state_and_tooling_out(tmp_path: Path) -> None:
    context = build_context(_project(tmp_path / "project"), tmp_path / "context")
    sent = {p.relative_to(context).as_posix() for p in context.rglob("*") if p.is_file()}
    assert sent == {
        ".dockerignore",
        "Dockerfile",
        "pyproject.toml",
        "README.md",
        "config.toml",
        "edgeruntime/__init__.py",
        "edgeruntime/dashboard/static/index.html",
        "functions/hello/index.py",
        "functions/hello/helper.py",
        "functions/.env.example",
    }


def test_the_build_context_holds_every_copy_source(tmp_path: Path) -> None:
    parsed = Dockerfile.parse()
    context = build_context(REPO, tmp_path / "context")
    for stage in parsed.stages:
        for copy in stage.all("COPY"):
            if copy.flag("from") is None:
                for source in copy.args[:-1]:
                    assert (context / source).exists(), f"line {copy.line}: {source} is not in the build context"
    assert not (context / ".venv").exists() and not (context / ".git").exists()
    assert (context / "edgeruntime" / "dashboard" / "static" / "index.html").exists()


def _pid1_prefix() -> list[str]:
    """`unshare` into a new PID namespace, so the server runs as PID 1 as in a container.

    A PID 1 that installed no handler ignores SIGTERM; running it there checks what `docker stop`
    meets. Needs root (CI); elsewhere the server runs as an ordinary process.
    """
    prefix = ["unshare", "--pid", "--fork", "--mount-proc", "--"]
    if shutil.which("unshare") is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0:
                return prefix
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"cannot run the server as PID 1: `unshare --pid` is not permitted ({REQUIRE}=1)")
    return []


def _server_pid(proc: subprocess.Popen[bytes], in_namespace: bool, deadline: float) -> int:
    """The server's pid: `proc` itself, or the child `unshare --fork` started."""
    if not in_namespace:
        return proc.pid
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            if children:
                return int(children[0])
        time.sleep(0.02)
    raise TimeoutError("unshare started no server")


@contextlib.contextmanager
def _reaped(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.mark.e2e
def test_the_images_install_and_start_steps_serve_and_stop_cleanly(tmp_path: Path) -> None:
    parsed = Dockerfile.parse()
    context = build_context(REPO, tmp_path / "context")
    try:
        stages = replay(parsed, context, tmp_path / "image", runs=_is_install_step)
    except ReplayError as exc:
        if "pip install" in exc.instruction.args[0] and "build==" in exc.instruction.args[0]:
            missing(f"`build` is not installable here (Dockerfile line {exc.instruction.line}): {exc}")
        raise
    builder, final = stages[0], stages[-1]
    assert any("python -m build" in run.args[0] for run in builder.ran)
    assert any("pip install" in run.args[0] for run in final.ran)
    for stage in stages:
        for run in stage.skipped:
            assert set(_commands(run)) <= USER_SETUP, f"line {run.line}: the replay can neither run nor skip it"
    # The package the image serves with is the wheel installed into its Python, not this checkout.
    where = subprocess.run(
        final.command(
            ["python", "-c", "import edgeruntime, uvicorn, uvloop, httptools, psycopg; print(edgeruntime.__file__)"]
        ),
        capture_output=True,
        text=True,
        env=final.run_env(),
        cwd=final.host("."),
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(final.venv), where.stdout

    cmd, health = parsed.final.last("CMD"), parsed.final.last("HEALTHCHECK")
    assert cmd is not None and health is not None
    image_port, port = _option(cmd.args, "--port"), free_port()
    argv = final.command(cmd.args)
    # Tests bind loopback only: the image's 0.0.0.0 becomes 127.0.0.1, its port a free one.
    argv[argv.index("--host") + 1] = "127.0.0.1"
    argv[argv.index("--port") + 1] = str(port)
    assert argv[2] == str(final.host("/app/functions"))
    check = final.command(a.replace(f"127.0.0.1:{image_port}/", f"127.0.0.1:{port}/") for a in health.args[1:])
    check_timeout = float((health.flag("timeout") or "30s").rstrip("s"))

    def healthcheck() -> int:
        env, cwd = final.run_env(), final.host(".")
        return subprocess.run(check, capture_output=True, env=env, cwd=cwd, timeout=check_timeout).returncode

    assert healthcheck() != 0, "the health check passes with no server"

    prefix = _pid1_prefix()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*prefix, *argv], cwd=final.host("."), env=final.run_env(), stdout=log, stderr=subprocess.STDOUT
        )
    with _reaped(proc):
        deadline = time.monotonic() + 60
        pid = _server_pid(proc, bool(prefix), deadline)
        ready = False
        while not ready and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"http://127.0.0.1:{port}/_internal/health", timeout=2).status_code == 200
            if not ready:
                time.sleep(0.1)
        assert ready, log_path.read_text()
        assert healthcheck() == 0, log_path.read_text()
        hello = httpx.get(f"http://127.0.0.1:{port}/functions/v1/hello", headers=ANON, timeout=30)
        assert hello.status_code == 200, hello.text
        assert hello.json()["message"] == "Hello from edgeruntime!"
        # The banner comes once every serving process accepts connections (one may answer before).
        while "Using edgeruntime" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)

        os.kill(pid, signal.SIGTERM)
        assert proc.wait(45) == 0, log_path.read_text()
    lines = [line for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert lines and all("level" in json.loads(line) for line in lines), log_path.read_text()
    # `--workers auto`: a serving process per CPU this machine lets it use, on the default server.
    cpus = len(os.sched_getaffinity(0))
    banner = [json.loads(line)["message"] for line in lines if "Using edgeruntime" in line]
    processes = f"{cpus} serving process{'es' if cpus > 1 else ''}"
    assert banner and f"(server uvicorn, {processes}," in banner[0], log_path.read_text()
