"""Webhook processing: verify Stripe's signature, answer at once, update the order in the background.

TypeScript original (seeds/background-jobs-waituntil.md, "Use Case 1: Webhook Processing")::

    const stripe = new Stripe(Deno.env.get('STRIPE_SECRET_KEY')!, { apiVersion: '2023-10-16' })

    Deno.serve(async (req) => {
      const signature = req.headers.get('stripe-signature')!
      const body = await req.text()
      let event: Stripe.Event
      try {
        event = stripe.webhooks.constructEvent(body, signature, Deno.env.get('STRIPE_WEBHOOK_SECRET')!)
      } catch (err) {
        return new Response('Invalid signature', { status: 400 })
      }
      const response = new Response(JSON.stringify({ received: true }), {
        status: 200, headers: { 'Content-Type': 'application/json' },
      })
      EdgeRuntime.waitUntil(processStripeEvent(event))
      return response
    })

    async function processStripeEvent(event: Stripe.Event) {
      const supabase = createClient(Deno.env.get('SUPABASE_URL')!, Deno.env.get('SUPABASE_SERVICE_ROLE_KEY')!)
      switch (event.type) {
        case 'checkout.session.completed':
          const session = event.data.object as Stripe.Checkout.Session
          await supabase.from('orders').update({ status: 'paid', stripe_session_id: session.id })
            .eq('id', session.client_reference_id)
          await sendOrderConfirmationEmail(session.customer_email!)
          break
        case 'customer.subscription.updated':
          const subscription = event.data.object as Stripe.Subscription
          await supabase.from('subscriptions').update({
            status: subscription.status,
            current_period_end: new Date(subscription.current_period_end * 1000),
          }).eq('stripe_subscription_id', subscription.id)
          break
      }
    }

Differences: Python's ``stripe.Webhook.construct_event`` is synchronous and works (under Deno the
synchronous ``constructEvent`` fails for every payload; TypeScript needs ``constructEventAsync``).
The seed assumes ``session.customer_email!``; when a session has none, the port fetches the
email of the session's customer from Stripe's API, whose base is ``STRIPE_API_BASE`` (default
https://api.stripe.com); the mail API's is ``SENDGRID_API_URL``. The seed's updates have no
``.select()``: supabase-js gets 204 without rows, and so does the port
(``returning=ReturnMethod.minimal``). It never reads their ``error`` either: a failed order update
is logged and the confirmation mail still goes out, as in TypeScript. One HTTP client per worker
(and one Stripe client). config.toml sets ``verify_jwt = false`` for this function: Stripe sends
no JWT.

Env: STRIPE_WEBHOOK_SECRET (required), STRIPE_SECRET_KEY, STRIPE_API_BASE, SENDGRID_API_KEY,
SENDGRID_API_URL, SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY (injected by the runtime).
"""

import logging
from datetime import UTC, datetime
from typing import Any

import httpx
import stripe
from _shared.clients import supabase_admin, worker_http
from postgrest import APIError, ReturnMethod
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from supabase import AsyncClient

from edgeruntime import Deno, EdgeRuntime, serve
from edgeruntime.runtime import BeforeUnloadEvent

logger = logging.getLogger(__name__)

# One connection pool per worker, shared by supabase-py and the mail calls; and, like the seed's
# module-level `new Stripe(...)`, one Stripe client, whose API calls go to STRIPE_API_BASE.
http = worker_http()
supabase = supabase_admin(http)
stripe_http = stripe.HTTPXClient(timeout=10)
stripe_client = stripe.StripeClient(
    Deno.env.get("STRIPE_SECRET_KEY") or "",
    base_addresses={"api": Deno.env.get("STRIPE_API_BASE") or "https://api.stripe.com"},
    http_client=stripe_http,
)


async def close_stripe(event: BeforeUnloadEvent) -> None:
    if event.reason == "early_drop":  # nothing in flight or pending: no one can still use it
        await stripe_http.close_async()  # type: ignore[no-untyped-call]  # untyped in stripe


EdgeRuntime.on("beforeunload", close_stripe)


async def handler(req: Request) -> Response:
    # 1. Verify the webhook signature first.
    signature = req.headers.get("stripe-signature", "")
    body = await req.body()
    try:
        event = stripe.Webhook.construct_event(body, signature, Deno.env.get("STRIPE_WEBHOOK_SECRET") or "")
    except (ValueError, stripe.SignatureVerificationError):
        return PlainTextResponse("Invalid signature", status_code=400)

    # 2. Acknowledge receipt immediately: Stripe retries if we take longer than 20 seconds.
    response = JSONResponse({"received": True}, status_code=200)

    # 3. Process the event in the background.
    EdgeRuntime.wait_until(process_stripe_event(event))

    return response


async def process_stripe_event(event: stripe.Event) -> None:
    obj: dict[str, Any] = event.data.object.to_dict()
    await apply_event(supabase, event.type, obj)


async def apply_event(supabase: AsyncClient, kind: str, obj: dict[str, Any]) -> None:
    match kind:
        case "checkout.session.completed":
            try:
                await (
                    supabase.table("orders")
                    .update({"status": "paid", "stripe_session_id": obj["id"]}, returning=ReturnMethod.minimal)
                    .eq("id", obj["client_reference_id"])
                    .execute()
                )
            except (APIError, httpx.HTTPError) as error:
                # The seed never reads this update's `error`: it goes on to the mail, and so does the port.
                logger.error("updating order %s failed: %s", obj["client_reference_id"], error)
            email = await customer_email(obj)
            if email:
                await send_order_confirmation_email(email)
        case "customer.subscription.updated":
            period_end = datetime.fromtimestamp(obj["current_period_end"], UTC)
            try:
                await (
                    supabase.table("subscriptions")
                    .update(
                        {"status": obj["status"], "current_period_end": iso(period_end)},
                        returning=ReturnMethod.minimal,
                    )
                    .eq("stripe_subscription_id", obj["id"])
                    .execute()
                )
            except (APIError, httpx.HTTPError) as error:
                logger.error("updating subscription %s failed: %s", obj["id"], error)
        case other:
            logger.info("ignoring Stripe event %s", other)


async def customer_email(session: dict[str, Any]) -> str | None:
    """`session.customer_email`, else the email of the session's Stripe customer (an API call)."""
    if session.get("customer_email"):
        return str(session["customer_email"])
    if not session.get("customer"):
        return None
    customer = await stripe_client.v1.customers.retrieve_async(session["customer"])
    return customer.email


async def send_order_confirmation_email(email: str) -> None:
    base = Deno.env.get("SENDGRID_API_URL") or "https://api.sendgrid.com"
    response = await http.post(
        f"{base}/v3/mail/send",
        headers={"Authorization": f"Bearer {Deno.env.get('SENDGRID_API_KEY')}"},
        json={
            "personalizations": [{"to": [{"email": email}]}],
            "from": {"email": "noreply@example.com", "name": "Example App"},
            "subject": "Your order is confirmed",
            "content": [{"type": "text/plain", "value": "Thanks for your order! We are getting it ready."}],
        },
    )
    if not response.is_success:
        logger.error("Failed to send order confirmation email: %s", response.text)


def iso(moment: datetime) -> str:
    """A date as JavaScript serializes it: ISO 8601 with milliseconds and Z."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


serve(handler)
