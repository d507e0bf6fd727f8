"""functions/batch: the first 100 items are processed in the background, the rest is queued in `job_queue`."""

from __future__ import annotations

from edgeruntime.testing import EdgeClient
from tests.fakes import FakeSupabase


async def test_remainder_is_queued_before_the_response(client: EdgeClient, supabase_rest: FakeSupabase) -> None:
    items = list(range(250))
    r = await client.invoke("batch", json={"items": items})
    assert r.status_code == 200
    assert r.json() == {"accepted": True, "processing": 100, "queued": 150}
    # Queued before the response: a 200 means nothing is lost even if the worker dies now.
    [job] = supabase_rest.rows("job_queue")
    assert job == {"id": 1, "type": "process_items", "payload": items[100:], "status": "pending"}
    await client.drain()
    assert [row["item"] for row in supabase_rest.rows("processed_items")] == items[:100]


async def test_small_batches_queue_nothing(client: EdgeClient, supabase_rest: FakeSupabase) -> None:
    r = await client.invoke("batch", json={"items": ["a", "b"]})
    assert r.json() == {"accepted": True, "processing": 2, "queued": 0}
    await client.drain()
    assert supabase_rest.rows("job_queue") == []
    assert [row["item"] for row in supabase_rest.rows("processed_items")] == ["a", "b"]


async def test_each_item_is_processed_once(client: EdgeClient, supabase_rest: FakeSupabase) -> None:
    # The seed's snippet, run as written, processes the first 100 items twice; the port must not.
    await client.invoke("batch", json={"items": list(range(101))})
    await client.drain()
    assert len(supabase_rest.rows("processed_items")) == 100
    assert supabase_rest.rows("job_queue")[0]["payload"] == [100]
