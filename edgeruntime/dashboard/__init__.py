"""The monitoring dashboard at ``/_edgeruntime/`` and the metrics at ``/_internal/metrics``.

Both are extensions of the gateway (:mod:`edgeruntime.gateway.extensions`): the dashboard mounts
the page, its static files and its JSON API (``/_edgeruntime/api/...``) and the Prometheus metrics
on the app; the metrics observe every invocation, background task and worker, and the cron
scheduler's ticks. ``attach(app, jobs)`` registers both.
The page is one HTML, one JS and one CSS file served from the package: no build step, no CDN.

Under ``--workers N`` a request reaches one serving process; the metrics and the functions' workers
(in-flight requests, pending background work) are then gathered from all of them through
`siblings`, a callback the serving layer sets (see :mod:`edgeruntime.serving.control`). Runs,
cron ticks and jobs are in the store every serving process shares.

Access: on a loopback host everything is open to requests whose ``Host`` names loopback (or a name
of ``[dashboard] allowed_hosts``), else 403; on any other host the dashboard, its API and the
metrics need the service-role key, else 401 (see :mod:`edgeruntime.dashboard.access`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from edgeruntime.core.types import Receive, Scope, Send
from edgeruntime.dashboard.access import (
    REALM,
    HostRule,
    RefusalLog,
    access_headers,
    host_allowed,
    is_cross_origin,
    is_loopback,
    is_service_role,
    presents_public_key,
)
from edgeruntime.dashboard.metrics import CONTENT_TYPE, Metrics
from edgeruntime.exceptions import DuplicateHeader, SiblingsUnavailable
from edgeruntime.gateway.extensions import Extension

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from edgeruntime.core.types import ASGIApp
    from edgeruntime.gateway.app import EdgeApp
    from edgeruntime.gateway.extensions import Invocation
    from edgeruntime.jobs.system import JobSystem

__all__ = ["DASHBOARD_PATH", "METRICS_PATH", "Dashboard", "Siblings", "attach"]

logger = logging.getLogger("edgeruntime.dashboard")

DASHBOARD_PATH = "/_edgeruntime"
METRICS_PATH = "/_internal/metrics"
#: The files of the page: name → content type.
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
#: The page holds no secrets but shows live data: never cached, never framed by other sites.
PAGE_HEADERS = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
}


#: Asks every serving process (this one included) for what it holds ("metrics", "functions") and
#: returns their answers; raises SiblingsUnavailable when not all of them answered.
Siblings = Callable[[str], Awaitable[list[Any]]]


@functools.cache  # read once: a server out of file descriptors still serves its dashboard
def _static(name: str) -> bytes:
    from importlib import resources

    return resources.files("edgeruntime.dashboard").joinpath("static", name).read_bytes()


class Dashboard(Extension):
    """The dashboard and metrics of one app (see the module docstring)."""

    def __init__(self, app: EdgeApp, jobs: JobSystem | None = None) -> None:
        self.app = app
        self.jobs = jobs
        self.metrics = Metrics(app.functions)  # live: functions added by a reload count too
        self._tasks: set[asyncio.Task[Any]] = set()
        self.open = is_loopback(app.settings.host)
        #: Names besides loopback ones under which the open dashboard is served.
        self.allowed_hosts = [HostRule.parse(h) for h in app.settings.config.dashboard.allowed_hosts]
        self.refusals = RefusalLog()
        #: Set when this is one serving process of several (`--workers N`).
        self.siblings: Siblings | None = None

    def mounts(self) -> Mapping[str, ASGIApp]:
        return {DASHBOARD_PATH: self, METRICS_PATH: self}

    async def quiesce(self) -> None:
        """Let the work started from the page (Run now) finish, up to the graceful-exit timeout."""
        await self.stop_tasks()

    @functools.cached_property
    def asgi(self) -> Starlette:
        """The page, its files, its API and the metrics, built on the first request to any of them.

        The routes and the API module are not needed to serve functions: `serve` starts sooner.
        """
        from starlette.applications import Starlette
        from starlette.routing import Route

        from edgeruntime.dashboard import api

        return Starlette(
            routes=[
                Route(DASHBOARD_PATH, self._redirect),
                Route(DASHBOARD_PATH + "/", self._page),
                Route(DASHBOARD_PATH + "/static/{name}", self._file),
                *api.routes(self, DASHBOARD_PATH + "/api"),
                Route(METRICS_PATH, self._metrics),
            ],
            exception_handlers={404: self._http_error, 405: self._http_error},
        )

    @property
    def last_invocations(self) -> dict[str, Invocation]:
        """The last finished invocation of each function, for the functions table."""
        # Kept by the metrics' invocation observer: one observer call per request, not two.
        return self.metrics.last_invocations

    # -- background work -------------------------------------------------------------------

    def spawn(self, work: Coroutine[Any, Any, Any], name: str) -> None:
        """Run `work` in the background (Run now); awaited or cancelled at shutdown."""

        async def logged() -> None:
            try:
                await work
            except Exception:
                logger.exception("dashboard: %s failed", name)

        task = asyncio.get_running_loop().create_task(logged(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop_tasks(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.app.settings.graceful_exit_timeout_sec)
            for task in set(self._tasks):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            headers = access_headers(scope["headers"])
        except DuplicateHeader as exc:
            response = JSONResponse({"error": str(exc)}, status_code=400)
            await response(scope, receive, send)
            return
        keys = self.app.verifier.keys
        host = headers.get("host")
        # Open on loopback, but only to loopback names: under DNS rebinding a page of another site
        # arrives with its own name in Host (and Origin to match).
        if self.open and not host_allowed(host, self.allowed_hosts) and not is_service_role(headers, keys):
            self.refusals.refused(host)
            response = JSONResponse(
                {
                    "error": "Host not allowed: the dashboard on a loopback address is served to loopback "
                    "names only (localhost, 127.0.0.1, [::1]) and to [dashboard] allowed_hosts"
                },
                status_code=403,
            )
            await response(scope, receive, send)
            return
        # Open on loopback means any page in the developer's browser could post here: refuse other sites.
        if is_cross_origin(scope["method"], headers):
            response = JSONResponse({"error": "cross-origin request refused"}, status_code=403)
            await response(scope, receive, send)
            return
        if not self.open:
            if not is_service_role(headers, keys, public=True):
                message = "the dashboard needs the service role key on a non-loopback host"
                if presents_public_key(headers):
                    why = "the local demo keys are public, and not this server's ('edgeruntime keys' prints them)"
                    message = f"{message}: {why}"
                response = JSONResponse(
                    {"msg": message},
                    status_code=401,
                    headers={"www-authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
                )
                await response(scope, receive, send)
                return
        await self.asgi(scope, receive, send)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        if request.url.path.startswith(DASHBOARD_PATH + "/api/"):
            from edgeruntime.dashboard import api

            return await api.http_error(request, exc)
        assert isinstance(exc, HTTPException)
        return Response(exc.detail, status_code=exc.status_code, headers=exc.headers, media_type="text/plain")

    async def _redirect(self, request: Request) -> Response:
        return RedirectResponse(DASHBOARD_PATH + "/", status_code=308)

    async def _page(self, request: Request) -> Response:
        return Response(_static("index.html"), media_type=STATIC_FILES["index.html"], headers=PAGE_HEADERS)

    async def _file(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES or name == "index.html":
            return Response("Not Found", status_code=404, media_type="text/plain")
        return Response(_static(name), media_type=STATIC_FILES[name], headers=PAGE_HEADERS)

    async def _metrics(self, request: Request) -> Response:
        gathered = None
        if self.siblings is not None:
            try:
                gathered = await self.siblings("metrics")
            except SiblingsUnavailable as exc:
                # Some processes' counts only would look like counters going back: no answer is better.
                logger.warning("metrics: %s", exc)
                return Response(f"metrics: {exc}\n", status_code=503, media_type="text/plain")
        if self.jobs is not None:
            try:
                self.metrics.queue(await self.jobs.store.queue_stats(limit=0), self.jobs.clock.now())
            except Exception:  # a scrape still answers when the store is away
                logger.exception("metrics: reading the queue failed")
        body = self.metrics.render() if gathered is None else self.metrics.render_gathered(gathered)
        return Response(body, media_type=CONTENT_TYPE)

    def process_state(self) -> dict[str, Any]:
        """What this process holds of each function (boot, workers with their in-flight requests
        and pending background work, last invocation), as plain data: one serving process's part
        of the dashboard's functions table."""
        from edgeruntime.dashboard import api

        return {"pid": os.getpid(), "functions": api.function_states(self)}


def attach(app: EdgeApp, jobs: JobSystem | None = None) -> Dashboard:
    """Register the dashboard and its metrics with `app` (see the module docstring)."""
    dashboard = Dashboard(app, jobs)
    app.add_extension(dashboard.metrics)
    app.add_extension(dashboard)
    if jobs is not None:
        jobs.scheduler.observers.append(dashboard.metrics.cron_tick)
    return dashboard
