"""The dashboard's JSON API under ``/_edgeruntime/api/``: what the page shows, for scripts too.

Times are POSIX seconds (floats); durations are milliseconds (`*_ms`) or seconds (`*_sec`).
Errors are ``{"error": "<message>"}`` with a 4xx status.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edgeruntime.dashboard.schedule_text import describe_schedule
from edgeruntime.exceptions import DashboardError, JobsError, SiblingsUnavailable
from edgeruntime.functions.discovery import discover
from edgeruntime.jobs.store import FailedJob, Job, Run

if TYPE_CHECKING:
    from edgeruntime.dashboard import Dashboard
    from edgeruntime.jobs.system import JobSystem

__all__ = ["MAX_LIMIT", "function_states", "http_error", "routes"]

logger = logging.getLogger("edgeruntime.dashboard")

DEFAULT_LIMIT = 50
#: The largest id a store holds (SQLite INTEGER, Postgres bigint).
MAX_ID = 2**63 - 1
MAX_LIMIT = 1000
#: Recent ticks shown per cron job (skipped ones among them).
RECENT_TICKS = 10
#: Failed jobs "Retry all" re-queues at most this many per call.
RETRY_ALL_BATCH = 1000

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _failed_id(request: Request) -> int:
    """The failed job id of the path: 404 past the stores' 64-bit ids (they would raise, not miss)."""
    failed_id: int = request.path_params["id"]
    if failed_id > MAX_ID:
        raise DashboardError(404, f"no failed job {failed_id}")
    return failed_id


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", str(DEFAULT_LIMIT))
    try:
        value = int(raw)
    except ValueError:
        raise DashboardError(400, f"limit: expected a whole number, got {raw!r}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise DashboardError(400, f"limit: expected 1 to {MAX_LIMIT}, got {value}")
    return value


def _filter(request: Request, name: str) -> str | None:
    """A filter of the query string (None: not given); no stored value holds a NUL, and Postgres refuses one."""
    value = request.query_params.get(name) or None
    if value is not None and "\x00" in value:
        raise DashboardError(400, f"{name}: contains a NUL character")
    return value


def _job(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "function": job.function,
        "status": str(job.status),
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "run_at": job.run_at,
        "created_at": job.created_at,
        "last_error": job.last_error,
        "idempotency_key": job.idempotency_key,
    }


def _run(run: Run) -> dict[str, Any]:
    data = asdict(run)
    if run.kind == "background":
        data["cut_reason"] = run.error if run.status == "cut" else None
    return data


class Api:
    """The endpoints, bound to one dashboard."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    @property
    def jobs(self) -> JobSystem:
        system = self.dashboard.jobs
        if system is None:
            raise DashboardError(404, "the jobs system is not running in this server")
        return system

    # -- functions -------------------------------------------------------------------------

    async def functions(self, request: Request) -> Response:
        """Every function with its config and, from every serving process, its boot state, its
        workers (in flight, background pending) and its last invocation."""
        dashboard = self.dashboard
        settings = dashboard.app.settings
        states: list[Any] = [dashboard.process_state()]
        gather_error = None
        if dashboard.siblings is not None:
            try:
                states = await dashboard.siblings("functions")
            except SiblingsUnavailable as exc:  # this process's part, and why it is only that
                gather_error = str(exc)
        states = [s for s in states if _valid_state(s)]
        out = []
        for name, _spec in sorted(discover(settings.functions_dir).items()):
            config = settings.config.function(name)
            parts = [(state["pid"], state["functions"][name]) for state in states if name in state["functions"]]
            out.append(
                {
                    "name": name,
                    "route": f"/functions/v1/{name}",
                    "url": settings.function_url(name),
                    "enabled": config.enabled,
                    "verify_jwt": settings.verify_jwt(name),
                    "description": config.description,
                    "limits": asdict(settings.limits_for(name)),
                    **_merged_state(parts),
                }
            )
        return JSONResponse(
            {
                "functions": out,
                "policy": settings.policy,
                "isolation": settings.isolation,
                "processes": sorted(state["pid"] for state in states),
                "processes_error": gather_error,
                "now": time.time(),
            }
        )

    # -- cron ------------------------------------------------------------------------------

    async def cron(self, request: Request) -> Response:
        system = self.jobs
        now = system.clock.now()
        paused = await system.store.paused_crons()
        out = []
        for name, job in sorted(system.crons.items()):
            ticks = await system.store.ticks(name, RECENT_TICKS)
            scheduled = [t for t in ticks if t.trigger == "schedule"]
            config = job.config
            out.append(
                {
                    "name": name,
                    "function": config.function,
                    "schedule": config.schedule,
                    "schedule_text": describe_schedule(job.schedule),
                    "timezone": config.timezone,
                    "description": config.description,
                    "overlap": config.overlap,
                    "enabled": config.enabled,
                    "paused": name in paused,
                    "paused_at": paused.get(name),
                    "next_tick": job.schedule.next(now) if config.enabled and name not in paused else None,
                    "last_tick": scheduled[0].scheduled_for if scheduled else None,
                    "last_status": str(ticks[0].status) if ticks else None,
                    "skipped": sum(1 for t in ticks if str(t.status) == "skipped"),
                    "ticks": [
                        {
                            "id": t.id,
                            "key": t.key,
                            "trigger": t.trigger,
                            "scheduled_for": t.scheduled_for,
                            "status": str(t.status),
                            "http_status": t.http_status,
                            "error": t.error,
                            "started_at": t.started_at,
                            "finished_at": t.finished_at,
                        }
                        for t in ticks
                    ],
                }
            )
        return JSONResponse({"cron": out, "now": now})

    def _cron_name(self, request: Request) -> str:
        name: str = request.path_params["name"]
        if name not in self.jobs.crons:
            raise DashboardError(404, f"no cron job {name!r}")
        return name

    async def cron_run(self, request: Request) -> Response:
        name = self._cron_name(request)
        self.dashboard.spawn(self.jobs.scheduler.run_now(name), f"edgeruntime-run-now-{name}")
        return JSONResponse({"cron": name, "started": True}, status_code=202)

    async def cron_pause(self, request: Request) -> Response:
        return await self._set_paused(request, True)

    async def cron_resume(self, request: Request) -> Response:
        return await self._set_paused(request, False)

    async def _set_paused(self, request: Request, paused: bool) -> Response:
        name = self._cron_name(request)
        system = self.jobs
        await system.store.set_cron_paused(name, paused, now=system.clock.now())
        return JSONResponse({"cron": name, "paused": paused})

    # -- runs ------------------------------------------------------------------------------

    async def runs(self, request: Request) -> Response:
        """Invocations, newest first, each with its wait_until tasks."""
        store = self.jobs.store
        invocations = await store.runs(
            _filter(request, "function"),
            _limit(request),
            kind="invocation",
            trigger=_filter(request, "trigger"),
            status=_filter(request, "status"),
        )
        ids = list(dict.fromkeys(r.execution_id for r in invocations))
        tasks = await store.runs(None, MAX_LIMIT * 10, kind="background", execution_ids=ids) if ids else []
        by_execution: dict[str, list[dict[str, Any]]] = {}
        for task in reversed(tasks):
            by_execution.setdefault(task.execution_id, []).append(_run(task))
        out = [{**_run(r), "tasks": by_execution.get(r.execution_id, [])} for r in invocations]
        return JSONResponse({"runs": out})

    # -- queue -----------------------------------------------------------------------------

    async def queue(self, request: Request) -> Response:
        system = self.jobs
        now = system.clock.now()
        stats = await system.store.queue_stats(_limit(request))
        recent: Sequence[Job] = await system.store.jobs(None, _limit(request))
        oldest = stats.oldest_queued_at
        return JSONResponse(
            {
                "counts": stats.counts,
                "depth": stats.counts.get("queued", 0),
                "oldest_queued_at": oldest,
                "oldest_age_sec": None if oldest is None else max(0.0, now - oldest),
                "in_flight": [
                    {
                        "job_id": lease.job_id,
                        "function": lease.function,
                        "attempt": lease.attempt,
                        "max_attempts": lease.max_attempts,
                        "worker_id": lease.worker_id,
                        "claimed_at": lease.claimed_at,
                        "lease_age_sec": max(0.0, now - lease.claimed_at),
                        "lease_expires_in_sec": None if lease.lease_until is None else lease.lease_until - now,
                    }
                    for lease in stats.in_flight
                ],
                "jobs": [_job(j) for j in recent],
                "now": now,
            }
        )

    # -- failed jobs -----------------------------------------------------------------------

    async def _failed_entry(self, failed: FailedJob) -> dict[str, Any]:
        retry = None
        if failed.retried_as is not None:
            job = await self.jobs.store.job(failed.retried_as)
            retry = {"id": failed.retried_as, "status": None} if job is None else _job(job)
        return {**asdict(failed), "retry": retry}

    async def failed(self, request: Request) -> Response:
        failed = await self.jobs.store.failed_jobs(_limit(request))
        return JSONResponse({"failed": [await self._failed_entry(f) for f in failed]})

    async def _find_failed(self, failed_id: int) -> FailedJob:
        failed = await self.jobs.store.failed_job(failed_id)
        if failed is None:
            raise DashboardError(404, f"no failed job {failed_id}")
        return failed

    def _wake_runner(self) -> None:
        system = self.jobs
        if system.background:
            system.runner.wake()

    async def failed_retry(self, request: Request) -> Response:
        failed_id = _failed_id(request)
        failed = await self._find_failed(failed_id)
        if failed.retried_as is not None:
            raise DashboardError(409, f"failed job {failed_id} was already retried as job {failed.retried_as}")
        system = self.jobs
        job_id = await system.store.retry_failed(failed_id, now=system.clock.now())
        self._wake_runner()
        return JSONResponse({"failed_id": failed_id, "job_id": job_id}, status_code=201)

    async def failed_retry_all(self, request: Request) -> Response:
        system = self.jobs
        pending = [f for f in await system.store.failed_jobs(RETRY_ALL_BATCH) if f.retried_as is None]
        job_ids = []
        for failed in reversed(pending):  # oldest first, so the queue keeps their order
            job_ids.append(await system.store.retry_failed(failed.id, now=system.clock.now()))
        self._wake_runner()
        return JSONResponse({"job_ids": job_ids}, status_code=201 if job_ids else 200)

    async def failed_delete(self, request: Request) -> Response:
        failed_id = _failed_id(request)
        if not await self.jobs.store.delete_failed(failed_id):
            raise DashboardError(404, f"no failed job {failed_id}")
        return JSONResponse({"deleted": failed_id})


def function_states(dashboard: Dashboard) -> dict[str, dict[str, Any]]:
    """What this serving process holds of each function it serves: boot, workers, last invocation."""
    out: dict[str, dict[str, Any]] = {}
    for name, supervisor in dashboard.app.functions.items():
        if supervisor.boot_error is not None:
            status = "error"
        elif supervisor.worker is not None:
            status = "booted"
        else:
            status = "not_booted"
        last = dashboard.last_invocations.get(name)
        boot: dict[str, Any] = {"status": status, "boots": supervisor.boots, "error": supervisor.boot_error}
        source = supervisor.source_error
        if source is not None:  # a syntax error, found by compiling the function's files
            boot["source_error"] = {"file": str(source.path), "line": source.line, "message": source.message}
        out[name] = {
            "boot": boot,
            "workers": [
                {
                    "id": w.id,
                    "status": str(w.status),
                    "in_flight": w.in_flight,
                    "background_pending": len(w.pending_background()),
                }
                for w in supervisor.workers
            ],
            "last_invocation": None
            if last is None
            else {
                "at": last.started_at,
                "status": last.status,
                "duration_ms": last.duration_ms,
                "trigger": last.trigger,
                "execution_id": last.execution_id,
                "error": last.error,
            },
        }
    return out


def _valid_state(state: Any) -> bool:
    """Whether `state` has the shape `Dashboard.process_state` gives (it may come from another process)."""
    if not isinstance(state, dict) or not isinstance(state.get("pid"), int):
        return False
    functions = state.get("functions")
    return isinstance(functions, dict) and all(
        isinstance(part, dict)
        and isinstance(part.get("boot"), dict)
        and isinstance(part.get("workers"), list)
        and all(isinstance(w, dict) for w in part["workers"])
        and (part.get("last_invocation") is None or isinstance(part["last_invocation"], dict))
        for part in functions.values()
    )


#: Which boot status a function shows when serving processes differ: the first of these any has.
_BOOT_PRECEDENCE = ("error", "booted", "not_booted")


def _merged_state(parts: Sequence[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """One function's boot, workers and last invocation over the serving processes' `parts`
    (pid, state): workers listed with their process, boots added up, the latest invocation."""
    if not parts:
        return {"boot": {"status": "disabled", "boots": 0, "error": None}, "workers": [], "last_invocation": None}
    statuses = {part["boot"].get("status") for _, part in parts}
    status = next((s for s in _BOOT_PRECEDENCE if s in statuses), "not_booted")
    errors = [part["boot"].get("error") for _, part in parts if part["boot"].get("error")]
    lasts = [part["last_invocation"] for _, part in parts if part.get("last_invocation")]
    sources = [part["boot"]["source_error"] for _, part in parts if part["boot"].get("source_error")]
    boot: dict[str, Any] = {
        "status": status,
        "boots": sum(part["boot"].get("boots") or 0 for _, part in parts),
        "error": errors[0] if errors else None,
    }
    if sources:
        boot["source_error"] = sources[0]
    return {
        "boot": boot,
        "workers": [{**worker, "process": pid} for pid, part in parts for worker in part["workers"]],
        "last_invocation": max(lasts, key=lambda last: last.get("at") or 0) if lasts else None,
    }


def _guard(endpoint: Endpoint) -> Endpoint:
    """DashboardError → its JSON error; a store failure → 503, logged; the server keeps serving."""

    async def call(request: Request) -> Response:
        try:
            return await endpoint(request)
        except DashboardError as exc:
            return _error(exc.status, str(exc))
        except JobsError as exc:
            return _error(409, str(exc))
        except Exception as exc:
            logger.exception("dashboard API %s failed", request.url.path)
            return _error(503, f"{type(exc).__name__}: {exc}")

    return call


def routes(dashboard: Dashboard, prefix: str) -> list[BaseRoute]:
    """The API routes under `prefix` (e.g. `/_edgeruntime/api`)."""
    api = Api(dashboard)
    table: list[tuple[str, Endpoint, list[str]]] = [
        ("/functions", api.functions, ["GET"]),
        ("/cron", api.cron, ["GET"]),
        ("/cron/{name}/run", api.cron_run, ["POST"]),
        ("/cron/{name}/pause", api.cron_pause, ["POST"]),
        ("/cron/{name}/resume", api.cron_resume, ["POST"]),
        ("/runs", api.runs, ["GET"]),
        ("/queue", api.queue, ["GET"]),
        ("/failed", api.failed, ["GET"]),
        ("/failed/retry-all", api.failed_retry_all, ["POST"]),
        ("/failed/{id:int}/retry", api.failed_retry, ["POST"]),
        ("/failed/{id:int}", api.failed_delete, ["DELETE"]),
    ]
    return [Route(prefix + path, _guard(fn), methods=methods) for path, fn, methods in table]


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's 404 and 405 under the API as JSON errors (405 keeps its `Allow` header)."""
    assert isinstance(exc, HTTPException)
    message = f"no API endpoint {request.url.path}" if exc.status_code == 404 else f"{request.method}: {exc.detail}"
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)
