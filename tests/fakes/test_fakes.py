"""The fakes speak their services' protocols well enough for the real clients (supabase-py, httpx)."""

from __future__ import annotations

import httpx
import pytest
from postgrest import APIError
from supabase import acreate_client

from tests.fakes import FakePostHog, FakeSendGrid, FakeStripe, FakeSupabase
from tests.helpers import KEYS

ROWS: list[dict[str, object]] = [{"n": 2, "done": False, "due": "2025-01-01"}, {"n": 3, "done": True}]


async def test_supabase_rest_through_supabase_py() -> None:
    with FakeSupabase(api_keys={KEYS.service_role_key}) as fake:
        supabase = await acreate_client(fake.url, KEYS.service_role_key)
        try:
            row = (await supabase.table("t").insert({"n": 1, "done": False}).single().execute()).data
            assert row == {"n": 1, "done": False, "id": 1}
            await supabase.table("t").insert(ROWS).execute()
            page = await supabase.table("t").select("*").eq("done", False).order("n", desc=True).range(0, 0).execute()
            assert page.data == [{"n": 2, "done": False, "due": "2025-01-01", "id": 2}]
            updated = await supabase.table("t").update({"done": True}).lt("due", "2026-01-01").execute()
            assert updated.data == [{"n": 2, "done": True, "due": "2025-01-01", "id": 2}]
            chosen = await supabase.table("t").select("*").in_("n", [1, 3]).execute()
            assert chosen.data == [{"n": 1, "done": False, "id": 1}, {"n": 3, "done": True, "id": 3}]
            with pytest.raises(APIError) as single:
                await supabase.table("t").select("*").eq("done", True).single().execute()
            assert single.value.code == "PGRST116"
            fake.fail("t", "GET", times=1)
            with pytest.raises(APIError):
                await supabase.table("t").select("*").execute()
            assert len((await supabase.table("t").select("*").execute()).data) == 3
            # postgrest-py retries a GET answered 503, as supabase-js does (seed notes).
            fake.fail("t", "GET", status=503, times=1)
            before = len(fake.received("GET", "/rest/v1/t"))
            assert len((await supabase.table("t").select("*").execute()).data) == 3
            assert len(fake.received("GET", "/rest/v1/t")) == before + 2
        finally:
            await supabase.postgrest.aclose()


async def test_supabase_rest_rejects_unknown_keys() -> None:
    with FakeSupabase(api_keys={KEYS.service_role_key}) as fake:
        supabase = await acreate_client(fake.url, KEYS.anon_key)
        try:
            with pytest.raises(APIError):
                await supabase.table("t").select("*").execute()
        finally:
            await supabase.postgrest.aclose()


def test_sendgrid_accepts_then_fails_on_demand() -> None:
    with FakeSendGrid() as fake:
        mail = {"personalizations": [{"to": [{"email": "a@example.com"}]}]}
        auth = {"Authorization": f"Bearer {fake.api_key}"}
        assert httpx.post(f"{fake.url}/v3/mail/send", json=mail, headers=auth).status_code == 202
        assert httpx.post(f"{fake.url}/v3/mail/send", json=mail).status_code == 401
        fake.fail_next(1, status=429)
        assert httpx.post(f"{fake.url}/v3/mail/send", json=mail, headers=auth).status_code == 429
        assert fake.recipients() == ["a@example.com"] * 3


def test_posthog_needs_an_api_key() -> None:
    with FakePostHog() as fake:
        assert httpx.post(f"{fake.url}/capture", json={"api_key": "k", "event": "e"}).json() == {"status": 1}
        assert httpx.post(f"{fake.url}/capture", json={"event": "e"}).status_code == 401
        assert [e["event"] for e in fake.events()] == ["e", "e"]


async def test_stripe_api_through_the_stripe_library() -> None:
    import stripe

    with FakeStripe(api_key="sk_test_fake") as fake:
        fake.customers["cus_1"] = {"email": "c@example.com"}
        http = stripe.HTTPXClient(timeout=5)
        client = stripe.StripeClient("sk_test_fake", base_addresses={"api": fake.url}, http_client=http)
        try:
            customer = await client.v1.customers.retrieve_async("cus_1")
            assert customer.email == "c@example.com"
            with pytest.raises(stripe.InvalidRequestError):
                await client.v1.customers.retrieve_async("cus_2")
            wrong = stripe.StripeClient("sk_test_wrong", base_addresses={"api": fake.url}, http_client=http)
            with pytest.raises(stripe.AuthenticationError):
                await wrong.v1.customers.retrieve_async("cus_1")
        finally:
            await http.close_async()  # type: ignore[no-untyped-call]  # untyped in stripe
