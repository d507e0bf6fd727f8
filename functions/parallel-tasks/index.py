"""Running background tasks in parallel: four independent follow-ups of an order.

TypeScript original (seeds/background-jobs-waituntil.md, "Running Tasks in Parallel")::

    Deno.serve(async (req) => {
      const { userId, orderId } = await req.json()
      const response = new Response(JSON.stringify({ success: true }))
      EdgeRuntime.waitUntil(
        Promise.all([
          sendOrderConfirmation(userId, orderId),
          updateInventory(orderId),
          logPurchaseAnalytics(userId, orderId),
          triggerFulfillment(orderId),
        ])
      )
      return response
    })

Differences: ``asyncio.gather`` is ``Promise.all``: when one task fails the others keep running and
the first error is what the runtime reports (with the execution id). The four tasks are left to
the reader in the seed; here they write to Supabase (`notifications`, `orders`, `fulfillments`)
and PostHog. The seed's response has no content type (Deno sends text/plain); this one is JSON.

Env: SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY (injected), POSTHOG_API_KEY, POSTHOG_HOST.
"""

import asyncio
from typing import Any

from _shared.clients import supabase_admin, worker_http
from postgrest import ReturnMethod
from starlette.requests import Request
from starlette.responses import JSONResponse

from edgeruntime import Deno, EdgeRuntime, serve

# One connection pool per worker, shared by supabase-py (see functions/_shared/clients.py).
http = worker_http()
supabase = supabase_admin(http)


async def handler(req: Request) -> JSONResponse:
    body = await req.json()
    user_id, order_id = body.get("userId"), body.get("orderId")  # `undefined` in TypeScript when absent

    # Respond immediately.
    response = JSONResponse({"success": True})

    # Run the background tasks in parallel.
    EdgeRuntime.wait_until(
        asyncio.gather(
            send_order_confirmation(user_id, order_id),
            update_inventory(order_id),
            log_purchase_analytics(user_id, order_id),
            trigger_fulfillment(order_id),
        )
    )

    return response


async def send_order_confirmation(user_id: str, order_id: Any) -> None:
    # An outbox row that the mailer picks up.
    notification = {"user_id": user_id, "order_id": order_id, "kind": "order_confirmation"}
    await supabase.table("notifications").insert(notification, returning=ReturnMethod.minimal).execute()


async def update_inventory(order_id: Any) -> None:
    await (
        supabase.table("orders")
        .update({"inventory_reserved": True}, returning=ReturnMethod.minimal)
        .eq("id", order_id)
        .execute()
    )


async def log_purchase_analytics(user_id: str, order_id: Any) -> None:
    host = Deno.env.get("POSTHOG_HOST") or "https://api.posthog.com"
    response = await http.post(
        f"{host}/capture",
        json={
            "api_key": Deno.env.get("POSTHOG_API_KEY"),
            "event": "purchase",
            "distinct_id": user_id,
            "properties": {"orderId": order_id},
        },
    )
    response.raise_for_status()


async def trigger_fulfillment(order_id: Any) -> None:
    await (
        supabase.table("fulfillments")
        .insert({"order_id": order_id, "status": "requested"}, returning=ReturnMethod.minimal)
        .execute()
    )


serve(handler)
