"""`edgeruntime jobs ...` and `edgeruntime cron ...`, and `serve` refusing a bad schedule."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

import pytest

from edgeruntime.jobs.backends import open_store
from edgeruntime.jobs.store import Outcome, TickStatus
from edgeruntime.testing import EdgeClient
from tests.helpers import free_port, run_cli, write_function
from tests.jobs.file_modes import run_bound_by_file_modes
from tests.jobs.test_queue import ALWAYS_FAILS, FLAKY

ECHO = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve

async def handler(req: Request) -> JSONResponse:
    return JSONResponse({"cron": req.headers.get("x-edgeruntime-cron"), "body": await req.json()})

serve(handler)
"""


@pytest.fixture
def project(functions_dir: Path) -> Path:
    write_function(functions_dir, "target", ALWAYS_FAILS)
    write_function(functions_dir, "echo", ECHO)
    (functions_dir.parent / "config.toml").write_text(
        '[cron.nightly]\nfunction = "echo"\nschedule = "@daily"\ntimezone = "Europe/Berlin"\n'
        'body = { kind = "nightly" }\n',
        encoding="utf-8",
    )
    return functions_dir


async def test_failed_job_retried_from_the_cli_succeeds(project: Path, store_url: str) -> None:
    async with EdgeClient(project, database_url=store_url) as client:
        await client.jobs.queue.enqueue("target", {"order": 42}, max_attempts=2)
        assert [r.status for r in await client.run_jobs()] == ["retrying", "failed"]

    failed = await asyncio.to_thread(run_cli, "jobs", "failed", "--database-url", store_url, "--json")
    assert failed.returncode == 0, failed.stderr
    [entry] = json.loads(failed.stdout)
    assert (entry["function"], entry["payload"], entry["attempts"], entry["http_status"]) == (
        "target",
        '{"order":42}',
        2,
        500,
    )
    assert entry["error"] == "HTTP 500: Internal Server Error"

    table = await asyncio.to_thread(run_cli, "jobs", "failed", "--database-url", store_url)
    assert "target" in table.stdout and "HTTP 500" in table.stdout

    write_function(project, "target", FLAKY)  # the bug is fixed
    retry = await asyncio.to_thread(run_cli, "jobs", "retry", str(entry["id"]), "--database-url", store_url)
    assert retry.returncode == 0, retry.stderr
    assert f"queued failed job {entry['id']} again as job" in retry.stdout

    async with EdgeClient(project, database_url=store_url) as client:
        [result] = await client.run_jobs()
        assert (result.status, result.attempt) == ("succeeded", 1)

    listed = await asyncio.to_thread(run_cli, "jobs", "list", "--database-url", store_url, "--json")
    assert sorted(j["status"] for j in json.loads(listed.stdout)) == ["failed", "succeeded"]


def test_retry_unknown_id_is_one_line_exit_2(project: Path) -> None:
    r = run_cli("jobs", "retry", "999", "-d", str(project))
    assert r.returncode == 2
    assert r.stderr.strip() == "edgeruntime: error: no failed job 999 (see `edgeruntime jobs failed`)"


def test_jobs_list_uses_the_default_store_beside_the_functions_dir(project: Path) -> None:
    async def enqueue() -> None:
        store = open_store(None, project)
        await store.migrate()
        await store.enqueue("echo", "{}", run_at=0, max_attempts=1, idempotency_key=None, now=0)
        await store.close()

    asyncio.run(enqueue())
    assert (project.parent / ".edgeruntime" / "edgeruntime.db").is_file()
    r = run_cli("jobs", "list", "-d", str(project), "--status", "queued")
    assert r.returncode == 0, r.stderr
    assert "echo" in r.stdout and "queued" in r.stdout
    positional = run_cli("jobs", "list", str(project), "--json")
    assert [j["function"] for j in json.loads(positional.stdout)] == ["echo"]


def test_cron_list_and_run(project: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    listed = run_cli("cron", "list", "-d", str(project), "--database-url", url, "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["name"], row["function"], row["schedule"], row["timezone"]) == (
        "nightly",
        "echo",
        "@daily",
        "Europe/Berlin",
    )
    assert row["next"].endswith(("T23:00:00.000Z", "T22:00:00.000Z")) and row["last"] is None

    ran = run_cli("cron", "run", "nightly", "-d", str(project), "--database-url", url)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("cron nightly: succeeded (HTTP 200)")
    body = json.loads(ran.stdout.splitlines()[1])
    assert body["cron"] == "nightly" and body["body"]["kind"] == "nightly" and "executedAt" in body["body"]

    listed = run_cli("cron", "list", "-d", str(project), "--database-url", url, "--json")
    assert json.loads(listed.stdout)[0]["last"].endswith("succeeded")

    unknown = run_cli("cron", "run", "nope", "-d", str(project), "--database-url", url)
    assert unknown.returncode == 2
    assert unknown.stderr.strip().startswith("edgeruntime: error: no cron job 'nope'")


ENV_PROBE = """
import os
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import Deno, serve

async def handler(req: Request) -> JSONResponse:
    names = ("FROM_DOTENV", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY")
    return JSONResponse({"os": {n: os.environ.get(n) for n in names}, "deno": {n: Deno.env.get(n) for n in names}})

serve(handler)
"""


async def test_cron_run_and_trigger_cron_run_the_function_with_the_servers_env(functions_dir: Path) -> None:
    """A cron job that reads os.environ succeeds on schedule; run by hand it must see the same env."""
    write_function(functions_dir, "envcheck", ENV_PROBE)
    (functions_dir / ".env").write_text("FROM_DOTENV=from the functions' .env\n", encoding="utf-8")
    (functions_dir.parent / "config.toml").write_text(
        '[cron.env]\nfunction = "envcheck"\nschedule = "@daily"\n', encoding="utf-8"
    )
    url = f"sqlite:///{functions_dir.parent / 'jobs.db'}"
    ran = await asyncio.to_thread(run_cli, "cron", "run", "env", "-d", str(functions_dir), "--database-url", url)
    assert ran.returncode == 0, ran.stderr
    by_cli = json.loads(ran.stdout.splitlines()[1])
    async with EdgeClient(functions_dir) as client:
        by_client = (await client.trigger_cron("env")).json()
    assert by_cli["os"]["FROM_DOTENV"] == "from the functions' .env"
    assert by_cli["os"] == by_cli["deno"]
    assert by_client["os"] == by_client["deno"] == by_cli["deno"]


SLEEPS = """
import asyncio
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve

async def handler(req: Request) -> JSONResponse:
    await asyncio.sleep((await req.json())["sleep"])
    return JSONResponse({"slept": True})

serve(handler)
"""


async def test_cron_run_renews_its_tick_lease_while_the_function_runs(functions_dir: Path) -> None:
    """A manual run longer than `[jobs] lease_sec` keeps its tick running: a serving instance's poll
    (it ends ticks whose lease ran out) leaves it alone, and overlap = "skip" still sees it."""
    write_function(functions_dir, "sleeps", SLEEPS)
    lease, sleep = 2.0, 5.0
    (functions_dir.parent / "config.toml").write_text(
        f"[jobs]\nlease_sec = {lease}\n\n"
        f'[cron.long]\nfunction = "sleeps"\nschedule = "@daily"\nbody = {{ sleep = {sleep} }}\n',
        encoding="utf-8",
    )
    url = f"sqlite:///{functions_dir.parent / 'jobs.db'}"
    store = open_store(url)
    await store.migrate()
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "edgeruntime", "cron", "run", "long", "-d", str(functions_dir), "--database-url", url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    # The tick's status at a serving instance's polls, past its first lease and before the run ends.
    past_the_lease: list[str] = []
    try:
        for _ in range(600):  # 60 s at most
            if proc.returncode is not None:
                break
            now = time.time()
            assert await store.claim("serving", 10, now=now, lease_sec=30) == []  # a serving instance's poll
            ticks = await store.ticks("long")
            run = ticks[-1] if ticks else None  # the first: the run's (the ones skipped below come after)
            if run is not None and run.started_at + lease + 0.5 < now < run.started_at + sleep - 0.5:
                past_the_lease.append(str(run.status))
                if run.status is TickStatus.RUNNING:
                    skipped = await store.claim_tick(
                        "long",
                        f"serving:{len(past_the_lease)}",
                        scheduled_for=now,
                        trigger="manual",
                        instance="serving",
                        now=now,
                        lease_sec=30,
                        skip_overlap=True,
                    )
                    assert skipped is not None and skipped.status is TickStatus.SKIPPED, "the run counts as going"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.1)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
        await store.close()
    assert proc.returncode == 0, err.decode()
    assert out.decode().startswith("cron long: succeeded (HTTP 200)")
    assert past_the_lease and set(past_the_lease) == {"running"}, past_the_lease


@pytest.mark.parametrize(
    ("schedule", "line"),
    [
        ('"0 10 * * 8"', "[cron.broken] schedule = '0 10 * * 8': Bad day-of-week"),
        ('"0 10 * * *"\ntimezone = "Nowhere/City"', "[cron.broken] timezone = 'Nowhere/City'"),
    ],
)
def test_serve_with_invalid_schedule_exits_2_with_one_line(functions_dir: Path, schedule: str, line: str) -> None:
    write_function(functions_dir, "echo", ECHO)
    (functions_dir.parent / "config.toml").write_text(
        f'[cron.broken]\nfunction = "echo"\nschedule = {schedule}\n', encoding="utf-8"
    )
    r = run_cli("serve", str(functions_dir), "--port", str(free_port()), "--no-watch")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith(f"edgeruntime: error: {line}")
    assert "Traceback" not in r.stderr + r.stdout


def test_serve_with_a_database_that_cannot_be_opened_exits_2_before_listening(
    functions_dir: Path, tmp_path: Path
) -> None:
    write_function(functions_dir, "echo", ECHO)
    (tmp_path / "file").write_text("")
    url = f"sqlite:///{tmp_path / 'file' / 'jobs.db'}"  # its directory would be inside a file
    r = run_cli("serve", str(functions_dir), "--port", str(free_port()), "--no-watch", "--database-url", url)
    assert r.returncode == 2
    assert r.stderr.startswith(f"edgeruntime: error: database {tmp_path / 'file' / 'jobs.db'}: ")
    assert len(r.stderr.strip().splitlines()) == 1
    assert "Serving functions" not in r.stdout  # the banner comes right before the server listens


def test_serve_with_bad_database_url_exits_2(functions_dir: Path) -> None:
    write_function(functions_dir, "echo", ECHO)
    r = run_cli("serve", str(functions_dir), "--port", str(free_port()), "--no-watch", "--database-url", "mysql://x/y")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "edgeruntime: error: --database-url 'mysql://x/y': expected sqlite:///path or postgresql://..."
    )


@pytest.mark.parametrize("command", [("serve", "--no-watch"), ("jobs", "list"), ("cron", "list")])
def test_a_bad_database_url_from_the_environment_is_named_as_such(
    functions_dir: Path, command: tuple[str, ...]
) -> None:
    write_function(functions_dir, "echo", ECHO)
    args = [*command, str(functions_dir)] + (["--port", str(free_port())] if command[0] == "serve" else [])
    r = run_cli(*args, env={"EDGERUNTIME_DATABASE_URL": "mysql://app:hunter2@db.internal/jobs"})
    assert r.returncode == 2
    # The user never typed --database-url: the line names the variable they set, without its password.
    assert r.stderr.strip() == (
        "edgeruntime: error: EDGERUNTIME_DATABASE_URL 'mysql://app:***@db.internal/jobs': "
        "expected sqlite:///path or postgresql://..."
    )
    # The flag still wins over the variable, and is named when it is the one that is wrong.
    r = run_cli(*args, "--database-url", "mysql://x/y", env={"EDGERUNTIME_DATABASE_URL": "sqlite:///ok.db"})
    assert r.returncode == 2
    assert r.stderr.strip().startswith("edgeruntime: error: --database-url 'mysql://x/y'")


def test_commands_that_write_refuse_a_read_only_sqlite_file_with_one_line(project: Path, tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    url = f"sqlite:///{path}"

    async def fail_a_job() -> None:
        store = open_store(url)
        await store.migrate()
        job_id = await store.enqueue("target", "{}", run_at=0, max_attempts=1, idempotency_key=None, now=0)
        [job] = await store.claim("w", 1, now=0, lease_sec=30)
        await store.finish([Outcome(job_id, job.attempt, False, 500, None, "boom")], now=1)
        await store.close()

    asyncio.run(fail_a_job())
    path.chmod(0o444)
    expected = f"edgeruntime: error: database {path}: cannot write to it: attempt to write a readonly database\n"
    for command in (["jobs", "retry", "1"], ["cron", "run", "nightly"]):
        r = run_bound_by_file_modes([*command, "-d", str(project), "--database-url", url])
        assert (r.returncode, r.stderr) == (2, expected), command
    # Reading works: a read-only copy of a store can still be looked at.
    for command in (["jobs", "list"], ["jobs", "failed"], ["cron", "list"]):
        r = run_bound_by_file_modes([*command, "-d", str(project), "--database-url", url, "--json"])
        assert (r.returncode, r.stderr) == (0, ""), command
    r = run_bound_by_file_modes(["jobs", "failed", "-d", str(project), "--database-url", url, "--json"])
    assert [f["error"] for f in json.loads(r.stdout)] == ["boom"]


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["list", "--limit", "99999999999999999999"], "jobs list: error: argument --limit: '99999999999999999999': "),
        (["failed", "--limit", "99999999999999999999"], "jobs failed: error: argument --limit: '9999"),
        (["retry", "99999999999999999999"], "jobs retry: error: argument id: '99999999999999999999': "),
        (["list", "--limit", "0"], "jobs list: error: argument --limit: '0': expected a number from 1 to "),
        (["failed", "--limit", "-1"], "jobs failed: error: argument --limit: '-1': expected a number from 1 to "),
        (["retry", "0"], "jobs retry: error: argument id: '0': expected a number from 1 to "),
        (["list", "--limit", "ten"], "jobs list: error: argument --limit: 'ten' is not a whole number"),
    ],
)
def test_a_limit_or_id_out_of_range_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], line: str
) -> None:
    from edgeruntime.serving.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["jobs", *argv, "--database-url", f"sqlite:///{tmp_path / 'jobs.db'}"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"edgeruntime {line}") and err.count("\n") == 1, err
