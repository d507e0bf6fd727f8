"""The durable queue through EdgeClient, on both backends: delivery, retries, failed jobs, delays."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from edgeruntime.exceptions import JobsError
from edgeruntime.jobs import FakeClock, JobsConfig
from edgeruntime.jobs.queue import backoff
from edgeruntime.testing import EdgeClient
from tests.helpers import write_function

ENQUEUE = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve
import edgeruntime.jobs

async def handler(req: Request) -> JSONResponse:
    body = await req.json()
    job_id = await edgeruntime.jobs.enqueue(
        body["function"], body.get("payload"), delay=body.get("delay", 0),
        max_attempts=body.get("max_attempts"), idempotency_key=body.get("key"),
    )
    return JSONResponse({"job_id": job_id})

serve(handler)
"""

# Fails until the attempt number reaches `succeed_on` (from the payload); echoes what it saw.
FLAKY = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve

async def handler(req: Request) -> JSONResponse:
    body = await req.json()
    attempt = int(req.headers["x-edgeruntime-attempt"])
    seen = {"attempt": attempt, "job": req.headers["x-edgeruntime-job-id"], "body": body,
            "auth": req.headers.get("authorization", "")[:7]}
    if attempt < body.get("succeed_on", 1):
        return JSONResponse({"error": "not yet", **seen}, status_code=503)
    return JSONResponse(seen)

serve(handler)
"""

ALWAYS_FAILS = """
from starlette.requests import Request
from edgeruntime import serve

async def handler(req: Request):
    raise RuntimeError("downstream is down")

serve(handler)
"""


@pytest.fixture
def queue_dir(functions_dir: Path) -> Path:
    write_function(functions_dir, "enqueue", ENQUEUE)
    write_function(functions_dir, "flaky", FLAKY)
    write_function(functions_dir, "always-fails", ALWAYS_FAILS)
    return functions_dir


async def test_job_delivered_with_headers_and_service_role(queue_dir: Path, store_url: str) -> None:
    async with EdgeClient(queue_dir, database_url=store_url) as client:
        r = await client.invoke("enqueue", json={"function": "flaky", "payload": {"n": 7}})
        job_id = r.json()["job_id"]
        [result] = await client.run_jobs()
        assert (result.job_id, result.function, result.attempt, result.status) == (job_id, "flaky", 1, "succeeded")
        assert await client.run_jobs() == []
        [job] = await client.jobs.store.jobs()
        assert job.status == "succeeded"


async def test_flaky_target_succeeds_on_attempt_3(queue_dir: Path, store_url: str) -> None:
    async with EdgeClient(queue_dir, database_url=store_url) as client:
        await client.invoke("enqueue", json={"function": "flaky", "payload": {"succeed_on": 3}})
        results = await client.run_jobs()
        assert [(r.attempt, r.status, r.http_status) for r in results] == [
            (1, "retrying", 503),
            (2, "retrying", 503),
            (3, "succeeded", 200),
        ]
        assert await client.jobs.store.failed_jobs() == []


async def test_always_failing_lands_in_failed_jobs_and_retry_succeeds(queue_dir: Path, store_url: str) -> None:
    async with EdgeClient(queue_dir, database_url=store_url) as client:
        await client.invoke("enqueue", json={"function": "always-fails", "payload": {"id": 1}, "max_attempts": 3})
        results = await client.run_jobs()
        assert [r.status for r in results] == ["retrying", "retrying", "failed"]
        [failed] = await client.jobs.store.failed_jobs()
        assert failed.payload == '{"id":1}'
        assert failed.attempts == 3 and failed.http_status == 500
        assert failed.response == "Internal Server Error"
        assert failed.error == "HTTP 500: Internal Server Error"
        # The function is fixed; the failed job is retried and succeeds.
        write_function(queue_dir, "always-fails", FLAKY)
        client.app.reload({"always-fails"})
        await client.jobs.store.retry_failed(failed.id, now=client.clock.now())
        [again] = await client.run_jobs()
        assert (again.status, again.attempt) == ("succeeded", 1)


async def test_a_job_enqueued_without_max_attempts_is_delivered_four_times(queue_dir: Path) -> None:
    # DESIGN 6: `enqueue(function, payload, *, delay=0, max_attempts=4, idempotency_key=None)`.
    async with EdgeClient(queue_dir) as client:
        r = await client.invoke("enqueue", json={"function": "always-fails", "payload": {"id": 2}})
        job = await client.jobs.store.job(r.json()["job_id"])
        assert job is not None and job.max_attempts == 4
        results = await client.run_jobs()
        assert [(r.attempt, r.status) for r in results] == [
            (1, "retrying"),
            (2, "retrying"),
            (3, "retrying"),
            (4, "failed"),
        ]
        [failed] = await client.jobs.store.failed_jobs()
        assert failed.attempts == 4


async def test_delay_waits_for_the_clock(queue_dir: Path) -> None:
    clock = FakeClock(1_800_000_000)
    async with EdgeClient(queue_dir, clock=clock) as client:
        await client.invoke("enqueue", json={"function": "flaky", "delay": 60})
        assert await client.run_jobs() == []
        clock.advance(59)
        assert await client.run_jobs() == []
        clock.advance(1)
        assert [r.status for r in await client.run_jobs()] == ["succeeded"]


async def test_real_backoff_with_fake_clock(queue_dir: Path) -> None:
    clock = FakeClock(1_800_000_000)
    async with EdgeClient(queue_dir, clock=clock) as client:
        await client.invoke("enqueue", json={"function": "flaky", "payload": {"succeed_on": 2}})
        assert [r.status for r in await client.run_jobs(compress_backoff=False)] == ["retrying"]
        [job] = await client.jobs.store.jobs()
        # Default backoff: 1 s ± 20 % after the first attempt.
        assert 0.8 <= job.run_at - clock.now() <= 1.2
        assert await client.run_jobs(compress_backoff=False) == []
        clock.advance(1.2)
        assert [r.status for r in await client.run_jobs(compress_backoff=False)] == ["succeeded"]


async def test_idempotency_key(queue_dir: Path) -> None:
    async with EdgeClient(queue_dir) as client:
        a = await client.invoke("enqueue", json={"function": "flaky", "key": "order-1"})
        b = await client.invoke("enqueue", json={"function": "flaky", "key": "order-1"})
        assert a.json() == b.json()
        assert len(await client.run_jobs()) == 1


async def test_enqueue_bad_input_is_a_clear_error(queue_dir: Path) -> None:
    async with EdgeClient(queue_dir) as client:
        with pytest.raises(JobsError, match="'no/such' is not a function name"):
            await client.jobs.queue.enqueue("no/such")
        with pytest.raises(JobsError, match="payload is not JSON-serialisable"):
            await client.jobs.queue.enqueue("flaky", {"x": object()})
        with pytest.raises(JobsError, match="max_attempts must be at least 1"):
            await client.jobs.queue.enqueue("flaky", max_attempts=0)
        # Through a function: its caller gets a well-formed 500, and the server keeps serving.
        r = await client.invoke("enqueue", json={"function": "bad name"})
        assert r.status_code == 500
        assert (await client.invoke("enqueue", json={"function": "flaky"})).status_code == 200


async def test_enqueue_refuses_more_attempts_than_the_config_allows(queue_dir: Path) -> None:
    """`[jobs] max_attempts` is at most 1000 (past 1024 attempts the backoff overflows a float); a
    code call is held to the same maximum, with the same kind of error as one below 1."""
    async with EdgeClient(queue_dir) as client:
        with pytest.raises(JobsError, match=r"^enqueue\('flaky'\): max_attempts must be at most 1000, got 1001$"):
            await client.jobs.queue.enqueue("flaky", max_attempts=1001)
        with pytest.raises(JobsError, match="max_attempts must be at most 1000"):
            await client.jobs.queue.enqueue("flaky", max_attempts=2**70)  # more than the store's integers
        assert await client.jobs.store.count_jobs() == {}
        job = await client.jobs.store.job(await client.jobs.queue.enqueue("flaky", max_attempts=1000))
        assert job is not None and job.max_attempts == 1000
        # From function code: the caller gets a well-formed 500, and nothing is queued.
        r = await client.invoke("enqueue", json={"function": "flaky", "max_attempts": 5000})
        assert r.status_code == 500
        assert await client.jobs.store.count_jobs() == {"queued": 1}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"delay": float("nan")}, r"delay must be a finite number of seconds, got nan"),
        ({"delay": float("inf")}, r"delay must be a finite number of seconds, got inf"),
        ({"delay": "60"}, r"delay must be a finite number of seconds, got '60'"),
        ({"delay": True}, r"delay must be a finite number of seconds, got True"),
        ({"max_attempts": 2.5}, r"max_attempts must be a whole number, got 2.5"),
        ({"max_attempts": "3"}, r"max_attempts must be a whole number, got '3'"),
        ({"max_attempts": True}, r"max_attempts must be a whole number, got True"),
    ],
)
async def test_enqueue_refuses_a_delay_or_attempts_no_job_can_have(
    queue_dir: Path, options: dict[str, Any], message: str
) -> None:
    """NaN broke the store's insert, infinity queued a job that never runs, and a float or a string
    of attempts was stored as it was (or raised a bare TypeError): each is one JobsError naming it."""
    async with EdgeClient(queue_dir) as client:
        with pytest.raises(JobsError, match="^enqueue\\('flaky'\\): " + message + "$"):
            await client.jobs.queue.enqueue("flaky", **options)
        assert await client.jobs.store.count_jobs() == {}
        job = await client.jobs.queue.enqueue("flaky", delay=1.5, max_attempts=2)
        assert job > 0


async def test_job_for_unknown_function_fails_after_its_attempts(queue_dir: Path) -> None:
    async with EdgeClient(queue_dir) as client:
        await client.jobs.queue.enqueue("gone", {}, max_attempts=2)
        results = await client.run_jobs()
        assert [(r.status, r.http_status) for r in results] == [("retrying", 404), ("failed", 404)]


def test_backoff_is_exponential_capped_and_jittered() -> None:
    config = JobsConfig(backoff_base_sec=2, backoff_cap_sec=30, backoff_jitter=0.2)
    assert [backoff(n, config, lambda lo, hi: 0.0) for n in range(1, 6)] == [2, 4, 8, 16, 30]
    assert backoff(1, config, lambda lo, hi: hi) == pytest.approx(2.4)
    assert backoff(1, config, lambda lo, hi: lo) == pytest.approx(1.6)
    spread = {round(backoff(3, config), 6) for _ in range(50)}
    assert len(spread) > 1 and all(6.4 <= d <= 9.6 for d in spread)


def test_size_cap_settings_from_config_toml(queue_dir: Path) -> None:
    (queue_dir.parent / "config.toml").write_text(
        "[jobs]\nretention_max_mb = 250\nretention_max_rows = 1000000\n", encoding="utf-8"
    )
    config = EdgeClient(queue_dir).jobs.config
    assert (config.retention_max_mb, config.retention_max_rows) == (250, 1_000_000)
    assert (JobsConfig().retention_max_mb, JobsConfig().retention_max_rows) == (None, None)


async def test_jobs_config_from_config_toml(queue_dir: Path) -> None:
    (queue_dir.parent / "config.toml").write_text("[jobs]\nmax_attempts = 2\n", encoding="utf-8")
    async with EdgeClient(queue_dir) as client:
        await client.jobs.queue.enqueue("always-fails")
        assert [r.status for r in await client.run_jobs()] == ["retrying", "failed"]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[jobs]\nmax_atempts = 2\n", "[jobs] max_atempts: unknown key"),
        ("[jobs]\nmax_attempts = 0\n", "[jobs] max_attempts: must be at least 1"),
        ('[jobs]\nlease_sec = "30s"\n', "[jobs] lease_sec: expected a number, got '30s'"),
        ("[jobs]\nconcurrency = 1.5\n", "[jobs] concurrency: expected an integer"),
        ("[jobs]\nretention_max_mb = 0\n", "[jobs] retention_max_mb: must be positive"),
        ('[jobs]\nretention_max_mb = "1GB"\n', "[jobs] retention_max_mb: expected a number, got '1GB'"),
        ("[jobs]\nretention_max_rows = 0\n", "[jobs] retention_max_rows: must be at least 1"),
        ("[jobs]\nretention_max_rows = 1e6\n", "[jobs] retention_max_rows: expected an integer"),
    ],
)
def test_bad_jobs_config(queue_dir: Path, toml: str, message: str) -> None:
    from edgeruntime.exceptions import ConfigError

    (queue_dir.parent / "config.toml").write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        EdgeClient(queue_dir)
    assert message in str(info.value) and "config.toml" in str(info.value)


async def test_payload_round_trip(queue_dir: Path) -> None:
    async with EdgeClient(queue_dir) as client:
        payload = {"text": "héllo", "items": [1, 2, {"deep": None}]}
        await client.jobs.queue.enqueue("flaky", payload)
        [job] = await client.jobs.store.jobs()
        assert json.loads(job.payload) == payload
        assert [r.status for r in await client.run_jobs()] == ["succeeded"]


async def test_enqueue_outside_a_server_uses_edgeruntime_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgeruntime.jobs
    from edgeruntime.jobs import queue as queue_module
    from edgeruntime.jobs.backends import open_store

    monkeypatch.delenv("EDGERUNTIME_DATABASE_URL", raising=False)
    with pytest.raises(JobsError, match="no jobs store is running"):
        await edgeruntime.jobs.enqueue("flaky", {})
    url = f"sqlite:///{tmp_path / 'other-process.db'}"
    monkeypatch.setenv("EDGERUNTIME_DATABASE_URL", url)
    job_id = await edgeruntime.jobs.enqueue("flaky", {"from": "a worker process"})
    fallback = queue_module._fallback
    assert fallback is not None and fallback.store.url == url
    await fallback.store.close()
    monkeypatch.setattr(queue_module, "_fallback", None)
    store = open_store(url)
    try:
        [job] = await store.jobs()
    finally:
        await store.close()
    assert (job.id, job.function, job.payload) == (job_id, "flaky", '{"from":"a worker process"}')


# Deliveries that end at staggered moments, so outcomes arrive while others are being recorded.
STAGGERED = """
import asyncio
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve

async def handler(req: Request) -> JSONResponse:
    await asyncio.sleep((await req.json())["n"] % 7 * 0.002)
    return JSONResponse({"ok": True})

serve(handler)
"""


async def test_background_runner_records_every_outcome(queue_dir: Path, store_url: str) -> None:
    """The loop `serve` runs: batches of claims and outcomes, none lost while deliveries overlap."""
    from edgeruntime.config.settings import Settings
    from edgeruntime.gateway.app import EdgeApp
    from edgeruntime.jobs import attach

    write_function(queue_dir, "sleepy", STAGGERED)
    (queue_dir.parent / "config.toml").write_text("[jobs]\nconcurrency = 8\n", encoding="utf-8")
    settings = Settings.build(queue_dir, database_url=store_url)
    app = EdgeApp(settings)
    system = attach(app)
    await system.store.migrate()
    for i in range(300):
        await system.queue.enqueue("sleepy", {"n": i})
    await app.startup()
    try:
        deadline = asyncio.get_running_loop().time() + 20
        counts: dict[str, int] = {}
        while asyncio.get_running_loop().time() < deadline:
            counts = await system.store.count_jobs()
            if counts.get("succeeded") == 300:
                break
            await asyncio.sleep(0.05)
        jobs = await system.store.jobs(limit=1000)
    finally:
        await app.shutdown(timeout=5)
    assert counts == {"succeeded": 300}
    assert {job.attempt for job in jobs} == {1}


async def test_enqueue_from_a_process_isolated_function(queue_dir: Path) -> None:
    """A function in its own worker process writes to the server's store (the default SQLite file)."""
    async with EdgeClient(queue_dir, isolation="process") as client:
        r = await client.invoke("enqueue", json={"function": "flaky", "payload": {"from": "child"}})
        assert r.status_code == 200, r.text
        [result] = await client.run_jobs()
        assert (result.job_id, result.status) == (r.json()["job_id"], "succeeded")
        await client.drain()


async def test_a_store_that_fails_every_claim_is_logged_in_one_line_not_a_traceback_per_poll(
    queue_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import sqlite3
    import time

    from edgeruntime.config.settings import Settings
    from edgeruntime.jobs import sqlite as sqlite_store
    from edgeruntime.serving.build import build_app

    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 50)
    (queue_dir.parent / "config.toml").write_text("[jobs]\npoll_interval_ms = 50\n", encoding="utf-8")
    path = tmp_path / "jobs.db"
    built = build_app(Settings.build(queue_dir, database_url=f"sqlite:///{path}"))
    app, system = built.app, built.jobs
    await app.startup()
    try:
        await asyncio.sleep(0.3)  # the start-up prune is done
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # another process keeps the write lock: every claim fails
        try:
            await asyncio.sleep(1.5)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        job_id = await system.queue.enqueue("flaky", {})
        deadline = time.monotonic() + 10
        job = None
        while time.monotonic() < deadline:
            job = await system.store.job(job_id)
            if job is not None and job.status == "succeeded":
                break
            await asyncio.sleep(0.05)
    finally:
        await app.shutdown(timeout=5)
    claims = [r for r in caplog.records if "claiming due jobs" in r.getMessage()]
    assert [r.levelno for r in claims] == [logging.ERROR, logging.WARNING], [r.getMessage() for r in claims]
    assert all(r.exc_info is None for r in caplog.records if r.levelno >= logging.WARNING)
    assert "Traceback" not in caplog.text
    assert claims[0].getMessage() == (
        "jobs: claiming due jobs failed: OperationalError: database is locked; retrying every 0.05 s"
    )
    assert claims[1].getMessage().startswith("jobs: claiming due jobs works again after ")
    assert job is not None and job.status == "succeeded"  # the queue works again by itself
