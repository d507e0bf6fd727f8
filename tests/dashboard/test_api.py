"""The dashboard's JSON API, in-process through EdgeClient: every endpoint, its errors and filters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edgeruntime.dashboard.metrics import Metrics
from edgeruntime.exceptions import SiblingsUnavailable
from edgeruntime.gateway.extensions import Invocation
from edgeruntime.jobs import TickStatus
from edgeruntime.testing import EdgeClient
from tests.helpers import write_function

API = "/_edgeruntime/api"

WORK = """
import asyncio
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import EdgeRuntime, serve

async def send_email() -> None:
    await asyncio.sleep(0)

async def broken_task() -> None:
    raise ValueError("smtp down")

async def hang() -> None:
    await asyncio.sleep(3600)

async def handler(req: Request) -> JSONResponse:
    kind = req.query_params.get("bg", "ok")
    EdgeRuntime.wait_until({"ok": send_email, "fail": broken_task, "hang": hang}[kind]())
    return JSONResponse({"ok": True})

serve(handler)
"""

# Fails until a file named `fixed` appears beside it: a job that fails, then succeeds on retry.
FLAKY = """
from pathlib import Path
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from edgeruntime import serve

async def handler(req: Request):
    if (Path(__file__).parent / "fixed").exists():
        return JSONResponse({"ok": True})
    return PlainTextResponse("upstream said no", status_code=502)

serve(handler)
"""

BROKEN = "import does_not_exist\n"

HELLO_SOURCE = """
from starlette.responses import JSONResponse
from edgeruntime import serve

async def handler(req):
    return JSONResponse({"hello": True})

serve(handler)
"""

# A port that reads `body["userId"]` where the TypeScript read `undefined`: a KeyError, a 500.
RAISES = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve

async def handler(req: Request):
    body = await req.json()
    if body.get("wrong_type"):
        return {"not": "a response"}
    if body.get("long"):
        raise RuntimeError("x" * 5000)
    if body.get("unprintable"):
        class Unprintable(Exception):
            def __str__(self) -> str:
                raise ValueError("no")
        raise Unprintable()
    return JSONResponse({"user": body["userId"], "note": "<b>hi</b>"})

serve(handler)
"""

SLOW = """
import asyncio
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve

async def handler(req: Request) -> JSONResponse:
    await asyncio.sleep(0.5)
    return JSONResponse({"ok": True})

serve(handler)
"""

T0 = 1_800_000_000.0

CONFIG = """
[functions.work]
description = "Does the work"
verify_jwt = false
wall_clock_limit_sec = 60

[functions.off]
enabled = false

[cron.nightly]
function = "work"
schedule = "0 10 * * 1-5"
timezone = "Europe/Paris"
description = "Weekday report"

[cron.often]
function = "work"
schedule = "30 seconds"

[cron.slow]
function = "slow"
schedule = "* * * * *"
"""


@pytest.fixture
def project(functions_dir: Path) -> Path:
    write_function(functions_dir, "work", WORK)
    write_function(functions_dir, "flaky", FLAKY)
    write_function(functions_dir, "broken", BROKEN)
    write_function(functions_dir, "off", WORK)
    write_function(functions_dir, "slow", SLOW)
    (functions_dir.parent / "config.toml").write_text(CONFIG, encoding="utf-8")
    return functions_dir


@pytest.fixture
async def client(project: Path, store_url: str) -> AsyncIterator[EdgeClient]:
    """Every API test runs on SQLite and on Postgres."""
    async with EdgeClient(project, database_url=store_url) as c:
        yield c


async def get(client: EdgeClient, path: str, **params: Any) -> Any:
    r = await client.request("GET", API + path, params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    return r.json()


async def test_functions_show_route_auth_limits_boot_status_and_last_invocation(client: EdgeClient) -> None:
    data = await get(client, "/functions")
    by_name = {f["name"]: f for f in data["functions"]}
    assert sorted(by_name) == ["broken", "flaky", "off", "slow", "work"]
    work = by_name["work"]
    assert (work["route"], work["verify_jwt"], work["description"]) == ("/functions/v1/work", False, "Does the work")
    assert work["limits"]["wall_clock_limit_sec"] == 60 and work["limits"]["memory_limit_mb"] == 256
    assert work["boot"] == {"status": "not_booted", "boots": 0, "error": None}
    assert work["last_invocation"] is None
    assert by_name["flaky"]["verify_jwt"] is True
    assert by_name["off"]["enabled"] is False and by_name["off"]["boot"]["status"] == "disabled"

    assert (await client.invoke("work", auth=None)).status_code == 200
    assert (await client.invoke("broken")).status_code == 503
    await client.drain()
    by_name = {f["name"]: f for f in (await get(client, "/functions"))["functions"]}
    work = by_name["work"]
    assert work["boot"]["status"] == "booted" and work["boot"]["boots"] == 1
    assert [w["status"] for w in work["workers"]] == ["active"]
    last = work["last_invocation"]
    assert (last["status"], last["trigger"]) == (200, "http") and last["duration_ms"] >= 0
    broken = by_name["broken"]
    assert broken["boot"]["status"] == "error" and "does_not_exist" in broken["boot"]["error"]
    assert broken["last_invocation"]["status"] == 503


async def test_cron_shows_schedule_in_words_timezone_ticks_and_skips(client: EdgeClient) -> None:
    data = await get(client, "/cron")
    by_name = {c["name"]: c for c in data["cron"]}
    nightly = by_name["nightly"]
    assert nightly["schedule"] == "0 10 * * 1-5"
    assert nightly["schedule_text"] == "at 10:00, Monday to Friday (Europe/Paris)"
    assert (nightly["timezone"], nightly["description"], nightly["paused"]) == ("Europe/Paris", "Weekday report", False)
    assert nightly["next_tick"] > data["now"] and nightly["last_tick"] is None and nightly["ticks"] == []
    assert by_name["often"]["schedule_text"] == "every 30 seconds"
    assert by_name["often"]["next_tick"] - data["now"] <= 30

    # A tick of `slow` is still running when the next one comes: that one is skipped (overlap = "skip").
    first = asyncio.create_task(client.jobs.scheduler.fire("slow", T0))
    await asyncio.sleep(0.2)
    second = await client.jobs.scheduler.fire("slow", T0 + 60)
    assert second is not None and second.status is TickStatus.SKIPPED
    assert (await first) is not None
    slow = {c["name"]: c for c in (await get(client, "/cron"))["cron"]}["slow"]
    assert [(t["status"], t["scheduled_for"]) for t in slow["ticks"]] == [("skipped", T0 + 60), ("succeeded", T0)]
    assert (slow["skipped"], slow["last_status"], slow["last_tick"]) == (1, "skipped", T0 + 60)


async def test_cron_run_now_pause_and_resume(client: EdgeClient) -> None:
    r = await client.request("POST", API + "/cron/nightly/run")
    assert r.status_code == 202 and r.json() == {"cron": "nightly", "started": True}
    deadline = time.monotonic() + 10
    ticks: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        ticks = {c["name"]: c for c in (await get(client, "/cron"))["cron"]}["nightly"]["ticks"]
        if ticks and ticks[0]["status"] != "running":
            break
        await asyncio.sleep(0.05)
    assert [(t["trigger"], t["status"], t["http_status"]) for t in ticks] == [("manual", "succeeded", 200)]

    r = await client.request("POST", API + "/cron/nightly/pause")
    assert (r.status_code, r.json()) == (200, {"cron": "nightly", "paused": True})
    nightly = {c["name"]: c for c in (await get(client, "/cron"))["cron"]}["nightly"]
    assert nightly["paused"] is True and nightly["paused_at"] is not None and nightly["next_tick"] is None
    assert await client.jobs.store.paused_crons() == {"nightly": nightly["paused_at"]}

    r = await client.request("POST", API + "/cron/nightly/resume")
    assert (r.status_code, r.json()) == (200, {"cron": "nightly", "paused": False})
    nightly = {c["name"]: c for c in (await get(client, "/cron"))["cron"]}["nightly"]
    assert nightly["paused"] is False and nightly["next_tick"] is not None

    for action in ("run", "pause", "resume"):
        r = await client.request("POST", API + f"/cron/nope/{action}")
        assert (r.status_code, r.json()) == (404, {"error": "no cron job 'nope'"})
    assert (await client.request("GET", API + "/cron/nightly/run")).status_code == 405


async def test_runs_with_triggers_filters_and_background_task_outcomes(client: EdgeClient) -> None:
    assert (await client.invoke("work", params={"bg": "ok"})).status_code == 200
    assert (await client.invoke("work", params={"bg": "fail"})).status_code == 200
    assert (await client.invoke("work", params={"bg": "hang"})).status_code == 200
    await client.trigger_cron("nightly")
    await client.jobs.queue.enqueue("flaky", {"n": 1}, max_attempts=1)
    await client.run_jobs()
    # A limit ends the hanging task (as the wall clock would): the run shows which one cut it.
    [worker] = client.app.functions["work"].workers
    hanging = [t for t in worker.state.background.pending if t.name == "hang"]
    assert len(worker.state.background.cut("WallClockTime", hanging)) == 1
    with pytest.raises(ExceptionGroup, match="1 background task"):
        await client.drain(timeout=5)  # reports the failed task
    await client.jobs.history.flush()

    runs = (await get(client, "/runs"))["runs"]
    assert [(r["function"], r["trigger"], r["status"]) for r in runs] == [
        ("flaky", "queue", "failed"),
        ("work", "cron", "succeeded"),
        ("work", "http", "succeeded"),
        ("work", "http", "succeeded"),
        ("work", "http", "succeeded"),
    ]
    assert all(r["kind"] == "invocation" and r["duration_ms"] >= 0 and r["started_at"] > 0 for r in runs)
    assert runs[0]["http_status"] == 502 and runs[0]["tasks"] == []
    tasks = [r["tasks"] for r in runs[2:]]
    assert [[(t["name"], t["status"], t["cut_reason"]) for t in ts] for ts in tasks] == [
        [("hang", "cut", "WallClockTime")],
        [("broken_task", "failed", None)],
        [("send_email", "completed", None)],
    ]
    assert "smtp down" in tasks[1][0]["error"]

    filtered = (await get(client, "/runs", trigger="queue"))["runs"]
    assert [r["function"] for r in filtered] == ["flaky"]
    assert [r["trigger"] for r in (await get(client, "/runs", function="work", trigger="cron"))["runs"]] == ["cron"]
    assert [r["function"] for r in (await get(client, "/runs", status="failed"))["runs"]] == ["flaky"]
    assert len((await get(client, "/runs", limit=2))["runs"]) == 2
    assert (await get(client, "/runs", function="nope"))["runs"] == []
    for bad in ("0", "x", "100000"):
        r = await client.request("GET", API + "/runs", params={"limit": bad})
        assert r.status_code == 400 and "limit" in r.json()["error"]


@pytest.mark.parametrize("isolation", ["inline", "process"])
async def test_a_handler_that_raised_shows_its_exception_type_and_message(
    project: Path, store_url: str, isolation: str
) -> None:
    write_function(project, "raises", RAISES)
    async with EdgeClient(project, database_url=store_url, isolation=isolation) as client:
        failed = await client.invoke("raises", json={})
        assert (failed.status_code, failed.text) == (500, "Internal Server Error")  # nothing leaks to the caller
        assert (await client.invoke("raises", json={"wrong_type": True})).status_code == 502
        assert (await client.invoke("raises", json={"long": True})).status_code == 500
        assert (await client.invoke("raises", json={"unprintable": True})).status_code == 500
        assert (await client.invoke("raises", json={"userId": "u1"})).status_code == 200
        await client.jobs.history.flush()

        runs = (await get(client, "/runs", function="raises"))["runs"]
        assert [(r["status"], r["http_status"]) for r in runs] == [
            ("succeeded", 200),
            ("failed", 500),
            ("failed", 500),
            ("failed", 502),
            ("failed", 500),
        ]
        ok, unprintable, long, wrong_type, key_error = (r["error"] for r in runs)
        assert unprintable == "Unprintable: (the message could not be read)"
        assert (ok, key_error) == (None, "KeyError: 'userId'")  # the type and message, not the traceback
        assert wrong_type.startswith("InvalidResponse: function raises returned builtins.dict")
        assert long.startswith("RuntimeError: xxx") and len(long) == 1000 and long.endswith("…")
        last = {f["name"]: f for f in (await get(client, "/functions"))["functions"]}["raises"]["last_invocation"]
        assert (last["status"], last["error"]) == (200, None)
        await client.invoke("raises", json={})
        last = {f["name"]: f for f in (await get(client, "/functions"))["functions"]}["raises"]["last_invocation"]
        assert (last["status"], last["error"]) == (500, "KeyError: 'userId'")


async def test_a_filter_with_a_nul_character_is_a_400(client: EdgeClient) -> None:
    # Postgres refuses NUL in text: it was a 503 with a traceback in the log per request (SQLite: 200).
    for name in ("function", "trigger", "status"):
        r = await client.request("GET", API + "/runs", params={name: "work\x00"})
        assert (r.status_code, r.json()) == (400, {"error": f"{name}: contains a NUL character"})
    assert (await get(client, "/runs", function="work"))["runs"] == []


async def test_queue_depth_oldest_age_in_flight_and_attempts(client: EdgeClient) -> None:
    empty = await get(client, "/queue")
    assert (empty["depth"], empty["oldest_age_sec"], empty["in_flight"], empty["jobs"]) == (0, None, [], [])
    first = await client.jobs.queue.enqueue("work", {"n": 1}, max_attempts=3)
    await client.jobs.queue.enqueue("work", {"n": 2}, delay=3600)
    await client.jobs.queue.enqueue("work", {"n": 3})
    # Another instance holds the first job.
    [claimed] = await client.jobs.store.claim("other-instance", 1, now=time.time(), lease_sec=30)
    assert claimed.id == first
    data = await get(client, "/queue")
    assert data["depth"] == 2 and data["counts"] == {"queued": 2, "running": 1}
    assert 0 <= data["oldest_age_sec"] < 60
    [lease] = data["in_flight"]
    assert (lease["job_id"], lease["function"], lease["attempt"], lease["max_attempts"]) == (first, "work", 1, 3)
    assert lease["worker_id"] == "other-instance" and 0 <= lease["lease_age_sec"] < 60
    assert 0 < lease["lease_expires_in_sec"] <= 30
    assert [(j["id"], j["status"], j["attempt"]) for j in data["jobs"]][-1] == (first, "running", 1)


async def test_failed_jobs_retry_retry_all_and_delete(client: EdgeClient, project: Path) -> None:
    ids = [await client.jobs.queue.enqueue("flaky", {"n": n}, max_attempts=1) for n in range(3)]
    await client.run_jobs()
    failed = (await get(client, "/failed"))["failed"]
    assert sorted(f["job_id"] for f in failed) == ids
    entry = failed[-1]
    assert (entry["function"], entry["attempts"], entry["http_status"]) == ("flaky", 1, 502)
    assert entry["error"] == "HTTP 502: upstream said no" and entry["response"] == "upstream said no"
    assert entry["payload"] == '{"n":0}' and entry["retry"] is None

    (project / "flaky" / "fixed").touch()
    r = await client.request("POST", API + f"/failed/{entry['id']}/retry")
    assert r.status_code == 201
    new_job = r.json()["job_id"]
    assert r.json() == {"failed_id": entry["id"], "job_id": new_job}
    again = await client.request("POST", API + f"/failed/{entry['id']}/retry")
    assert again.status_code == 409 and f"already retried as job {new_job}" in again.json()["error"]
    await client.run_jobs()
    retried = {f["id"]: f for f in (await get(client, "/failed"))["failed"]}[entry["id"]]
    assert (retried["retry"]["id"], retried["retry"]["status"], retried["retry"]["attempt"]) == (
        new_job,
        "succeeded",
        1,
    )

    r = await client.request("POST", API + "/failed/retry-all")
    assert r.status_code == 201 and len(r.json()["job_ids"]) == 2
    assert (await client.request("POST", API + "/failed/retry-all")).json() == {"job_ids": []}
    results = await client.run_jobs()
    assert [x.status for x in results] == ["succeeded", "succeeded"]

    r = await client.request("DELETE", API + f"/failed/{entry['id']}")
    assert (r.status_code, r.json()) == (200, {"deleted": entry["id"]})
    assert entry["id"] not in {f["id"] for f in (await get(client, "/failed"))["failed"]}
    assert (await client.request("DELETE", API + f"/failed/{entry['id']}")).status_code == 404
    missing = await client.request("POST", API + "/failed/999999/retry")
    assert (missing.status_code, missing.json()) == (404, {"error": "no failed job 999999"})
    assert (await client.request("POST", API + "/failed/abc/retry")).status_code == 404
    # An id past the store's 64-bit integers is missing too, not a store error (the fuzz found a 503).
    huge = 10**23
    for method, path in (("POST", f"/failed/{huge}/retry"), ("DELETE", f"/failed/{huge}")):
        r = await client.request(method, API + path)
        assert (r.status_code, r.json()) == (404, {"error": f"no failed job {huge}"})


async def test_page_static_files_and_unknown_paths(client: EdgeClient) -> None:
    redirect = await client.request("GET", "/_edgeruntime")
    assert redirect.status_code == 308 and redirect.headers["location"] == "/_edgeruntime/"
    page = await client.request("GET", "/_edgeruntime/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    html = page.text
    assert 'src="static/dashboard.js"' in html and 'href="static/dashboard.css"' in html
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        r = await client.request("GET", f"/_edgeruntime/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        # Nothing is fetched from another origin: the machine running the dashboard may be offline.
        assert "http://" not in r.text and "https://" not in r.text
    assert "http://" not in html and "https://" not in html
    assert (await client.request("GET", "/_edgeruntime/static/../__init__.py")).status_code == 404
    assert (await client.request("GET", "/_edgeruntime/static/nope.js")).status_code == 404
    r = await client.request("GET", API + "/nope")
    assert (r.status_code, r.json()) == (404, {"error": "no API endpoint /_edgeruntime/api/nope"})
    # Paths next to the dashboard's prefix are not the dashboard's.
    assert (await client.request("GET", "/_edgeruntimex")).status_code == 404
    # The dashboard's own requests are not runs.
    await client.jobs.history.flush()
    assert (await get(client, "/runs"))["runs"] == []


async def test_a_failing_store_is_a_503_and_the_server_keeps_serving(client: EdgeClient) -> None:
    store = client.jobs.store

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk I/O error")

    original = store.failed_jobs
    store.failed_jobs = broken  # type: ignore[method-assign]
    try:
        r = await client.request("GET", API + "/failed")
        assert (r.status_code, r.json()) == (503, {"error": "OSError: disk I/O error"})
    finally:
        store.failed_jobs = original  # type: ignore[method-assign]
    assert (await client.request("GET", API + "/failed")).status_code == 200
    assert (await client.invoke("work")).status_code == 200


async def test_a_syntax_error_is_found_at_start_logged_once_shown_with_its_line_and_cleared_on_reload(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_function(functions_dir, "work", WORK)
    index = write_function(functions_dir, "typo", "from edgeruntime import serve\n\nasync def handler(req)\n")
    async with EdgeClient(functions_dir) as client:
        # Found at start, before any request: compiled, not imported.
        assert caplog.text.count(f"function typo cannot boot: SyntaxError: expected ':' ({index}, line 3)") == 1
        by_name = {f["name"]: f for f in (await get(client, "/functions"))["functions"]}
        boot = by_name["typo"]["boot"]
        assert boot["status"] == "error"
        assert boot["error"] == f"function typo failed to boot: SyntaxError: expected ':' ({index}, line 3)"
        assert boot["source_error"] == {"file": str(index), "line": 3, "message": "SyntaxError: expected ':'"}
        assert by_name["work"]["boot"]["status"] == "not_booted" and "source_error" not in by_name["work"]["boot"]
        for _ in range(2):  # the request still gets 503 BOOT_ERROR; the error is not logged again
            r = await client.invoke("typo")
            assert r.status_code == 503 and r.json()["code"] == "BOOT_ERROR"
        assert caplog.text.count("SyntaxError") == 1
        assert (await client.invoke("work")).status_code == 200  # the others serve

        index.write_text(HELLO_SOURCE)
        client.app.reload({"typo"})  # what the file watcher calls
        boot = {f["name"]: f for f in (await get(client, "/functions"))["functions"]}["typo"]["boot"]
        assert (boot["status"], boot["error"]) == ("not_booted", None)
        assert (await client.invoke("typo")).status_code == 200

        index.write_text("def broken(:\n")
        client.app.reload({"typo"})
        boot = {f["name"]: f for f in (await get(client, "/functions"))["functions"]}["typo"]["boot"]
        assert boot["source_error"]["line"] == 1
        assert (await client.invoke("typo")).status_code == 503


# -- several serving processes (--workers N) ---------------------------------------------------


async def test_functions_show_the_workers_of_every_serving_process(project: Path) -> None:
    """Under --workers N the table holds what each serving process reports, gathered by the supervisor."""
    async with EdgeClient(project) as client:
        assert (await client.invoke("work", auth=None)).status_code == 200
        here = client.dashboard.process_state()
        other_work = {
            "boot": {"status": "error", "boots": 3, "error": "ImportError: gone"},
            "workers": [{"id": "w-2", "status": "retired", "in_flight": 4, "background_pending": 2}],
            "last_invocation": {"at": time.time() + 60, "status": 500, "duration_ms": 1.0, "trigger": "cron"},
        }
        other = {"pid": 999_999, "functions": {**here["functions"], "work": other_work}}
        asked: list[str] = []

        async def siblings(what: str) -> list[Any]:
            asked.append(what)
            return [here, other, {"pid": "not a pid"}]  # a malformed answer is left out

        client.dashboard.siblings = siblings
        data = await get(client, "/functions")
        assert asked == ["functions"]
        assert data["processes"] == sorted([here["pid"], 999_999]) and data["processes_error"] is None
        work = {f["name"]: f for f in data["functions"]}["work"]
        assert work["boot"] == {"status": "error", "boots": 4, "error": "ImportError: gone"}
        assert [(w["process"], w["in_flight"]) for w in work["workers"]] == [(here["pid"], 0), (999_999, 4)]
        assert work["last_invocation"]["trigger"] == "cron"  # the latest of the two

        async def unavailable(what: str) -> list[Any]:
            raise SiblingsUnavailable("serving process [12] did not answer within 5 s")

        client.dashboard.siblings = unavailable
        data = await get(client, "/functions")
        # This process's part, and why it is only that.
        assert data["processes"] == [here["pid"]]
        assert data["processes_error"] == "serving process [12] did not answer within 5 s"


async def test_metrics_add_up_every_serving_process_or_answer_503(project: Path) -> None:
    async with EdgeClient(project) as client:
        for _ in range(3):
            assert (await client.invoke("work", auth=None)).status_code == 200
        await client.drain()
        other = Metrics({"work"})
        for _ in range(4):
            other.invocation(Invocation("work", "http", "id", "GET", "/functions/v1/work", 200, 0.0, 1.0))

        async def siblings(what: str) -> list[Any]:
            assert what == "metrics"
            return [client.dashboard.metrics.snapshot(), other.snapshot()]

        client.dashboard.siblings = siblings
        r = await client.http.get("/_internal/metrics")
        assert r.status_code == 200
        assert 'edgeruntime_requests_total{function="work",status="200",trigger="http"} 7.0' in r.text

        async def unavailable(what: str) -> list[Any]:
            raise SiblingsUnavailable("serving process [12] did not answer within 5 s")

        client.dashboard.siblings = unavailable
        r = await client.http.get("/_internal/metrics")
        # Some processes' counts only would look like counters going back: an honest failure instead.
        assert (r.status_code, r.text) == (503, "metrics: serving process [12] did not answer within 5 s\n")
