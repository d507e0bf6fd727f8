"""functions/my-new-job: the integration guide's scheduled job (auth, batches, idempotent update, audit log)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from edgeruntime.testing import EdgeClient
from tests.examples.conftest import FUNCTIONS, examples_client
from tests.fakes import FakeSupabase

EXECUTED_AT = "2025-01-15T10:00:00Z"  # the guide's curl body; "tomorrow" is 2025-01-16T10:00:00.000Z


def tasks() -> list[dict[str, Any]]:
    return [
        {"id": 1, "owner": "ada", "due_date": "2025-01-10T00:00:00.000Z", "reminded": False},
        {"id": 2, "owner": "ada", "due_date": "2025-01-16T09:00:00.000Z", "reminded": False},
        {"id": 3, "owner": "bob", "due_date": "2025-01-14T00:00:00.000Z", "reminded": False},
        {"id": 4, "owner": "bob", "due_date": "2025-01-20T00:00:00.000Z", "reminded": False},  # not due
        {"id": 5, "owner": "cy", "due_date": "2025-01-01T00:00:00.000Z", "reminded": True},  # done before
    ]


async def test_local_testing_curl_with_the_anon_key_succeeds(client: EdgeClient, supabase_rest: FakeSupabase) -> None:
    supabase_rest.seed("tasks", tasks())
    r = await client.invoke("my-new-job", json={"executedAt": EXECUTED_AT}, auth="anon")
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.json() == {
        "success": True,
        "results": {"records_processed": 3, "reminded": 3, "per_owner": {"ada": 2, "bob": 1}},
    }
    reminded = {row["id"]: row["reminded"] for row in supabase_rest.rows("tasks")}
    assert reminded == {1: True, 2: True, 3: True, 4: False, 5: True}
    [audit] = supabase_rest.rows("audit_log")
    assert audit["action_type"] == "background_job_execution"
    assert audit["entity_type"] == "background_job"
    details = audit["details"]
    assert details["job_name"] == "my-new-job" and details["status"] == "success"
    assert details["records_processed"] == 3 and details["executed_at"] == EXECUTED_AT
    assert isinstance(details["execution_time_ms"], int)


async def test_second_run_is_idempotent(client: EdgeClient, supabase_rest: FakeSupabase) -> None:
    supabase_rest.seed("tasks", tasks())
    await client.invoke("my-new-job", json={"executedAt": EXECUTED_AT})
    first = supabase_rest.rows("tasks")
    r = await client.invoke("my-new-job", json={"executedAt": EXECUTED_AT})
    assert r.json()["results"] == {"records_processed": 0, "reminded": 0, "per_owner": {}}
    assert supabase_rest.rows("tasks") == first  # reminded_at of the first run kept
    # The update carries the WHERE clause: only unreminded tasks due before tomorrow.
    updates = [w for w in supabase_rest.writes("tasks") if w.method == "PATCH"]
    assert all(
        ("reminded", "eq.false") in w.query and ("due_date", "lt.2025-01-16T10:00:00.000Z") in w.query for w in updates
    )


async def test_reads_in_batches(example_env: dict[str, str], supabase_rest: FakeSupabase) -> None:
    supabase_rest.seed("tasks", tasks())
    async with examples_client(example_env, MY_NEW_JOB_BATCH_SIZE="2") as client:
        r = await client.invoke("my-new-job", json={"executedAt": EXECUTED_AT})
    assert r.json()["results"]["records_processed"] == 3
    pages = [dict(q.query) for q in supabase_rest.received("GET", "/rest/v1/tasks")]
    assert [(p["offset"], p["limit"]) for p in pages] == [("0", "2"), ("2", "2"), ("3", "2")]


async def test_own_api_key_replaces_the_project_keys(example_env: dict[str, str]) -> None:
    async with examples_client(example_env, MY_NEW_JOB_API_KEY="job-secret") as client:
        r = await client.invoke("my-new-job", json={"executedAt": EXECUTED_AT}, auth="anon")
        assert r.status_code == 401
        assert r.text == "Unauthorized"
    # A non-JWT job key needs the gateway's check off (as the guide deploys with --no-verify-jwt).
    async with EdgeClient(
        FUNCTIONS, environ={**example_env, "MY_NEW_JOB_API_KEY": "job-secret"}, no_verify_jwt=True
    ) as client:
        r = await client.invoke("my-new-job", json={}, headers={"Authorization": "Bearer job-secret"}, auth=None)
        assert r.status_code == 200


async def test_without_a_key_the_gateway_answers_401(client: EdgeClient) -> None:
    r = await client.invoke("my-new-job", json={}, auth=None)
    assert r.status_code == 401
    assert r.json() == {"msg": "Error: Missing authorization header"}


async def test_options_is_the_cors_preflight(client: EdgeClient) -> None:
    r = await client.invoke("my-new-job", method="OPTIONS", auth=None)
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["access-control-allow-headers"] == "authorization, x-client-info, apikey, content-type"


async def test_database_failure_is_500_and_audited(
    client: EdgeClient, supabase_rest: FakeSupabase, caplog: pytest.LogCaptureFixture
) -> None:
    supabase_rest.fail("tasks", "GET")
    r = await client.invoke("my-new-job", json={"executedAt": EXECUTED_AT})
    assert r.status_code == 500
    assert r.json() == {"success": False, "error": "injected failure on GET tasks"}
    [audit] = supabase_rest.rows("audit_log")
    assert audit["details"]["status"] == "failed"
    assert "injected failure" in audit["details"]["error_message"]
    assert "Traceback" in audit["details"]["error_stack"]
    assert "[Job] Error" in caplog.text


@pytest.mark.parametrize("body", [b"not json", b'{"executedAt": "yesterday"}', b"[1]"])
async def test_bad_body_is_400(client: EdgeClient, supabase_rest: FakeSupabase, body: bytes) -> None:
    r = await client.invoke("my-new-job", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["success"] is False
    assert supabase_rest.requests == []


async def test_empty_body_means_now(client: EdgeClient, supabase_rest: FakeSupabase) -> None:
    supabase_rest.seed("tasks", tasks())
    r = await client.invoke("my-new-job")
    assert r.status_code == 200
    assert r.json()["results"]["records_processed"] == 4  # everything due before now + 1 day (tasks are from 2025)


def test_cron_entry_in_config_toml(client: EdgeClient) -> None:
    cron = client.settings.config.cron["my-new-job-daily-10am"]
    assert (cron.function, cron.schedule, cron.overlap, cron.timezone) == ("my-new-job", "0 10 * * *", "skip", "UTC")
    assert dict(cron.body) == {"source": "cron"}
    assert client.settings.verify_jwt("stripe-webhook") is False
    assert client.settings.verify_jwt("my-new-job") is True


async def test_executed_at_without_offset_means_utc(client: EdgeClient, supabase_rest: FakeSupabase) -> None:
    supabase_rest.seed("tasks", tasks())
    r = await client.invoke("my-new-job", json={"executedAt": "2025-01-15T10:00:00"})
    assert r.json()["results"]["records_processed"] == 3
    [page] = supabase_rest.received("GET", "/rest/v1/tasks")[:1]
    assert ("due_date", "lt.2025-01-16T10:00:00.000Z") in page.query


async def test_the_cron_entry_runs_the_job_at_its_scheduled_time(
    client: EdgeClient, supabase_rest: FakeSupabase
) -> None:
    """`[cron.my-new-job-daily-10am]` fires through the normal request path with the service role key."""
    supabase_rest.seed("tasks", tasks())
    run = await client.trigger_cron("my-new-job-daily-10am", at=datetime(2025, 1, 15, 10, 0, tzinfo=UTC))
    assert run.status_code == 200, run.text
    assert run.scheduled_for == datetime(2025, 1, 15, 10, 0, tzinfo=UTC).timestamp()
    # executedAt is the scheduled instant, so "tomorrow" is 2025-01-16T10:00Z, as in the guide's curl.
    assert run.json()["results"]["records_processed"] == 3
    [audit] = supabase_rest.rows("audit_log")
    assert audit["details"]["status"] == "success"


async def test_a_failed_audit_row_does_not_fail_a_finished_run(
    client: EdgeClient, supabase_rest: FakeSupabase, caplog: pytest.LogCaptureFixture
) -> None:
    supabase_rest.seed("tasks", tasks())
    supabase_rest.fail("audit_log", "POST")  # the seed never reads this insert's `error`
    r = await client.invoke("my-new-job", json={"executedAt": EXECUTED_AT})
    assert r.status_code == 200, r.text
    assert r.json()["success"] is True and r.json()["results"]["reminded"] == 3
    assert "could not write the success to audit_log" in caplog.text
