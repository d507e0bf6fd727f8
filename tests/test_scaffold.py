"""`edgeruntime new`: the basic template, and the job template run against a PostgREST stand-in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from edgeruntime.config.keys import PUBLISHABLE_KEY
from edgeruntime.exceptions import UsageError
from edgeruntime.serving.cli import main
from edgeruntime.serving.scaffold import TEMPLATES, create_function
from edgeruntime.testing import EdgeClient
from tests.helpers import KEYS, ServerProcess, run_cli

# supabase-py (used by the job template) passes its own deprecated arguments to its sub-clients.
pytestmark = pytest.mark.filterwarnings("ignore:The '(timeout|verify)' parameter is deprecated:DeprecationWarning")

ROWS = [{"id": 1, "some_condition": True}, {"id": 2, "some_condition": True}]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakePostgrest:
    """Answers the job template's two queries as PostgREST would; records every request."""

    url: str
    requests: list[Recorded] = field(default_factory=list)
    fail_select: bool = False


@pytest.fixture
def postgrest() -> Iterator[FakePostgrest]:
    state: FakePostgrest

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> Recorded:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            entry = Recorded(
                self.command,
                self.path,
                {k.lower(): v for k, v in self.headers.items()},
                json.loads(raw) if raw else None,
            )
            state.requests.append(entry)
            return entry

        def do_GET(self) -> None:
            entry = self._record()
            if entry.path.startswith("/rest/v1/your_table?") and not state.fail_select:
                self._reply(200, ROWS)
            else:
                self._reply(404, {"code": "42P01", "message": 'relation "public.your_table" does not exist'})

        def do_POST(self) -> None:
            entry = self._record()
            if entry.path.startswith("/rest/v1/audit_log"):
                self._reply(201, [{"id": 1, **entry.body}])
            else:
                self._reply(404, {"code": "42P01", "message": "relation does not exist"})

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = FakePostgrest(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_basic_template(functions_dir: Path) -> None:
    path = create_function(functions_dir, "hello-world")
    assert path == functions_dir / "hello-world" / "index.py"
    assert "serve(handler)" in path.read_text()
    with pytest.raises(UsageError, match="already exists"):
        create_function(functions_dir, "hello-world")
    with pytest.raises(UsageError, match="invalid function name '1x'"):
        create_function(functions_dir, "1x")
    with pytest.raises(UsageError, match="unknown template 'nope': expected one of basic, job"):
        create_function(functions_dir, "x", "nope")


@pytest.mark.parametrize(
    ("directory", "reason"),
    [
        ("afile", "{tmp}/afile is a file, not a functions directory"),
        ("afile/sub", "cannot create {tmp}/afile/sub/z/index.py: {tmp}/afile/sub/z: Not a directory"),
        ("fns", "cannot create {tmp}/fns/z/index.py: {tmp}/fns/z: File exists"),  # fns/z is a file
    ],
)
def test_new_where_a_file_is_in_the_way_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], directory: str, reason: str
) -> None:
    (tmp_path / "afile").write_text("")
    (tmp_path / "fns").mkdir()
    (tmp_path / "fns" / "z").write_text("")
    assert main(["new", "z", "--dir", str(tmp_path / directory)]) == 2
    assert capsys.readouterr().err == f"edgeruntime: error: {reason.format(tmp=tmp_path)}\n"


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_templates_compile_and_are_lint_clean(functions_dir: Path, template: str) -> None:
    path = create_function(functions_dir, f"t-{template}", template)
    compile(path.read_text(), str(path), "exec")
    ruff = [sys.executable, "-m", "ruff"]
    lint = subprocess.run(
        [*ruff, "check", "--isolated", "--select", "E,F,B,UP,W", "--line-length", "120", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert lint.returncode == 0, lint.stdout
    fmt = subprocess.run(
        [*ruff, "format", "--isolated", "--line-length", "120", "--check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert fmt.returncode == 0, fmt.stdout


def new_job(functions_dir: Path, name: str = "my-new-job") -> Path:
    result = run_cli("new", name, "--template", "job", "--dir", str(functions_dir))
    assert result.returncode == 0, result.stderr
    assert f"Created {functions_dir / name / 'index.py'}" in result.stdout
    return functions_dir / name


def job_environ(postgrest: FakePostgrest, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE_", "JOB_API_KEY", "LOVABLE_"))}
    return {**base, "SUPABASE_URL": postgrest.url, **extra}


async def test_job_template_end_to_end_in_process(functions_dir: Path, postgrest: FakePostgrest) -> None:
    new_job(functions_dir)
    async with EdgeClient(functions_dir, environ=job_environ(postgrest)) as client:
        # The preflight needs no key, and answers with the CORS headers and no body.
        r = await client.invoke("my-new-job", method="OPTIONS", auth=None)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "*"
        assert r.headers["access-control-allow-headers"] == "authorization, x-client-info, apikey, content-type"
        assert r.content == b""

        # A bad key never reaches the function: the gateway's verify_jwt answers.
        r = await client.invoke("my-new-job", auth=None, headers={"Authorization": "Bearer not-a-key"})
        assert r.status_code == 401
        assert r.json() == {"msg": "Invalid JWT"}
        assert postgrest.requests == []

        # The guide's Local Testing call: the anon key and a JSON body.
        r = await client.invoke("my-new-job", auth="anon", json={"executedAt": "2025-01-15T10:00:00Z"})
        assert r.status_code == 200, r.text
        assert r.json() == {"success": True, "results": [{"id": 1, "processed": True}, {"id": 2, "processed": True}]}
        assert r.headers["access-control-allow-origin"] == "*"
        assert r.headers["content-type"] == "application/json"

    select, insert = postgrest.requests
    assert select.method == "GET"
    assert select.path.startswith("/rest/v1/your_table?")
    assert "select=%2A" in select.path or "select=*" in select.path
    assert "some_condition=eq." in select.path
    # The function talks to Supabase with the service role key it was given.
    assert select.headers["authorization"] == f"Bearer {KEYS.service_role_key}"
    assert select.headers["apikey"] == KEYS.service_role_key
    assert insert.method == "POST" and insert.path.startswith("/rest/v1/audit_log")
    details = insert.body["details"]
    assert insert.body["action_type"] == "background_job_execution"
    assert insert.body["entity_type"] == "background_job"
    assert details["job_name"] == "my-new-job"
    assert details["status"] == "success"
    assert details["records_processed"] == 2
    assert details["executed_at"] == "2025-01-15T10:00:00Z"
    assert isinstance(details["execution_time_ms"], int)


async def test_job_template_checks_its_own_key(functions_dir: Path, postgrest: FakePostgrest) -> None:
    new_job(functions_dir)
    (functions_dir.parent / "config.toml").write_text("[functions.my-new-job]\nverify_jwt = false\n")
    environ = job_environ(postgrest, JOB_API_KEY="job-secret")
    async with EdgeClient(functions_dir, environ=environ) as client:
        # With verify_jwt off (the guide deploys with --no-verify-jwt), the function's own check answers.
        r = await client.invoke("my-new-job", auth=None)
        assert (r.status_code, r.text) == (401, "Unauthorized")
        assert r.headers["access-control-allow-origin"] == "*"
        r = await client.invoke("my-new-job", auth="anon")  # JOB_API_KEY is set: only it opens the door
        assert r.status_code == 401
        r = await client.invoke("my-new-job", auth=None, headers={"Authorization": "Bearer job-secret"})
        assert r.status_code == 200, r.text


async def test_job_template_reports_supabase_errors(functions_dir: Path, postgrest: FakePostgrest) -> None:
    new_job(functions_dir)
    postgrest.fail_select = True
    async with EdgeClient(functions_dir, environ=job_environ(postgrest)) as client:
        r = await client.invoke("my-new-job", auth="anon", headers={"apikey": PUBLISHABLE_KEY})
        assert r.status_code == 500
        body = r.json()
        assert body["success"] is False
        assert "does not exist" in body["error"]
        assert r.headers["access-control-allow-origin"] == "*"
    assert [req.method for req in postgrest.requests] == ["GET"]  # no audit row for a failed run


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl command")
def test_local_testing_flow_with_curl(tmp_path: Path, postgrest: FakePostgrest) -> None:
    """The guide's "Local Testing", translated: `edgeruntime new`, `edgeruntime serve`, then curl."""
    project = tmp_path / "project"
    project.mkdir()
    assert run_cli("new", "my-new-job", "--template", "job", cwd=project).returncode == 0
    anon = run_cli("keys", "--anon", cwd=project).stdout.strip()
    assert anon == KEYS.anon_key
    with ServerProcess(project / "functions", "--no-watch", env={"SUPABASE_URL": postgrest.url}) as server:
        result = subprocess.run(
            [
                "curl", "-i", "--silent", "--max-time", "30",
                "--location", "--request", "POST", f"http://localhost:{server.port}/functions/v1/my-new-job",
                "--header", f"Authorization: Bearer {anon}",
                "--header", "Content-Type: application/json",
                "--data", '{"executedAt": "2025-01-15T10:00:00Z"}',
            ],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        server.terminate()
    head, _, body = result.stdout.replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/1.1 200"), result.stdout + server.output
    assert "access-control-allow-origin: *" in head.lower()
    assert json.loads(body)["success"] is True
    assert [r.method for r in postgrest.requests] == ["GET", "POST"]
    assert "[Job] Starting my-new-job execution" in server.output
