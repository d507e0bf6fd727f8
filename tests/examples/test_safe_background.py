"""functions/safe-background: a failed background step is logged and stored in `failed_jobs` for retry."""

from __future__ import annotations

import re

import pytest

from edgeruntime.testing import EdgeClient
from tests.examples.conftest import examples_client
from tests.fakes import FakeSendGrid, FakeSupabase


async def test_success_stores_the_event_and_no_failed_job(client: EdgeClient, supabase_rest: FakeSupabase) -> None:
    r = await client.invoke("safe-background", json={"orderId": 7})
    assert r.status_code == 202
    assert r.json() == {"accepted": True}
    await client.drain()
    assert supabase_rest.rows("processed_events") == [{"id": 1, "payload": {"orderId": 7}}]
    assert supabase_rest.rows("failed_jobs") == []


async def test_failure_is_stored_for_retry_logged_and_alerted(
    example_env: dict[str, str], supabase_rest: FakeSupabase, sendgrid: FakeSendGrid, caplog: pytest.LogCaptureFixture
) -> None:
    supabase_rest.fail("processed_events", "POST")
    async with examples_client(example_env, ALERT_EMAIL="oncall@example.com") as client:
        r = await client.invoke("safe-background", json={"orderId": 8})
        assert r.status_code == 202
        await client.drain()  # the error was handled: nothing reaches the runtime
    [job] = supabase_rest.rows("failed_jobs")
    assert job["data"] == {"orderId": 8}
    assert job["error"] == "injected failure on POST processed_events"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", job["timestamp"])
    assert "Background processing failed" in caplog.text
    assert sendgrid.recipients() == ["oncall@example.com"]


async def test_the_alert_goes_out_when_storing_the_failed_job_fails_too(
    example_env: dict[str, str], supabase_rest: FakeSupabase, sendgrid: FakeSendGrid, caplog: pytest.LogCaptureFixture
) -> None:
    supabase_rest.fail("processed_events", "POST")
    supabase_rest.fail("failed_jobs", "POST")  # the seed never reads storeFailedJob's `error`
    async with examples_client(example_env, ALERT_EMAIL="oncall@example.com") as client:
        r = await client.invoke("safe-background", json={"orderId": 9})
        assert r.status_code == 202
        await client.drain()
        assert client.failed == []
    assert "Could not store the failed job" in caplog.text
    assert sendgrid.recipients() == ["oncall@example.com"]
