"""examples/schema.sql holds every row the examples write: replay the fake's tables into real PostgreSQL."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest

from edgeruntime.testing import EdgeClient
from tests.examples.conftest import REPO
from tests.examples.test_my_new_job import tasks
from tests.examples.test_stripe_webhook import CHECKOUT, signed
from tests.fakes import FakeSupabase

pytestmark = pytest.mark.postgres


def database_url() -> str:
    url = os.environ.get("EDGERUNTIME_TEST_DATABASE_URL")
    if not url:
        if os.environ.get("EDGERUNTIME_REQUIRE_POSTGRES") == "1":
            pytest.fail("EDGERUNTIME_REQUIRE_POSTGRES=1 but EDGERUNTIME_TEST_DATABASE_URL is not set")
        pytest.skip("set EDGERUNTIME_TEST_DATABASE_URL=postgresql://... to check examples/schema.sql")
    return url


async def run_every_example(client: EdgeClient, supabase_rest: FakeSupabase) -> None:
    supabase_rest.seed("orders", [{"status": "pending"}])
    supabase_rest.seed("subscriptions", [{"stripe_subscription_id": "sub_1", "status": "active"}])
    supabase_rest.seed("tasks", tasks())
    checkout = CHECKOUT.replace(b'"42"', b'"1"')
    await client.invoke("stripe-webhook", content=checkout, headers={"stripe-signature": signed(checkout)}, auth=None)
    await client.invoke("contact-form", json={"email": "a@example.com", "name": "A", "message": "hi"})
    await client.invoke("safe-background", json={"orderId": 1})
    await client.invoke("batch", json={"items": list(range(102))})
    await client.invoke("parallel-tasks", json={"userId": "u1", "orderId": 1})
    await client.invoke("sequential-tasks", json={"data": {"title": "T", "text": "a b"}})
    await client.invoke("my-new-job", json={"executedAt": "2025-01-15T10:00:00Z"})
    await client.drain()
    supabase_rest.fail("processed_events", "POST")
    await client.invoke("safe-background", json={"orderId": 2})
    await client.drain()


async def test_schema_accepts_what_the_examples_write(client: EdgeClient, supabase_rest: FakeSupabase) -> None:
    url = database_url()
    import psycopg

    await run_every_example(client, supabase_rest)
    written = {name: rows for name, rows in supabase_rest.tables.items() if rows}
    assert set(written) == {
        "orders",
        "subscriptions",
        "contact_submissions",
        "processed_events",
        "failed_jobs",
        "processed_items",
        "notifications",
        "fulfillments",
        "documents",
        "tasks",
        "audit_log",
    }
    schema = f"examples_{uuid.uuid4().hex[:12]}"
    ddl = (REPO / "examples" / "schema.sql").read_text().replace("public.", f"{schema}.")
    with psycopg.connect(url, autocommit=False) as conn:
        try:
            conn.execute(f"create schema {schema}")
            conn.execute(ddl)  # a trusted file, not user input
            for table, rows in written.items():
                for row in rows:
                    # As PostgREST inserts: the JSON row cast to the table's record type, given columns only.
                    columns = ", ".join(f'"{c}"' for c in row)
                    conn.execute(
                        f'insert into {schema}."{table}" ({columns}) '
                        f'select {columns} from jsonb_populate_record(null::{schema}."{table}", %s::jsonb)',
                        [json.dumps(row)],
                    )
            count: Any = conn.execute(f"select count(*) from {schema}.tasks where reminded").fetchone()
            assert count[0] == 4
        finally:
            conn.rollback()
