"""`edgeruntime new NAME`: the files of a new function."""

from __future__ import annotations

from pathlib import Path

from edgeruntime.exceptions import UsageError
from edgeruntime.functions.discovery import ENTRYPOINT
from edgeruntime.functions.slug import is_valid_slug

__all__ = ["TEMPLATES", "create_function"]

BASIC = '''\
"""{name}: an edge function. Serve it with `edgeruntime serve`, then:

    curl -i http://127.0.0.1:54321/functions/v1/{name} \\
      -H "Authorization: Bearer $(edgeruntime keys --anon)" -d '{{"name": "Functions"}}'
"""

from starlette.requests import Request
from starlette.responses import JSONResponse

from edgeruntime import serve


async def handler(req: Request) -> JSONResponse:
    body = await req.json() if await req.body() else {{}}
    name = body.get("name", "world")
    return JSONResponse({{"message": f"Hello {{name}}!"}})


serve(handler)
'''

JOB = '''\
"""{name}: a background job, the "Step 1" job function of the background-jobs guide in Python.

Serve it and call it as the guide's "Local Testing" does (the key from `edgeruntime keys --anon`):

    edgeruntime serve functions
    curl -i -X POST http://localhost:54321/functions/v1/{name} \\
      -H "Authorization: Bearer $(edgeruntime keys --anon)" \\
      -H 'Content-Type: application/json' -d '{{"executedAt": "2025-01-15T10:00:00Z"}}'

Who may run it: the caller's `Authorization: Bearer <key>` must hold JOB_API_KEY when that secret
is set (the guide's LOVABLE_API_KEY is accepted too), else one of the keys the platform injects
(SUPABASE_ANON_KEY, SUPABASE_SERVICE_ROLE_KEY), so the guide's curl with the anon key works as
written. Schedule it from config.toml:

    [cron.{name}-daily-10am]
    function = "{name}"
    schedule = "0 10 * * *"

Needs the Supabase client: `pip install supabase`.
"""

import hmac
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from supabase import acreate_client

from edgeruntime import Deno, serve
from edgeruntime.cors import CORS_HEADERS, preflight

JOB_NAME = "{name}"


def allowed_keys() -> list[str]:
    """The keys a caller may present: JOB_API_KEY (or LOVABLE_API_KEY) if set, else the platform's."""
    explicit = Deno.env.get("JOB_API_KEY") or Deno.env.get("LOVABLE_API_KEY")
    if explicit:
        return [explicit]
    platform = (Deno.env.get("SUPABASE_ANON_KEY"), Deno.env.get("SUPABASE_SERVICE_ROLE_KEY"))
    return [key for key in platform if key]


def authorized(req: Request) -> bool:
    header = (req.headers.get("authorization") or "").encode()
    return any(hmac.compare_digest(header, f"Bearer {{key}}".encode()) for key in allowed_keys())


async def process_data(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """YOUR BUSINESS LOGIC HERE: what the job does with the rows it selected."""
    return [{{"id": row.get("id"), "processed": True}} for row in rows]


async def handler(req: Request) -> Response:
    if (answer := preflight(req)) is not None:
        return answer

    try:
        # Authentication
        if not authorized(req):
            return Response("Unauthorized", status_code=401, headers=dict(CORS_HEADERS))

        # Supabase with the service role (bypasses row level security)
        url = Deno.env.get("SUPABASE_URL") or ""
        supabase = await acreate_client(url, Deno.env.get("SUPABASE_SERVICE_ROLE_KEY") or "")

        print(f"[Job] Starting {{JOB_NAME}} execution")
        started = time.monotonic()
        body = await req.json() if await req.body() else {{}}

        # YOUR QUERY HERE
        found = await supabase.table("your_table").select("*").eq("some_condition", True).execute()
        results = await process_data(found.data)

        # Audit logging
        await (
            supabase.table("audit_log")
            .insert(
                {{
                    "action_type": "background_job_execution",
                    "entity_type": "background_job",
                    "details": {{
                        "job_name": JOB_NAME,
                        "status": "success",
                        "records_processed": len(found.data),
                        "execution_time_ms": int((time.monotonic() - started) * 1000),
                        "executed_at": body.get("executedAt") if isinstance(body, dict) else None,
                    }},
                }}
            )
            .execute()
        )

        return JSONResponse({{"success": True, "results": results}}, headers=dict(CORS_HEADERS))
    except Exception as exc:
        print(f"[Job] Error: {{exc!r}}")
        error = {{"success": False, "error": str(exc)}}
        return JSONResponse(error, status_code=500, headers=dict(CORS_HEADERS))


serve(handler)
'''

TEMPLATES: dict[str, str] = {"basic": BASIC, "job": JOB}


def create_function(functions_dir: Path, name: str, template: str = "basic") -> Path:
    """Write `<functions_dir>/<name>/index.py` from `template`; refuses to overwrite."""
    if not is_valid_slug(name):
        raise UsageError(f"invalid function name {name!r}: use a letter followed by letters, digits, '-' or '_'")
    if template not in TEMPLATES:
        raise UsageError(f"unknown template {template!r}: expected one of {', '.join(sorted(TEMPLATES))}")
    target = functions_dir / name / ENTRYPOINT
    if target.exists():
        raise UsageError(f"{target} already exists")
    if functions_dir.exists() and not functions_dir.is_dir():
        raise UsageError(f"{functions_dir} is a file, not a functions directory")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(TEMPLATES[template].format(name=name), encoding="utf-8")
    except OSError as exc:  # a file on the way, no permission, a read-only or full disk ...
        where = exc.filename if isinstance(exc.filename, str) else target
        raise UsageError(f"cannot create {target}: {where}: {exc.strerror or exc}") from None
    return target
