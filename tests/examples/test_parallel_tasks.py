"""functions/parallel-tasks: four follow-ups of an order run concurrently with asyncio.gather."""

from __future__ import annotations

import pytest

from edgeruntime.testing import EdgeClient
from tests.fakes import FakePostHog, FakeSupabase


async def test_all_four_tasks_run(client: EdgeClient, supabase_rest: FakeSupabase, posthog: FakePostHog) -> None:
    supabase_rest.seed("orders", [{"id": 5, "status": "paid"}])
    r = await client.invoke("parallel-tasks", json={"userId": "u1", "orderId": 5})
    assert r.status_code == 200
    assert r.json() == {"success": True}
    await client.drain()
    assert supabase_rest.rows("notifications") == [
        {"id": 1, "user_id": "u1", "order_id": 5, "kind": "order_confirmation"}
    ]
    assert supabase_rest.rows("orders") == [{"id": 5, "status": "paid", "inventory_reserved": True}]
    assert supabase_rest.rows("fulfillments") == [{"id": 1, "order_id": 5, "status": "requested"}]
    [event] = posthog.events()
    assert event["event"] == "purchase" and event["distinct_id"] == "u1"


async def test_one_failing_task_does_not_stop_the_others(
    client: EdgeClient, supabase_rest: FakeSupabase, caplog: pytest.LogCaptureFixture
) -> None:
    # Like Promise.all: the first error is reported, the other tasks still finish.
    supabase_rest.fail("notifications", "POST")
    r = await client.invoke("parallel-tasks", json={"userId": "u2", "orderId": 6})
    execution_id = r.headers["x-edgeruntime-execution-id"]
    with pytest.raises(ExceptionGroup):
        await client.drain()
    assert execution_id in caplog.text
    # gather() returns at the first error; give the siblings their (bounded) time to finish.
    supabase_rest.wait_for(lambda: len(supabase_rest.rows("fulfillments")) == 1)
    supabase_rest.wait_for(lambda: bool(supabase_rest.writes("orders")))


async def test_the_tasks_run_concurrently(
    client: EdgeClient, supabase_rest: FakeSupabase, posthog: FakePostHog
) -> None:
    posthog.delay = 1.0  # analytics is the third task; the fourth must not wait for it
    r = await client.invoke("parallel-tasks", json={"userId": "u3", "orderId": 9})
    assert r.status_code == 200
    await client.drain()
    [capture] = posthog.received("POST", "/capture")
    [fulfillment] = supabase_rest.writes("fulfillments")
    assert fulfillment.received_at - capture.received_at < 1.0
