"""Running background tasks sequentially: each step needs the result of the one before.

TypeScript original (seeds/background-jobs-waituntil.md, "Running Tasks Sequentially")::

    Deno.serve(async (req) => {
      const { data } = await req.json()
      const response = new Response(JSON.stringify({ accepted: true }))
      EdgeRuntime.waitUntil(
        (async () => {
          const processedData = await step1Process(data)
          const enrichedData = await step2Enrich(processedData)
          await step3Store(enrichedData)
          await step4Notify(enrichedData)
        })()
      )
      return response
    })

Differences: the async IIFE becomes a named coroutine function. The steps are left to the reader
in the seed; here step 1 normalises the text, step 2 adds a word count and a timestamp, step 3
stores the row in `documents` and step 4 mails NOTIFY_EMAIL (when set) through SendGrid. If a step
raises, the later steps do not run and the runtime logs the error with the execution id.

Env: SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY (injected), NOTIFY_EMAIL, SENDGRID_API_KEY, SENDGRID_API_URL.
"""

import logging
from datetime import UTC, datetime
from typing import Any, cast

from _shared.clients import supabase_admin, worker_http
from starlette.requests import Request
from starlette.responses import JSONResponse

from edgeruntime import Deno, EdgeRuntime, serve

logger = logging.getLogger(__name__)

# One connection pool per worker, shared by supabase-py (see functions/_shared/clients.py).
http = worker_http()
supabase = supabase_admin(http)


async def handler(req: Request) -> JSONResponse:
    body = await req.json()
    data: Any = body.get("data")  # `const { data } = await req.json()`: undefined when absent, and the seed goes on

    response = JSONResponse({"accepted": True})

    # Sequential processing: each step depends on the previous one.
    EdgeRuntime.wait_until(process_in_order(data))

    return response


async def process_in_order(data: dict[str, Any]) -> None:
    processed = await step1_process(data)
    enriched = await step2_enrich(processed)
    stored = await step3_store(enriched)
    await step4_notify(stored)


async def step1_process(data: dict[str, Any]) -> dict[str, Any]:
    return {"title": str(data["title"]).strip(), "text": " ".join(str(data["text"]).split())}


async def step2_enrich(data: dict[str, Any]) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {**data, "word_count": len(data["text"].split()), "processed_at": now}


async def step3_store(data: dict[str, Any]) -> dict[str, Any]:
    result = await supabase.table("documents").insert(data).select().single().execute()
    row = cast(dict[str, Any], result.data)
    return row


async def step4_notify(data: dict[str, Any]) -> None:
    to = Deno.env.get("NOTIFY_EMAIL")
    if not to:
        logger.info("document %s stored (%s words)", data["id"], data["word_count"])
        return
    base = Deno.env.get("SENDGRID_API_URL") or "https://api.sendgrid.com"
    response = await http.post(
        f"{base}/v3/mail/send",
        headers={"Authorization": f"Bearer {Deno.env.get('SENDGRID_API_KEY')}"},
        json={
            "personalizations": [{"to": [{"email": to}]}],
            "from": {"email": "noreply@example.com", "name": "Example App"},
            "subject": f"Document #{data['id']} processed",
            "content": [{"type": "text/plain", "value": f"{data['title']}: {data['word_count']} words"}],
        },
    )
    response.raise_for_status()


serve(handler)
