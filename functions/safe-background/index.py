"""Catching background errors: a failed background step is logged and stored in `failed_jobs` for retry.

TypeScript original (seeds/background-jobs-waituntil.md, "Catching Background Errors")::

    Deno.serve(async (req) => {
      const data = await req.json()
      const response = new Response(JSON.stringify({ accepted: true }), { status: 202 })
      EdgeRuntime.waitUntil(safeBackgroundProcess(data))
      return response
    })

    async function safeBackgroundProcess(data: unknown) {
      try {
        await riskyOperation(data)
      } catch (error) {
        console.error('Background processing failed:', error)
        await storeFailedJob({ data, error: error.message, timestamp: new Date().toISOString() })
        await alertOnFailure(error)
      }
    }

    async function storeFailedJob(job: Record<string, unknown>) {
      const supabase = createClient(Deno.env.get('SUPABASE_URL')!, Deno.env.get('SUPABASE_SERVICE_ROLE_KEY')!)
      await supabase.from('failed_jobs').insert(job)
    }

Differences: ``riskyOperation`` is left to the reader in the seed; here it writes the payload to
the `processed_events` table, which fails when the database does. ``alertOnFailure`` mails
ALERT_EMAIL through SendGrid when it is set. The seed never reads ``storeFailedJob``'s ``error``:
when that insert fails too, the port logs it and still sends the alert (supabase-py raises where
supabase-js returns ``error``). The response is JSON (the seed's has no content type).
edgeruntime's own durable queue (`edgeruntime.jobs`) retries and keeps failed jobs for you; this
example shows the hand-made version the seed describes.

Env: SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY (injected), ALERT_EMAIL, SENDGRID_API_KEY, SENDGRID_API_URL.
"""

import logging
from datetime import UTC, datetime
from typing import Any

import httpx
from _shared.clients import supabase_admin, worker_http
from postgrest import APIError, ReturnMethod
from starlette.requests import Request
from starlette.responses import JSONResponse

from edgeruntime import Deno, EdgeRuntime, serve

logger = logging.getLogger(__name__)

# One connection pool per worker, shared by supabase-py (see functions/_shared/clients.py).
http = worker_http()
supabase = supabase_admin(http)


async def handler(req: Request) -> JSONResponse:
    data = await req.json()

    # Respond immediately.
    response = JSONResponse({"accepted": True}, status_code=202)

    # Wrap the background work in error handling.
    EdgeRuntime.wait_until(safe_background_process(data))

    return response


async def safe_background_process(data: Any) -> None:
    try:
        await risky_operation(data)
    except Exception as error:
        # Log the error for debugging.
        logger.exception("Background processing failed: %s", error)
        # Store it for retry.
        await store_failed_job(
            {
                "data": data,
                "error": message_of(error),
                "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            }
        )
        # Alert.
        await alert_on_failure(error)


async def risky_operation(data: Any) -> None:
    await supabase.table("processed_events").insert({"payload": data}, returning=ReturnMethod.minimal).execute()


async def store_failed_job(job: dict[str, Any]) -> None:
    try:
        await supabase.table("failed_jobs").insert(job, returning=ReturnMethod.minimal).execute()
    except (APIError, httpx.HTTPError) as error:
        # The seed never reads this insert's `error`: the alert below still goes out.
        logger.error("Could not store the failed job: %s", error)


async def alert_on_failure(error: Exception) -> None:
    to = Deno.env.get("ALERT_EMAIL")
    if not to:
        return
    base = Deno.env.get("SENDGRID_API_URL") or "https://api.sendgrid.com"
    response = await http.post(
        f"{base}/v3/mail/send",
        headers={"Authorization": f"Bearer {Deno.env.get('SENDGRID_API_KEY')}"},
        json={
            "personalizations": [{"to": [{"email": to}]}],
            "from": {"email": "noreply@example.com", "name": "Example App"},
            "subject": "Background job failed",
            "content": [{"type": "text/plain", "value": f"safe-background failed: {message_of(error)}"}],
        },
    )
    if not response.is_success:
        logger.error("Failed to send the failure alert: %s", response.text)


def message_of(error: Exception) -> str:
    """`error.message` of the seed: PostgREST errors carry theirs in `.message`."""
    return error.message if isinstance(error, APIError) and error.message else str(error)


serve(handler)
