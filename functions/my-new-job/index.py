"""The scheduled background job of the integration guide: auth, batch processing, idempotent update, audit log.

TypeScript original (seeds/integrating-background-jobs.md, "Step 1: Create Edge Function", abridged)::

    serve(async (req) => {
      if (req.method === 'OPTIONS') {
        return new Response(null, { headers: corsHeaders });
      }
      try {
        const apiKey = Deno.env.get('LOVABLE_API_KEY');
        const authHeader = req.headers.get('Authorization');
        if (!authHeader || authHeader !== `Bearer ${apiKey}`) {
          return new Response('Unauthorized', { status: 401 });
        }
        const supabase = createClient(Deno.env.get('SUPABASE_URL')!, Deno.env.get('SUPABASE_SERVICE_ROLE_KEY')!);
        console.log('[Job] Starting my-new-job execution');
        const startTime = Date.now();
        const { data, error } = await supabase.from('your_table').select('*').eq('some_condition', true);
        if (error) throw error;
        const results = await processData(data);
        await supabase.from('audit_log').insert({
          action_type: 'background_job_execution',
          entity_type: 'background_job',
          details: { job_name: 'my-new-job', status: 'success',
                     records_processed: data.length, execution_time_ms: Date.now() - startTime }
        });
        return new Response(JSON.stringify({ success: true, results }),
          { headers: { ...corsHeaders, 'Content-Type': 'application/json' } });
      } catch (error) {
        console.error('[Job] Error:', error);
        return new Response(JSON.stringify({ success: false, error: error.message }),
          { status: 500, headers: { ...corsHeaders, 'Content-Type': 'application/json' } });
      }
    });

plus the guide's best practices: the idempotent update
(``.update({ reminded: true, reminded_at: new Date() }).eq('reminded', false).lt('due_date', tomorrow)``),
batch processing with ``.range(processed, processed + BATCH_SIZE - 1)``, and the failure audit row.

The business logic: tasks due before tomorrow that were not reminded yet are read in batches of
BATCH_SIZE, counted per owner (``process_data``), then marked reminded with one idempotent update,
so a second run the same day finds nothing to do. The schedule lives in config.toml
(``[cron.my-new-job-daily-10am]``) instead of ``cron.schedule(...)`` SQL.

Differences: the seed compares the Authorization header with ``LOVABLE_API_KEY`` only, so its own
"Local Testing" curl (which sends the anon key) gets 401. Here the accepted keys are
MY_NEW_JOB_API_KEY when set, else the project's anon and service role keys (the cron scheduler
sends the service role key). The gateway also verifies the JWT (``verify_jwt`` is not turned off).
The seed checks the read's ``error`` (``if (error) throw error``: 500) but not the audit insert's:
a failed audit row is logged and the run still answers 200, as in TypeScript (supabase-py raises
where supabase-js returns ``error``, hence the try/except). Writes ask for no rows back
(``returning=ReturnMethod.minimal``, as supabase-js without ``.select()``), except the idempotent
update, whose rows give the ``reminded`` count. One HTTP client per worker.

Env: SUPABASE_URL, SUPABASE_ANON_KEY, SUPABASE_SERVICE_ROLE_KEY (injected), MY_NEW_JOB_API_KEY,
MY_NEW_JOB_BATCH_SIZE (default 100).
"""

import json
import logging
import time
import traceback
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
from _shared.clients import supabase_admin, worker_http
from postgrest import APIError, ReturnMethod
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from supabase import AsyncClient

from edgeruntime import Deno, serve

logger = logging.getLogger(__name__)

# One connection pool per worker, shared by supabase-py (see functions/_shared/clients.py).
http = worker_http()
supabase = supabase_admin(http)

JOB_NAME = "my-new-job"
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "authorization, x-client-info, apikey, content-type",
}


def accepted_keys() -> set[str]:
    """The bearer tokens allowed to start the job."""
    own = Deno.env.get("MY_NEW_JOB_API_KEY")
    if own:
        return {own}
    return {key for key in (Deno.env.get("SUPABASE_ANON_KEY"), Deno.env.get("SUPABASE_SERVICE_ROLE_KEY")) if key}


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def handler(req: Request) -> Response:
    if req.method == "OPTIONS":
        return Response(None, headers=CORS_HEADERS)

    # Authentication.
    auth_header = req.headers.get("authorization", "")
    if not auth_header.startswith("Bearer ") or auth_header.removeprefix("Bearer ") not in accepted_keys():
        return PlainTextResponse("Unauthorized", status_code=401)

    # The scheduled instant: the cron body's executedAt, else now.
    try:
        body = json.loads(await req.body() or b"{}")
        executed_at = str(body.get("executedAt") or iso(datetime.now(UTC)))
        scheduled = datetime.fromisoformat(executed_at.replace("Z", "+00:00"))
        if scheduled.tzinfo is None:  # pg_cron's now() always has an offset; a bare time means UTC
            scheduled = scheduled.replace(tzinfo=UTC)
        tomorrow = iso(scheduled + timedelta(days=1))
    except (ValueError, AttributeError) as error:
        return JSONResponse({"success": False, "error": f"bad request body: {error}"}, status_code=400)

    logger.info("[Job] Starting %s execution", JOB_NAME)
    start = time.monotonic()
    try:
        results = await run_job(supabase, tomorrow)
    except Exception as error:
        logger.exception("[Job] Error: %s", error)
        await log_failure(supabase, error)
        # A 500 tells the scheduler (and the run history) that this run failed.
        return JSONResponse({"success": False, "error": message_of(error)}, status_code=500, headers=CORS_HEADERS)
    try:
        await (
            supabase.table("audit_log")
            .insert(
                {
                    "action_type": "background_job_execution",
                    "entity_type": "background_job",
                    "details": {
                        "job_name": JOB_NAME,
                        "status": "success",
                        "records_processed": results["records_processed"],
                        "execution_time_ms": int((time.monotonic() - start) * 1000),
                        "executed_at": executed_at,
                    },
                },
                returning=ReturnMethod.minimal,
            )
            .execute()
        )
    except (APIError, httpx.HTTPError) as error:
        # The seed never reads this insert's `error`: the job's work is done and it answers 200.
        logger.error("[Job] could not write the success to audit_log: %s", error)
    return JSONResponse({"success": True, "results": results}, headers=CORS_HEADERS)


async def run_job(supabase: AsyncClient, tomorrow: str) -> dict[str, Any]:
    batch_size = int(Deno.env.get("MY_NEW_JOB_BATCH_SIZE") or 100)
    # Batch processing: read the due tasks page by page. Nothing changes them while we page, so
    # the offsets are stable; the update comes after.
    per_owner: Counter[str] = Counter()
    processed = 0
    while True:
        page = await (
            supabase.table("tasks")
            .select("*")
            .eq("reminded", False)
            .lt("due_date", tomorrow)
            .order("id")
            .range(processed, processed + batch_size - 1)
            .execute()
        )
        batch = cast(list[dict[str, Any]], page.data)
        if not batch:
            break
        per_owner.update(process_data(batch))
        processed += len(batch)
        logger.info("[Job] Processed %d records", processed)

    # Idempotent: only tasks not reminded yet are touched, so running twice changes nothing more.
    updated = await (
        supabase.table("tasks")
        .update({"reminded": True, "reminded_at": iso(datetime.now(UTC))})
        .eq("reminded", False)
        .lt("due_date", tomorrow)
        .execute()
    )
    return {"records_processed": processed, "reminded": len(updated.data), "per_owner": dict(per_owner)}


def message_of(error: Exception) -> str:
    """`error.message` of the seed: PostgREST errors carry theirs in `.message`."""
    return error.message if isinstance(error, APIError) and error.message else str(error)


def process_data(tasks: list[dict[str, Any]]) -> Counter[str]:
    return Counter(str(task.get("owner")) for task in tasks)


async def log_failure(supabase: AsyncClient, error: Exception) -> None:
    try:
        await (
            supabase.table("audit_log")
            .insert(
                {
                    "action_type": "background_job_execution",
                    "details": {
                        "job_name": JOB_NAME,
                        "status": "failed",
                        "error_message": message_of(error),
                        "error_stack": "".join(traceback.format_exception(error)),
                    },
                },
                returning=ReturnMethod.minimal,
            )
            .execute()
        )
    except Exception:
        logger.exception("[Job] could not write the failure to audit_log")


serve(handler)
