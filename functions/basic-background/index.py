"""The seed's "Basic Pattern": answer 202 at once, finish the work in the background.

TypeScript original (seeds/background-jobs-waituntil.md, "Basic Pattern")::

    Deno.serve(async (req) => {
      const { userId, action } = await req.json()
      const response = new Response(JSON.stringify({ accepted: true }), { status: 202, ... })
      EdgeRuntime.waitUntil(processInBackground(userId, action))
      return response
    })
"""

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse

from edgeruntime import EdgeRuntime, serve

logger = logging.getLogger(__name__)

#: What the background work did, newest last (a stand-in for analytics, aggregates, admin mail).
PROCESSED: list[dict[str, str | None]] = []
#: Seconds each background step takes; tests make it longer to see the response not wait.
STEP_SECONDS = 0.01


async def handler(req: Request) -> JSONResponse:
    body = await req.json()
    # `const { userId, action } = await req.json()`: a missing key is `undefined` there, None here;
    # body["userId"] would raise KeyError and answer 500 where the TypeScript answers 202.
    user_id, action = body.get("userId"), body.get("action")

    # 1. Prepare the response.
    response = JSONResponse({"accepted": True}, status_code=202)

    # 2. Process in the background, after the response is sent.
    EdgeRuntime.wait_until(process_in_background(user_id, action))

    return response


async def process_in_background(user_id: str | None, action: str | None) -> None:
    # This runs after the response is sent: the caller already has its 202.
    await send_analytics(user_id, action)
    await update_aggregates(user_id)
    await notify_admins(action)
    PROCESSED.append({"userId": user_id, "action": action})
    logger.info("processed %s for %s", action, user_id)


async def send_analytics(user_id: str | None, action: str | None) -> None:
    await asyncio.sleep(STEP_SECONDS)


async def update_aggregates(user_id: str | None) -> None:
    await asyncio.sleep(STEP_SECONDS)


async def notify_admins(action: str | None) -> None:
    await asyncio.sleep(STEP_SECONDS)


serve(handler)
