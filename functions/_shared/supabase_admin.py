"""The seeds' `createClient(Deno.env.get("SUPABASE_URL"), Deno.env.get("SUPABASE_SERVICE_ROLE_KEY"))`, shared.

`functions/_shared/` is never served (its name starts with `_`), and the functions directory is
on the import path while functions load: `from _shared.supabase_admin import supabase_admin`.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from supabase import AsyncClient, acreate_client

from edgeruntime import Deno


@asynccontextmanager
async def supabase_admin() -> AsyncIterator[AsyncClient]:
    """`createClient(SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY)`; its connections close on exit."""
    client = await acreate_client(Deno.env.get("SUPABASE_URL") or "", Deno.env.get("SUPABASE_SERVICE_ROLE_KEY") or "")
    try:
        yield client
    finally:
        await client.postgrest.aclose()
