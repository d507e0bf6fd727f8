"""The clients of a worker, made once when the worker loads its function (see docs/porting.md).

Call these at a function module's top level: each worker gets its own connection pool, which
supabase-py shares, closed when the worker is dropped with nothing in flight or pending. A client
per call would load the CA certificates each time, on the function's CPU budget.
"""

import httpx
from supabase import AsyncClient, AsyncClientOptions

from edgeruntime import Deno, EdgeRuntime
from edgeruntime.runtime import BeforeUnloadEvent


def worker_http(timeout: float = 10) -> httpx.AsyncClient:
    """An HTTP client for the worker loading the calling module, closed at its early drop."""
    http = httpx.AsyncClient(timeout=timeout)

    async def close(event: BeforeUnloadEvent) -> None:
        # Only at early_drop can nothing still use it: at a limit or at termination, background
        # work may be sending while beforeunload runs (the connections close with the process).
        if event.reason == "early_drop":
            await http.aclose()

    EdgeRuntime.on("beforeunload", close)
    return http


def supabase_admin(http: httpx.AsyncClient) -> AsyncClient:
    """A service-role supabase-py client over the worker's connection pool (`http`)."""
    return AsyncClient(
        Deno.env.get("SUPABASE_URL") or "",
        Deno.env.get("SUPABASE_SERVICE_ROLE_KEY") or "",
        AsyncClientOptions(httpx_client=http),
    )
