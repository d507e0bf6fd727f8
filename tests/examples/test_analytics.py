"""functions/analytics: answer first, capture the event in PostHog in the background."""

from __future__ import annotations

import re

import pytest

from edgeruntime.testing import EdgeClient
from tests.examples.conftest import POSTHOG_API_KEY, examples_client
from tests.fakes import FakePostHog

ISO_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def test_event_is_captured_with_request_details(client: EdgeClient, posthog: FakePostHog) -> None:
    r = await client.invoke(
        "analytics",
        json={"action": "signup", "data": {"userId": "u1"}},
        headers={"user-agent": "pytest-agent", "cf-ipcountry": "NL"},
    )
    assert r.status_code == 200
    assert r.json() == {"ok": True, "action": "signup"}
    await client.drain()
    [event] = posthog.events()
    assert event["api_key"] == POSTHOG_API_KEY
    assert event["event"] == "api_request"
    props = event["properties"]
    assert props["action"] == "signup"
    assert props["userId"] == "u1"
    assert props["userAgent"] == "pytest-agent"
    assert props["country"] == "NL"
    assert isinstance(props["duration"], int) and props["duration"] >= 0
    assert ISO_MS_Z.match(props["timestamp"])


async def test_posthog_down_is_logged_and_the_response_is_unaffected(
    example_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    async with examples_client(example_env, POSTHOG_API_KEY="") as client:
        r = await client.invoke("analytics", json={"action": "x", "data": {}})
        assert r.status_code == 200
        await client.drain()
    assert "PostHog capture failed with 401" in caplog.text


async def test_undefined_keys_are_left_out_of_the_event_and_absent_headers_are_null(
    client: EdgeClient, posthog: FakePostHog
) -> None:
    r = await client.invoke("analytics", json={"data": {}}, headers={"user-agent": "pytest-agent"})
    assert r.status_code == 200
    await client.drain()
    [capture] = posthog.received("POST", "/capture")
    props = capture.json()["properties"]
    # JSON.stringify drops `action` and `data.userId` (undefined) but writes the missing header's null.
    assert "action" not in props and "userId" not in props
    assert props["country"] is None and b'"country":null' in capture.body
