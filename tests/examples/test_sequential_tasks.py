"""functions/sequential-tasks: process, enrich, store, notify, each step after the one before."""

from __future__ import annotations

import pytest

from edgeruntime.testing import EdgeClient
from tests.examples.conftest import examples_client
from tests.fakes import FakeSendGrid, FakeSupabase

DOC = {"data": {"title": "  Report ", "text": "one   two\nthree"}}


async def test_steps_run_in_order(
    example_env: dict[str, str], supabase_rest: FakeSupabase, sendgrid: FakeSendGrid
) -> None:
    async with examples_client(example_env, NOTIFY_EMAIL="editor@example.com") as client:
        r = await client.invoke("sequential-tasks", json=DOC)
        assert r.status_code == 200
        assert r.json() == {"accepted": True}
        await client.drain()
    [row] = supabase_rest.rows("documents")
    assert row["title"] == "Report" and row["text"] == "one two three" and row["word_count"] == 3
    assert row["processed_at"].endswith("Z")
    [mail] = sendgrid.sent
    # Step 4 used step 3's result (the stored row's id) and ran after it.
    assert mail.json()["subject"] == f"Document #{row['id']} processed"
    [store] = supabase_rest.writes("documents")
    assert store.received_at <= mail.received_at


async def test_a_failing_step_stops_the_later_ones(
    example_env: dict[str, str], supabase_rest: FakeSupabase, sendgrid: FakeSendGrid, caplog: pytest.LogCaptureFixture
) -> None:
    supabase_rest.fail("documents", "POST")
    async with examples_client(example_env, NOTIFY_EMAIL="editor@example.com") as client:
        r = await client.invoke("sequential-tasks", json=DOC)
        with pytest.raises(ExceptionGroup):
            await client.drain()
    assert sendgrid.sent == []
    assert f"(execution {r.headers['x-edgeruntime-execution-id']})" in caplog.text


async def test_bad_input_fails_in_the_background_not_the_response(client: EdgeClient) -> None:
    r = await client.invoke("sequential-tasks", json={"data": {"title": "no text"}})
    assert r.status_code == 200
    with pytest.raises(ExceptionGroup) as raised:
        await client.drain()
    assert isinstance(raised.value.exceptions[0], KeyError)
