"""The dashboard in a real browser: headless Chromium against a live `edgeruntime serve`
(see tests/browser/chromium.py for what it needs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.browser.chromium import chromium_page
from tests.helpers import SERVICE_ROLE, ServerProcess, write_function

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.e2e

HELLO = """
import asyncio
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import EdgeRuntime, serve

async def audit() -> None:
    await asyncio.sleep(0.01)

async def handler(req: Request) -> JSONResponse:
    EdgeRuntime.wait_until(audit())
    return JSONResponse({"message": "hello"})

serve(handler)
"""

# Fails until the file named by FIXED_MARKER exists: the job lands in failed jobs, then a retry succeeds.
SYNC = """
import os
from pathlib import Path
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from edgeruntime import serve

async def handler(req: Request):
    if Path(os.environ["FIXED_MARKER"]).exists():
        return JSONResponse({"synced": True})
    return PlainTextResponse("CRM API unavailable", status_code=503)

serve(handler)
"""

ENQUEUE = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve
import edgeruntime.jobs

async def handler(req: Request) -> JSONResponse:
    job_id = await edgeruntime.jobs.enqueue("sync-contact", await req.json(), max_attempts=1)
    return JSONResponse({"job_id": job_id}, status_code=202)

serve(handler)
"""

CONFIG = """
[functions.hello]
description = "Greets visitors"

[functions.sync-contact]
description = "Pushes a contact to the CRM"

[cron.nightly-sync]
function = "sync-contact"
schedule = "0 3 * * *"
description = "Re-syncs every contact at night"
"""


@pytest.fixture
def page() -> Iterator[Page]:
    with chromium_page() as page:
        yield page


def test_dashboard_shows_a_run_and_retries_a_failed_job(functions_dir: Path, tmp_path: Path, page: Page) -> None:
    write_function(functions_dir, "hello", HELLO)
    write_function(functions_dir, "sync-contact", SYNC)
    write_function(functions_dir, "enqueue", ENQUEUE)
    (functions_dir.parent / "config.toml").write_text(CONFIG, encoding="utf-8")
    marker = tmp_path / "crm-is-back"
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

    db = f"sqlite:///{tmp_path / 'dashboard.db'}"
    with ServerProcess(functions_dir, "--no-watch", "--database-url", db, env={"FIXED_MARKER": str(marker)}) as server:
        page.goto(f"{server.base_url}/_edgeruntime/")
        page.get_by_role("status").filter(has_text="Live").wait_for()
        assert page.locator("#functions-body tr[data-function='hello']").inner_text().count("Greets visitors") == 1
        cron = page.locator("#cron-body tr[data-cron='nightly-sync']")
        assert "at 03:00, every day" in cron.inner_text() and "Re-syncs every contact" in cron.inner_text()

        # A request appears in the runs table without a reload, with its wait_until task.
        assert page.locator("#runs-body tr[data-function='hello']").count() == 0
        assert httpx.post(server.url("hello"), headers=SERVICE_ROLE, timeout=10).status_code == 200
        run = page.locator("#runs-body tr[data-function='hello']").first
        run.wait_for()
        assert "http" in run.inner_text() and "succeeded" in run.inner_text()
        page.locator("#runs-body tr[data-function='hello'] .tasks .badge.completed").first.wait_for()

        # A job whose only attempt fails lands in failed jobs, with the error and the response.
        r = httpx.post(server.url("enqueue"), json={"email": "a@example.com"}, headers=SERVICE_ROLE, timeout=10)
        assert r.status_code == 202
        failed = page.locator("#failed-body tr[data-failed]").first
        failed.wait_for()
        assert "CRM API unavailable" in failed.inner_text() and "HTTP 503" in failed.inner_text()
        failed_id = failed.get_attribute("data-failed")

        # The CRM is back: Retry re-queues the job and the row shows it succeed.
        marker.touch()
        page.get_by_role("button", name=f"Retry failed job {failed_id}").click()
        row = page.locator(f"#failed-body tr[data-failed='{failed_id}']")
        row.locator(".retry .badge.succeeded").wait_for()
        assert "retried as #" in row.inner_text()
        page.locator("#runs-body tr[data-function='sync-contact'][data-status='succeeded']").first.wait_for()

        page.evaluate("window.scrollTo(0, 0)")  # the sticky header back on top for the full-page shot
        screenshot = tmp_path / "dashboard.png"
        page.screenshot(path=str(screenshot), full_page=True)
        print(f"dashboard screenshot: {screenshot}")
    assert screenshot.stat().st_size > 10_000
    assert errors == []


# `body["userId"]` on an attacker's body: the key (so the error) is the attacker's HTML.
RAISES = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve

async def handler(req: Request) -> JSONResponse:
    body = await req.json()
    return JSONResponse({"user": body[body["field"]]})

serve(handler)
"""


def test_a_failed_runs_error_shows_as_text(functions_dir: Path, tmp_path: Path, page: Page) -> None:
    write_function(functions_dir, "raises", RAISES)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    attack = '<img src=x onerror="window.pwned = 1">'
    db = f"sqlite:///{tmp_path / 'dashboard.db'}"
    with ServerProcess(functions_dir, "--no-watch", "--database-url", db) as server:
        r = httpx.post(server.url("raises"), json={"field": attack}, headers=SERVICE_ROLE, timeout=10)
        assert (r.status_code, r.text) == (500, "Internal Server Error")
        page.goto(f"{server.base_url}/_edgeruntime/")
        run = page.locator("#runs-body tr[data-function='raises'][data-status='failed']").first
        run.wait_for()
        assert f"KeyError: '{attack}'" in run.inner_text()  # the type and message, as text
        assert run.locator("img").count() == 0 and page.evaluate("window.pwned") is None
    assert errors == []
