"""functions/batch: the first 100 items are processed in the background, the rest goes on the queue."""

from __future__ import annotations

import json

from edgeruntime.jobs.store import JobStatus
from edgeruntime.testing import EdgeClient
from tests.fakes import FakeSupabase


def processed(supabase_rest: FakeSupabase) -> list[object]:
    return [row["item"] for row in supabase_rest.rows("processed_items")]


async def test_remainder_is_queued_before_the_response(client: EdgeClient, supabase_rest: FakeSupabase) -> None:
    items = list(range(250))
    r = await client.invoke("batch", json={"items": items})
    assert r.status_code == 200
    assert r.json() == {"accepted": True, "processing": 100, "queued": 150}
    # Committed to the queue before the response: a 200 means nothing is lost even if the worker dies now.
    [job] = await client.jobs.store.jobs(JobStatus.QUEUED)
    assert (job.function, json.loads(job.payload)) == ("batch", {"items": items[100:]})
    await client.drain()
    assert processed(supabase_rest) == items[:100]


async def test_the_queue_works_through_the_remainder(client: EdgeClient, supabase_rest: FakeSupabase) -> None:
    items = list(range(250))
    await client.invoke("batch", json={"items": items})
    deliveries = await client.run_jobs()  # 150 left → a job of 150 → it processes 100, queues 50 → ...
    await client.drain()
    assert [(d.status, d.http_status) for d in deliveries] == [("succeeded", 200)] * 2
    # Each batch is written by a background task of its own invocation: the second delivery's may
    # land before the first's. Every item once, in whatever order the batches landed.
    assert sorted(processed(supabase_rest)) == items  # type: ignore[type-var]
    assert await client.jobs.store.jobs(JobStatus.QUEUED) == []


async def test_small_batches_queue_nothing(client: EdgeClient, supabase_rest: FakeSupabase) -> None:
    r = await client.invoke("batch", json={"items": ["a", "b"]})
    assert r.json() == {"accepted": True, "processing": 2, "queued": 0}
    await client.drain()
    assert await client.run_jobs() == []
    assert processed(supabase_rest) == ["a", "b"]


async def test_each_item_is_processed_once(client: EdgeClient, supabase_rest: FakeSupabase) -> None:
    # The seed's snippet, run as written, processes the first 100 items twice; the port must not.
    await client.invoke("batch", json={"items": list(range(101))})
    await client.run_jobs()
    await client.drain()
    assert sorted(processed(supabase_rest)) == list(range(101))  # type: ignore[type-var]
