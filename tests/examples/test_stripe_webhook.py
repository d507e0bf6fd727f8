"""functions/stripe-webhook: the real `stripe` library checks the signature; the order is updated in the background."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import pytest

from edgeruntime.testing import EdgeClient
from tests.examples.conftest import STRIPE_WEBHOOK_SECRET
from tests.fakes import FakeSendGrid, FakeStripe, FakeSupabase


def signed(payload: bytes, secret: str = STRIPE_WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """A `Stripe-Signature` header as Stripe computes it (HMAC-SHA256 of `t.payload`)."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def event(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps(
        {"id": "evt_1", "object": "event", "type": kind, "api_version": "2023-10-16", "data": {"object": obj}}
    ).encode()


CHECKOUT = event(
    "checkout.session.completed",
    {
        "id": "cs_test_1",
        "object": "checkout.session",
        "client_reference_id": "42",
        "customer_email": "buyer@example.com",
    },
)


async def test_checkout_completed_marks_the_order_paid(
    client: EdgeClient, supabase_rest: FakeSupabase, sendgrid: FakeSendGrid
) -> None:
    supabase_rest.seed("orders", [{"id": 42, "status": "pending"}, {"id": 43, "status": "pending"}])
    r = await client.invoke(
        "stripe-webhook", content=CHECKOUT, headers={"stripe-signature": signed(CHECKOUT)}, auth=None
    )
    assert r.status_code == 200
    assert r.json() == {"received": True}
    await client.drain()
    assert supabase_rest.rows("orders") == [
        {"id": 42, "status": "paid", "stripe_session_id": "cs_test_1"},
        {"id": 43, "status": "pending"},
    ]
    assert sendgrid.recipients() == ["buyer@example.com"]


async def test_bad_signature_is_400_and_nothing_is_processed(client: EdgeClient, supabase_rest: FakeSupabase) -> None:
    for header in (signed(CHECKOUT, secret="whsec_wrong"), "garbage", ""):
        r = await client.invoke("stripe-webhook", content=CHECKOUT, headers={"stripe-signature": header}, auth=None)
        assert r.status_code == 400
        assert r.text == "Invalid signature"
    tampered = CHECKOUT.replace(b'"42"', b'"43"')
    good_signature = {"stripe-signature": signed(CHECKOUT)}
    r = await client.invoke("stripe-webhook", content=tampered, headers=good_signature, auth=None)
    assert r.status_code == 400
    await client.drain()
    assert supabase_rest.writes("orders") == []


async def test_stale_signature_is_rejected(client: EdgeClient) -> None:
    old = signed(CHECKOUT, timestamp=int(time.time()) - 3600)  # beyond stripe's 300 s tolerance
    r = await client.invoke("stripe-webhook", content=CHECKOUT, headers={"stripe-signature": old}, auth=None)
    assert r.status_code == 400


async def test_subscription_updated(client: EdgeClient, supabase_rest: FakeSupabase) -> None:
    supabase_rest.seed("subscriptions", [{"id": 1, "stripe_subscription_id": "sub_1", "status": "active"}])
    payload = event(
        "customer.subscription.updated",
        {"id": "sub_1", "object": "subscription", "status": "past_due", "current_period_end": 1736935200},
    )
    r = await client.invoke("stripe-webhook", content=payload, headers={"stripe-signature": signed(payload)}, auth=None)
    assert r.status_code == 200
    await client.drain()
    assert supabase_rest.rows("subscriptions") == [
        {
            "id": 1,
            "stripe_subscription_id": "sub_1",
            "status": "past_due",
            "current_period_end": "2025-01-15T10:00:00.000Z",
        }
    ]


async def test_webhook_needs_no_jwt_but_other_functions_do(client: EdgeClient) -> None:
    r = await client.invoke("stripe-webhook", content=CHECKOUT, headers={"stripe-signature": "x"}, auth=None)
    assert r.status_code == 400  # reached the function: config.toml sets verify_jwt = false
    r = await client.invoke("contact-form", json={}, auth=None)
    assert r.status_code == 401


async def test_customer_email_is_fetched_from_the_stripe_api(
    client: EdgeClient, supabase_rest: FakeSupabase, sendgrid: FakeSendGrid, stripe_api: FakeStripe
) -> None:
    stripe_api.customers["cus_1"] = {"email": "customer@example.com"}
    supabase_rest.seed("orders", [{"id": 7, "status": "pending"}])
    payload = event(
        "checkout.session.completed",
        {"id": "cs_2", "object": "checkout.session", "client_reference_id": "7", "customer": "cus_1"},
    )
    r = await client.invoke("stripe-webhook", content=payload, headers={"stripe-signature": signed(payload)}, auth=None)
    assert r.status_code == 200
    await client.drain()
    [call] = stripe_api.received("GET", "/v1/customers/cus_1")
    assert call.header("authorization") == f"Bearer {stripe_api.api_key}"
    assert sendgrid.recipients() == ["customer@example.com"]
    assert supabase_rest.rows("orders")[0]["status"] == "paid"


async def test_stripe_api_error_is_reported_with_the_execution_id(
    client: EdgeClient, stripe_api: FakeStripe, caplog: pytest.LogCaptureFixture
) -> None:
    payload = event(
        "checkout.session.completed",
        {"id": "cs_3", "object": "checkout.session", "client_reference_id": "8", "customer": "cus_missing"},
    )
    r = await client.invoke("stripe-webhook", content=payload, headers={"stripe-signature": signed(payload)}, auth=None)
    assert r.status_code == 200  # Stripe got its answer; the failure is ours to see in the logs
    with pytest.raises(ExceptionGroup) as raised:
        await client.drain()
    assert "No such customer: 'cus_missing'" in str(raised.value.exceptions[0])
    assert r.headers["x-edgeruntime-execution-id"] in caplog.text


async def test_a_failed_order_update_still_sends_the_mail_as_the_seed_does(
    client: EdgeClient, supabase_rest: FakeSupabase, sendgrid: FakeSendGrid, caplog: pytest.LogCaptureFixture
) -> None:
    supabase_rest.seed("orders", [{"id": 42, "status": "pending"}])
    supabase_rest.fail("orders", "PATCH")  # the seed never reads this update's `error`
    r = await client.invoke(
        "stripe-webhook", content=CHECKOUT, headers={"stripe-signature": signed(CHECKOUT)}, auth=None
    )
    assert r.status_code == 200
    await client.drain()  # nothing failed in the background: the error was logged, as supabase-js returns it
    assert client.failed == []
    assert sendgrid.recipients() == ["buyer@example.com"]
    assert "updating order 42 failed" in caplog.text


async def test_the_update_asks_for_no_rows_as_supabase_js_without_select(
    client: EdgeClient, supabase_rest: FakeSupabase
) -> None:
    supabase_rest.seed("orders", [{"id": 42, "status": "pending"}])
    await client.invoke("stripe-webhook", content=CHECKOUT, headers={"stripe-signature": signed(CHECKOUT)}, auth=None)
    await client.drain()
    [update] = supabase_rest.writes("orders")
    assert (update.method, update.header("prefer")) == ("PATCH", "return=minimal")  # PostgREST answers 204
