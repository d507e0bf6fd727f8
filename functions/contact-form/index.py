"""Email sending: store the submission, answer at once, send the emails in the background.

TypeScript original (seeds/background-jobs-waituntil.md, "Use Case 2: Email Sending")::

    Deno.serve(async (req) => {
      const { email, name, message } = await req.json()
      if (!email || !message) {
        return new Response(JSON.stringify({ error: 'Missing required fields' }), { status: 400, ... })
      }
      const supabase = createClient(Deno.env.get('SUPABASE_URL')!, Deno.env.get('SUPABASE_SERVICE_ROLE_KEY')!)
      const { data, error } = await supabase.from('contact_submissions')
        .insert({ email, name, message }).select().single()
      if (error) {
        return new Response(JSON.stringify({ error: 'Failed to save' }), { status: 500, ... })
      }
      const response = new Response(JSON.stringify({ success: true, id: data.id }), { status: 200, ... })
      EdgeRuntime.waitUntil(Promise.all([sendConfirmationEmail(email, name), notifyTeam(data)]))
      return response
    })

    async function sendConfirmationEmail(email: string, name: string) {
      const response = await fetch('https://api.sendgrid.com/v3/mail/send', {
        method: 'POST',
        headers: { 'Authorization': `Bearer ${Deno.env.get('SENDGRID_API_KEY')}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({
          personalizations: [{ to: [{ email }] }],
          from: { email: 'noreply@example.com', name: 'Example App' },
          subject: 'We received your message',
          content: [{ type: 'text/plain',
                      value: `Hi ${name}, thanks for reaching out. We'll get back to you soon.` }],
        }),
      })
      if (!response.ok) {
        console.error('Failed to send confirmation email:', await response.text())
      }
    }

    async function notifyTeam(submission: { id: string; email: string; message: string }) {
      // Notify team via Slack, email, etc.
    }

Differences: the seed forgets to import ``createClient``. supabase-js hands back ``{data, error}``
for a failed insert and for a failed ``fetch`` alike; supabase-py raises ``APIError`` or an
``httpx.HTTPError``, and both answer the seed's 500 ``{"error": "Failed to save"}``. A missing
``name`` is left out of the row, as JSON.stringify drops ``undefined`` (a ``null`` one is kept);
the mail then says "Hi there" where the seed writes "Hi undefined" — a deliberate change.
``notifyTeam`` mails TEAM_EMAIL when it is set. A failed email is logged, never raised — an
unreachable mail API included (``fetch`` rejects then, and the seed leaves that unhandled). One
HTTP client per worker serves supabase-py and the mail calls (docs/porting.md).

Env: SENDGRID_API_KEY, SENDGRID_API_URL (default https://api.sendgrid.com), TEAM_EMAIL (optional),
SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY (injected by the runtime).
"""

import asyncio
import logging
from typing import Any, cast

import httpx
from _shared.clients import supabase_admin, worker_http
from postgrest import APIError
from starlette.requests import Request
from starlette.responses import JSONResponse

from edgeruntime import Deno, EdgeRuntime, serve

logger = logging.getLogger(__name__)

# One connection pool per worker, shared by supabase-py (see functions/_shared/clients.py).
http = worker_http()
supabase = supabase_admin(http)


async def handler(req: Request) -> JSONResponse:
    try:
        body = await req.json()
    except ValueError:
        return JSONResponse({"error": "Invalid JSON"}, status_code=400)
    if not isinstance(body, dict):
        return JSONResponse({"error": "Missing required fields"}, status_code=400)
    email, name, message = body.get("email"), body.get("name"), body.get("message")

    # Validate input.
    if not email or not message:
        return JSONResponse({"error": "Missing required fields"}, status_code=400)

    # Store the contact form submission: the keys the body has (JSON.stringify drops `undefined`).
    row = {key: body[key] for key in ("email", "name", "message") if key in body}
    try:
        result = await supabase.table("contact_submissions").insert(row).select().single().execute()
    except (APIError, httpx.HTTPError) as error:  # supabase-js: `if (error)`, for both
        logger.error("Failed to save contact submission: %s", error)
        return JSONResponse({"error": "Failed to save"}, status_code=500)
    data = cast(dict[str, Any], result.data)

    # Respond immediately.
    response = JSONResponse({"success": True, "id": data["id"]}, status_code=200)

    # Send the emails in the background.
    EdgeRuntime.wait_until(asyncio.gather(send_confirmation_email(email, name), notify_team(data)))

    return response


async def send_mail(to: str, subject: str, text: str) -> str | None:
    """Send one mail through SendGrid: None when it was accepted, else what went wrong."""
    base = Deno.env.get("SENDGRID_API_URL") or "https://api.sendgrid.com"
    try:
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
    except httpx.HTTPError as exc:  # fetch() rejects here; the seed would leave that unhandled
        return f"{type(exc).__name__}: {exc}"
    return None if response.is_success else response.text


async def send_confirmation_email(email: str, name: str | None) -> None:
    error = await send_mail(
        email,
        "We received your message",
        f"Hi {name or 'there'}, thanks for reaching out. We'll get back to you soon.",
    )
    if error is not None:
        # Logged, not raised: the submission is saved and the user already has their answer.
        logger.error("Failed to send confirmation email: %s", error)


async def notify_team(submission: dict[str, Any]) -> None:
    team = Deno.env.get("TEAM_EMAIL")
    if not team:
        logger.info("new contact submission %s from %s", submission["id"], submission["email"])
        return
    error = await send_mail(
        team, f"New contact submission #{submission['id']}", f"From {submission['email']}:\n\n{submission['message']}"
    )
    if error is not None:
        logger.error("Failed to notify the team: %s", error)


serve(handler)
