"""Analytics and logging: answer first, send the analytics event to PostHog in the background.

TypeScript original (seeds/background-jobs-waituntil.md, "Use Case 3: Analytics and Logging")::

    Deno.serve(async (req) => {
      const startTime = Date.now()
      const { action, data } = await req.json()
      const result = await processAction(action, data)
      const response = new Response(JSON.stringify(result), {
        status: 200, headers: { 'Content-Type': 'application/json' },
      })
      const requestDuration = Date.now() - startTime
      EdgeRuntime.waitUntil(
        logAnalytics({
          action, duration: requestDuration, userId: data.userId,
          timestamp: new Date().toISOString(),
          userAgent: req.headers.get('user-agent'),
          country: req.headers.get('cf-ipcountry'),  // Cloudflare header
        })
      )
      return response
    })

    async function logAnalytics(event: Record<string, unknown>) {
      await fetch('https://api.posthog.com/capture', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ api_key: Deno.env.get('POSTHOG_API_KEY'), event: 'api_request', properties: event }),
      })
    }

Differences: ``processAction`` is left to the reader in the seed; here it echoes the action. The
PostHog host is POSTHOG_HOST (default https://api.posthog.com, the seed's). The duration is an
integer of milliseconds and the timestamp ISO 8601 with milliseconds and Z, as in JavaScript. A
key the request did not have (``action``, ``data.userId``) is left out of the event, as
JSON.stringify drops ``undefined``; a header that is absent is ``null`` in both. A body without
``data`` is served here (the seed throws a TypeError on ``data.userId``: a 500). A failed capture is
logged, not raised: analytics must never break the request. One HTTP client per worker.

Env: POSTHOG_API_KEY, POSTHOG_HOST.
"""

import logging
import time
from datetime import UTC, datetime
from typing import Any

from _shared.clients import worker_http
from starlette.requests import Request
from starlette.responses import JSONResponse

from edgeruntime import Deno, EdgeRuntime, serve

logger = logging.getLogger(__name__)

#: JavaScript's `undefined`: a key whose value is this is left out, as JSON.stringify leaves it out.
UNDEFINED: Any = object()

# One connection pool per worker (see functions/_shared/clients.py).
http = worker_http()


def defined(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` as JSON.stringify sends it: UNDEFINED values are left out, None stays null."""
    return {key: value for key, value in obj.items() if value is not UNDEFINED}


async def handler(req: Request) -> JSONResponse:
    start = time.monotonic()
    body = await req.json()
    action, data = body.get("action"), body.get("data") or {}

    # Process the main request.
    result = await process_action(action, data)

    # Prepare the response.
    response = JSONResponse(result, status_code=200)

    # Log analytics in the background.
    duration_ms = int((time.monotonic() - start) * 1000)
    EdgeRuntime.wait_until(
        log_analytics(
            defined(
                {
                    "action": body.get("action", UNDEFINED),
                    "duration": duration_ms,
                    "userId": data.get("userId", UNDEFINED),
                    "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    "userAgent": req.headers.get("user-agent"),
                    "country": req.headers.get("cf-ipcountry"),  # Cloudflare's header
                }
            )
        )
    )

    return response


async def process_action(action: str | None, data: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "action": action}


async def log_analytics(event: dict[str, Any]) -> None:
    host = Deno.env.get("POSTHOG_HOST") or "https://api.posthog.com"
    response = await http.post(
        f"{host}/capture",
        json={"api_key": Deno.env.get("POSTHOG_API_KEY"), "event": "api_request", "properties": event},
    )
    if not response.is_success:
        logger.warning("PostHog capture failed with %s: %s", response.status_code, response.text)


serve(handler)
