"""Designing for limits: process the first 100 items in the background, queue the rest.

TypeScript original (seeds/background-jobs-waituntil.md, "Designing for Limits", the "Best" variant)::

    Deno.serve(async (req) => {
      const { items } = await req.json()
      EdgeRuntime.waitUntil(processBatch(items.slice(0, 100)))  // Process only first 100
      if (items.length > 100) {
        await queueRemainingItems(items.slice(100))             // Queue remaining
      }
      return new Response(JSON.stringify({ accepted: true }))
    })

    async function queueRemainingItems(items: unknown[]) {
      const supabase = createClient(Deno.env.get('SUPABASE_URL')!, Deno.env.get('SUPABASE_SERVICE_ROLE_KEY')!)
      // Store for later processing by a cron job
      await supabase.from('job_queue').insert({ type: 'process_items', payload: items, status: 'pending' })
    }

Differences: the seed's handler shows its three alternatives one after the other (run as written
it processes the first 100 items twice); this port keeps only the "Best" one. ``processBatch`` is
left to the reader; here it stores the batch in `processed_items` in one insert. Instead of a
`job_queue` table that a cron job must poll, the remainder goes on edgeruntime's durable queue
(`edgeruntime.jobs.enqueue`): it is committed before the response, so a 200 means nothing is lost,
and the queue POSTs it back to this function, which processes the next 100 and queues the rest,
until nothing is left (retried with backoff if a delivery fails).

Env: SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY (injected by the runtime).
"""

from typing import Any

from _shared.clients import supabase_admin, worker_http
from postgrest import ReturnMethod
from starlette.requests import Request
from starlette.responses import JSONResponse

from edgeruntime import EdgeRuntime, serve
from edgeruntime.jobs import enqueue

# One connection pool per worker, shared by supabase-py (see functions/_shared/clients.py).
http = worker_http()
supabase = supabase_admin(http)

#: How many items one invocation processes; the rest is queued.
BATCH_LIMIT = 100


async def handler(req: Request) -> JSONResponse:
    body = await req.json()
    items: list[Any] = body["items"]

    # Process only the first BATCH_LIMIT items, in the background.
    EdgeRuntime.wait_until(process_batch(items[:BATCH_LIMIT]))

    # Queue the remainder for separate processing.
    queued = len(items) - BATCH_LIMIT
    if queued > 0:
        await queue_remaining_items(items[BATCH_LIMIT:])

    return JSONResponse({"accepted": True, "processing": min(len(items), BATCH_LIMIT), "queued": max(queued, 0)})


async def process_batch(items: list[Any]) -> None:
    if not items:
        return
    rows = [{"item": item} for item in items]
    await supabase.table("processed_items").insert(rows, returning=ReturnMethod.minimal).execute()


async def queue_remaining_items(items: list[Any]) -> None:
    # Delivered later as a POST of {"items": [...]} to this same function.
    await enqueue("batch", {"items": items})


serve(handler)
