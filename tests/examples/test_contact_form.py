"""functions/contact-form: saved through supabase-py, emails through SendGrid's HTTP API in the background."""

from __future__ import annotations

import pytest

from edgeruntime.testing import EdgeClient
from tests.examples.conftest import examples_client
from tests.fakes import FakeSendGrid, FakeSupabase
from tests.helpers import free_port


async def test_submission_is_saved_and_confirmed_by_mail(
    client: EdgeClient, supabase_rest: FakeSupabase, sendgrid: FakeSendGrid
) -> None:
    r = await client.invoke("contact-form", json={"email": "ada@example.com", "name": "Ada", "message": "Hello"})
    assert r.status_code == 200
    assert r.json() == {"success": True, "id": 1}
    assert supabase_rest.rows("contact_submissions") == [
        {"id": 1, "email": "ada@example.com", "name": "Ada", "message": "Hello"}
    ]
    await client.drain()
    [mail] = sendgrid.sent
    payload = mail.json()
    assert mail.header("authorization") == f"Bearer {sendgrid.api_key}"
    assert payload["personalizations"] == [{"to": [{"email": "ada@example.com"}]}]
    assert payload["subject"] == "We received your message"
    assert payload["content"][0]["value"] == "Hi Ada, thanks for reaching out. We'll get back to you soon."


async def test_team_is_notified_when_team_email_is_set(
    example_env: dict[str, str], sendgrid: FakeSendGrid, supabase_rest: FakeSupabase
) -> None:
    async with examples_client(example_env, TEAM_EMAIL="team@example.com") as client:
        r = await client.invoke("contact-form", json={"email": "bob@example.com", "message": "Hi there"})
        assert r.status_code == 200
        await client.drain()
    assert sorted(sendgrid.recipients()) == ["bob@example.com", "team@example.com"]
    # A missing name is left out of the row (as JSON.stringify drops undefined), and the mail copes.
    assert "name" not in supabase_rest.rows("contact_submissions")[0]
    texts = {m.json()["personalizations"][0]["to"][0]["email"]: m.json()["content"][0]["value"] for m in sendgrid.sent}
    assert texts["bob@example.com"].startswith("Hi there,")


@pytest.mark.parametrize(
    "body", [{}, {"email": "a@example.com"}, {"message": "hi"}, {"email": "", "message": "x"}, ["a@example.com"]]
)
async def test_missing_fields_are_400(client: EdgeClient, supabase_rest: FakeSupabase, body: object) -> None:
    r = await client.invoke("contact-form", json=body)
    assert r.status_code == 400
    assert r.json() == {"error": "Missing required fields"}
    assert supabase_rest.writes("contact_submissions") == []


async def test_save_failure_is_500_and_sends_nothing(
    client: EdgeClient, supabase_rest: FakeSupabase, sendgrid: FakeSendGrid
) -> None:
    supabase_rest.fail("contact_submissions", "POST")
    r = await client.invoke("contact-form", json={"email": "a@example.com", "message": "hi"})
    assert r.status_code == 500
    assert r.json() == {"error": "Failed to save"}
    await client.drain()
    assert sendgrid.sent == []


async def test_failed_email_is_logged_not_raised(
    client: EdgeClient, sendgrid: FakeSendGrid, caplog: pytest.LogCaptureFixture
) -> None:
    sendgrid.fail_next(1, status=503)
    r = await client.invoke("contact-form", json={"email": "a@example.com", "message": "hi"})
    assert r.status_code == 200
    await client.drain()  # raises if the background work raised: it must not
    assert client.failed == []
    assert "Failed to send confirmation email:" in caplog.text
    assert "upstream unavailable" in caplog.text


async def test_invalid_json_is_400(client: EdgeClient, supabase_rest: FakeSupabase) -> None:
    r = await client.invoke("contact-form", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json() == {"error": "Invalid JSON"}
    assert supabase_rest.requests == []


async def test_unreachable_mail_api_is_logged_not_raised(
    example_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # bound, then closed: nothing listens there
    async with examples_client(example_env, SENDGRID_API_URL=closed, TEAM_EMAIL="team@example.com") as client:
        r = await client.invoke("contact-form", json={"email": "a@example.com", "message": "hi"})
        assert r.status_code == 200
        await client.drain()
        assert client.failed == []
    assert "Failed to send confirmation email: ConnectError" in caplog.text
    assert "Failed to notify the team: ConnectError" in caplog.text


async def test_the_insert_is_the_seeds_request_and_keeps_a_null_name(
    client: EdgeClient, supabase_rest: FakeSupabase
) -> None:
    r = await client.invoke("contact-form", json={"email": "a@example.com", "name": None, "message": "hi"})
    assert r.status_code == 200
    [insert] = supabase_rest.writes("contact_submissions")
    # .insert({ email, name, message }).select().single(), byte for byte as supabase-js sends it
    assert insert.query == (("select", "*"),) and insert.header("prefer") == "return=representation"
    assert insert.body == b'{"email":"a@example.com","name":null,"message":"hi"}'
    await client.drain()


async def test_an_unreachable_database_is_the_seeds_500_not_a_crash(example_env: dict[str, str]) -> None:
    # supabase-js returns a failed fetch as `error` (the seed's 500 JSON); supabase-py raises httpx.ConnectError.
    async with examples_client(example_env, SUPABASE_URL=f"http://127.0.0.1:{free_port()}") as client:
        r = await client.invoke("contact-form", json={"email": "a@example.com", "message": "hi"})
        assert r.status_code == 500
        assert r.json() == {"error": "Failed to save"}
