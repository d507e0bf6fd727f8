"""The retry pattern: `withRetry(fn, maxRetries, delayMs)` around a background email send.

TypeScript original (seeds/background-jobs-waituntil.md, "Retry Pattern")::

    async function withRetry<T>(fn: () => Promise<T>, maxRetries = 3, delayMs = 1000): Promise<T> {
      let lastError: Error | null = null
      for (let attempt = 1; attempt <= maxRetries; attempt++) {
        try {
          return await fn()
        } catch (error) {
          lastError = error
          console.log(`Attempt ${attempt} failed:`, error.message)
          if (attempt < maxRetries) {
            await new Promise((resolve) => setTimeout(resolve, delayMs * attempt))
          }
        }
      }
      throw lastError
    }

    // Usage in background
    EdgeRuntime.waitUntil(withRetry(() => sendEmail(recipient, subject, body), 3, 2000))

Differences: the retry loop is tenacity's (``stop_after_attempt`` and ``wait_incrementing`` give
the seed's `delayMs * attempt` back-off). The seed never defines `recipient`, `subject`, `body`:
here they come from the request. The delay is RETRY_DELAY_MS (default 2000, the seed's usage).
When every attempt fails, the error reaches the runtime, which logs it with the execution id.
For work that must survive a restart, use the durable queue (`edgeruntime.jobs.enqueue`).

Env: SENDGRID_API_KEY, SENDGRID_API_URL, RETRY_DELAY_MS.
"""

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from _shared.clients import worker_http
from starlette.requests import Request
from starlette.responses import JSONResponse
from tenacity import AsyncRetrying, RetryCallState, stop_after_attempt, wait_incrementing

from edgeruntime import Deno, EdgeRuntime, serve

logger = logging.getLogger(__name__)

# One connection pool per worker (see functions/_shared/clients.py).
http = worker_http()
T = TypeVar("T")


async def with_retry(fn: Callable[[], Awaitable[T]], max_retries: int = 3, delay_ms: float = 1000) -> T:
    """Call `fn` up to `max_retries` times, waiting `delay_ms * attempt` between attempts."""

    def log_failure(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        logger.info("Attempt %d failed: %s", state.attempt_number, error)

    async for attempt in AsyncRetrying(
        stop=stop_after_attempt(max_retries),
        wait=wait_incrementing(start=delay_ms / 1000, increment=delay_ms / 1000),
        after=log_failure,
        reraise=True,
    ):
        with attempt:
            return await fn()
    raise AssertionError("unreachable: tenacity re-raises the last error")


async def handler(req: Request) -> JSONResponse:
    body = await req.json()
    recipient, subject, text = body["recipient"], body["subject"], body["body"]
    delay_ms = float(Deno.env.get("RETRY_DELAY_MS") or 2000)

    # Usage in the background.
    EdgeRuntime.wait_until(with_retry(lambda: send_email(recipient, subject, text), 3, delay_ms))

    return JSONResponse({"accepted": True}, status_code=202)


async def send_email(to: str, subject: str, text: str) -> None:
    base = Deno.env.get("SENDGRID_API_URL") or "https://api.sendgrid.com"
    response = await http.post(
        f"{base}/v3/mail/send",
        headers={"Authorization": f"Bearer {Deno.env.get('SENDGRID_API_KEY')}"},
        json={
            "personalizations": [{"to": [{"email": to}]}],
            "from": {"email": "noreply@example.com", "name": "Example App"},
            "subject": subject,
            "content": [{"type": "text/plain", "value": text}],
        },
    )
    # Raise on failure so that with_retry tries again.
    response.raise_for_status()


serve(handler)
