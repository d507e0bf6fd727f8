"""Monitoring background jobs: log the start, the duration and the failure of a named background job.

TypeScript original (seeds/background-jobs-waituntil.md, "Monitoring Background Jobs")::

    async function trackedBackgroundJob(jobName: string, fn: () => Promise<void>) {
      const startTime = Date.now()
      console.log(`[${jobName}] Starting background job`)
      try {
        await fn()
        const duration = Date.now() - startTime
        console.log(`[${jobName}] Completed in ${duration}ms`)
      } catch (error) {
        const duration = Date.now() - startTime
        console.error(`[${jobName}] Failed after ${duration}ms:`, error)
        throw error
      }
    }

    // Usage
    EdgeRuntime.waitUntil(trackedBackgroundJob('send-email', () => sendEmail(recipient, body)))

Differences: the seed never defines `recipient` and `body`: here they come from the request. The
error is re-raised as in the seed, so the runtime also records it (with the execution id) in its
run history and on the dashboard: the log lines are for humans, the record is for monitoring.

Env: SENDGRID_API_KEY, SENDGRID_API_URL.
"""

import logging
import time
from collections.abc import Awaitable, Callable

from _shared.clients import worker_http
from starlette.requests import Request
from starlette.responses import JSONResponse

from edgeruntime import Deno, EdgeRuntime, serve

logger = logging.getLogger(__name__)

# One connection pool per worker (see functions/_shared/clients.py).
http = worker_http()


async def tracked_background_job(job_name: str, fn: Callable[[], Awaitable[None]]) -> None:
    start = time.monotonic()
    logger.info("[%s] Starting background job", job_name)
    try:
        await fn()
    except Exception as error:
        duration_ms = int((time.monotonic() - start) * 1000)
        logger.error("[%s] Failed after %dms: %s", job_name, duration_ms, error)
        raise
    duration_ms = int((time.monotonic() - start) * 1000)
    logger.info("[%s] Completed in %dms", job_name, duration_ms)


async def handler(req: Request) -> JSONResponse:
    payload = await req.json()
    recipient, body = payload["recipient"], payload["body"]

    # Usage.
    EdgeRuntime.wait_until(tracked_background_job("send-email", lambda: send_email(recipient, body)))

    return JSONResponse({"accepted": True}, status_code=202)


async def send_email(to: str, text: str) -> None:
    base = Deno.env.get("SENDGRID_API_URL") or "https://api.sendgrid.com"
    response = await http.post(
        f"{base}/v3/mail/send",
        headers={"Authorization": f"Bearer {Deno.env.get('SENDGRID_API_KEY')}"},
        json={
            "personalizations": [{"to": [{"email": to}]}],
            "from": {"email": "noreply@example.com", "name": "Example App"},
            "subject": "A message for you",
            "content": [{"type": "text/plain", "value": text}],
        },
    )
    response.raise_for_status()


serve(handler)
