"""The ASGI app behind ``edgeruntime serve`` and the test client: the local functions gateway.

Routes ``/functions/v1/<name>[/...]`` to function ``<name>`` (which sees the path ``/<name>/...``),
checks its JWT when verify_jwt is on, turns failures into the local Supabase responses, gives every
request an execution id (``x-edgeruntime-execution-id``) and writes one access line per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from edgeruntime import responses
from edgeruntime.auth import Verifier, credentials
from edgeruntime.background import BackgroundTask
from edgeruntime.context import ExecutionContext, default_worker
from edgeruntime.descriptors import exhaustion, report_exhaustion
from edgeruntime.discovery import SHARED, discover, purge_modules
from edgeruntime.exceptions import (
    BootError,
    DuplicateHeader,
    FunctionError,
    IdleTimeout,
    LimitExceeded,
    PayloadTooLarge,
    ResourceExhausted,
    WorkerCrashed,
)
from edgeruntime.logs import AccessLogger, log_access
from edgeruntime.metering import LoopWatchdog
from edgeruntime.sandbox import WorkerLauncher
from edgeruntime.settings import Settings
from edgeruntime.supervisor import FunctionSupervisor, WorkerObserver
from edgeruntime.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["EdgeApp", "Invocation", "create_app"]

logger = logging.getLogger("edgeruntime")

PREFIX = "/functions/v1/"
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"})
HEALTH_PATH = "/_internal/health"
#: The `Allow` header of a 405 from a function route and from the health check.
ALLOW_FUNCTION = (b"allow", b"GET, POST, PUT, PATCH, DELETE, OPTIONS, HEAD")
ALLOW_HEALTH = (b"allow", b"GET, HEAD")
#: Added to the 405 answering CONNECT: nothing is tunnelled, and a parser that switched to
#: tunnel mode (httptools) could not read a next request on the connection anyway.
CLOSE = (b"connection", b"close")
EXECUTION_ID_HEADER = b"x-edgeruntime-execution-id"
#: Percent-encoded bytes that must never reach a function name: `/`, `\`, NUL.
_FORBIDDEN_ENCODED = (b"%2f", b"%5c", b"%00")


class Invocation(NamedTuple):
    """One finished invocation, handed to observers (run history, metrics).

    A named tuple, not a dataclass: one is made for every request.
    """

    function: str
    trigger: str
    execution_id: str
    method: str
    path: str
    status: int
    started_at: float
    duration_ms: float
    error: str | None = None


InvocationObserver = Callable[[Invocation], None]
Hook = Callable[[], Awaitable[None]]


def _function_name(scope: Scope) -> str:
    """The function name of a `/functions/v1/<name>/...` request ("" if the path is malformed).

    Only names found on disk are ever looked up, so `..`, overlong names and the like simply
    match nothing; encoded separators and NUL are refused outright.
    """
    path: str = scope["path"]
    raw = scope.get("raw_path") or b""
    if "\x00" in path or (b"%" in raw and any(bad in raw.lower() for bad in _FORBIDDEN_ENCODED)):
        return ""
    return path[len(PREFIX) :].partition("/")[0]


#: What the gateway answers when a function fails in each way (the local Supabase forms).
ERROR_RESPONSES: dict[type[FunctionError], responses.RuntimeResponse] = {
    BootError: responses.BOOT_ERROR,
    WorkerCrashed: responses.WORKER_ERROR,
    LimitExceeded: responses.WORKER_LIMIT,
    IdleTimeout: responses.IDLE_TIMEOUT,
    PayloadTooLarge: responses.PAYLOAD_TOO_LARGE,
}


def _error_response(exc: FunctionError) -> responses.RuntimeResponse | None:
    """The response for `exc` or its nearest base class in ERROR_RESPONSES."""
    for cls in type(exc).__mro__:
        response = ERROR_RESPONSES.get(cls)
        if response is not None:
            return response
    return None


class EdgeApp:
    """The gateway in front of every function of one functions directory."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.verifier = Verifier(settings.keys, settings.env.get("SUPABASE_JWKS"))
        self.functions: dict[str, FunctionSupervisor] = {}
        self.observers: list[InvocationObserver] = []
        #: Told when a worker retires or ends: (event, function, reason).
        self.worker_observers: list[WorkerObserver] = []
        #: Starts worker processes in their sandbox (process isolation; None inline).
        self.launcher: WorkerLauncher | None = None
        if settings.isolation == "process":
            sandbox = settings.resolve_sandbox()
            private = [p for p in (settings.config.path, settings.config.signing_keys_path) if p is not None]
            self.launcher = WorkerLauncher(sandbox, settings.functions_dir, private)
        #: Called with every background task that ends, in any function.
        self.background_observers: list[Callable[[BackgroundTask], None]] = []
        self.startup_hooks: list[Hook] = []
        #: Run first on shutdown, before functions drain: stop taking new work (cron, queue).
        self.stopping_hooks: list[Hook] = []
        self.shutdown_hooks: list[Hook] = []
        #: Path prefix → ASGI app, for paths outside /functions/v1/ (the dashboard, metrics).
        self.mounts: dict[str, ASGIApp] = {}
        self.started = False
        #: Writes the access line of every request (the server swaps in a faster writer).
        self.access_log: AccessLogger = log_access
        self.refresh()
        if self.launcher is not None:
            self.startup_hooks.append(self._announce_sandbox)
        if settings.isolation == "inline":  # limits: report functions holding the shared event loop
            self.watchdog = LoopWatchdog()
            self.startup_hooks.append(self._start_watchdog)
            self.shutdown_hooks.append(self._stop_watchdog)

    async def _announce_sandbox(self) -> None:
        assert self.launcher is not None
        sandbox = self.launcher.sandbox
        logger.info("worker processes: sandbox %s", sandbox.describe())
        if sandbox.warning:
            logger.warning("worker processes: sandbox %s: %s", sandbox.mode, sandbox.warning)

    async def _start_watchdog(self) -> None:
        self.watchdog.start()

    async def _stop_watchdog(self) -> None:
        self.watchdog.stop()

    # -- functions -------------------------------------------------------------------------

    def refresh(self) -> None:
        """Rescan the functions directory: add new functions, forget removed ones."""
        found = discover(self.settings.functions_dir)
        for name in list(self.functions):
            if name not in found:
                self.functions.pop(name).reload()
        for name, spec in found.items():
            if name not in self.functions and self.settings.enabled(name):
                self.functions[name] = FunctionSupervisor(
                    spec, self.settings, self.background_observers, self.launcher, self.worker_observers
                )

    def pending_background(self) -> list[BackgroundTask]:
        """Every background task still running, in every worker of every function."""
        return [t for s in self.functions.values() for w in s.workers for t in w.pending_background()]

    def reload(self, names: set[str]) -> list[str]:
        """Reload the named functions (`_shared` reloads all); returns the names reloaded."""
        self.refresh()
        if SHARED in names:
            purge_modules(SHARED)
            names = set(self.functions)
        reloaded = []
        for name in sorted(names):
            supervisor = self.functions.get(name)
            if supervisor is not None:
                supervisor.reload()
                reloaded.append(name)
        return reloaded

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.handle_http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:  # websockets are not supported by the edge runtime emulation yet
            await send({"type": "websocket.close", "code": 1000})

    async def handle_http(self, scope: Scope, receive: Receive, send: Send, trigger: str = "http") -> None:
        path: str = scope["path"]
        if not path.startswith(PREFIX):
            await self._handle_other(scope, receive, send)
            return

        started = time.perf_counter()
        name = _function_name(scope)
        ctx = ExecutionContext(name, default_worker(), trigger=trigger)
        execution_id = ctx.execution_id
        exec_header = (EXECUTION_ID_HEADER, execution_id.encode())

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                ctx.response_started = True
                ctx.status = message["status"]
                message["headers"] = [*message.get("headers", ()), exec_header]
            await send(message)

        error: str | None = None
        try:
            error = await self._dispatch(scope, receive, tracked_send, ctx, name)
        finally:
            duration_ms = (time.perf_counter() - started) * 1000
            status = ctx.status or 500
            if ctx.client_disconnected:  # whatever the function did next reached no one
                status = responses.CLIENT_CLOSED_REQUEST
                error = "client disconnected before the response"
            method = scope["method"]
            self.access_log(method, path, status, duration_ms, name or None, execution_id)
            if self.observers:
                record = Invocation(
                    name,
                    trigger,
                    execution_id,
                    method,
                    path,
                    status,
                    time.time() - duration_ms / 1000,
                    duration_ms,
                    error,
                )
                for observer in self.observers:
                    try:
                        observer(record)
                    except Exception:
                        logger.exception("invocation observer failed")

    async def _handle_other(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Paths outside /functions/v1/: the health check, the mounts (dashboard, metrics), else 404."""
        path: str = scope["path"]
        method = scope["method"]
        if path == HEALTH_PATH:
            if method == "GET" or method == "HEAD":
                await responses.send_response(send, responses.HEALTH)
            else:
                await _method_not_allowed(send, method, ALLOW_HEALTH)
        elif method == "CONNECT":
            await _method_not_allowed(send, method, ALLOW_FUNCTION)
        elif (mounted := self._mounted(path)) is not None:
            await mounted(scope, receive, send)
        else:
            await responses.send_response(send, responses.NOT_FOUND)

    def _mounted(self, path: str) -> ASGIApp | None:
        for prefix, mounted in self.mounts.items():
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return mounted
        return None

    async def _dispatch(
        self, scope: Scope, receive: Receive, send: Send, ctx: ExecutionContext, name: str
    ) -> str | None:
        """Route to the function; returns an error description for the run record, if any."""
        supervisor = self.functions.get(name) if name else None
        if supervisor is None:
            await responses.send_response(send, responses.FUNCTION_NOT_FOUND)
            return None
        method = scope["method"]
        if method not in METHODS:
            await _method_not_allowed(send, method, ALLOW_FUNCTION)
            return None
        try:
            authorization, apikey = credentials(scope["headers"])
        except DuplicateHeader as exc:
            # Refused whether or not the function verifies JWTs: it would read one copy, a check another.
            duplicate = responses.DUPLICATE_APIKEY if exc.header == "apikey" else responses.DUPLICATE_AUTHORIZATION
            await responses.send_response(send, duplicate)
            return f"400 {exc}"
        if supervisor.verify_jwt and method != "OPTIONS":
            failure = self.verifier.check_credentials(authorization, apikey)
            if failure is not None:
                await responses.send_response(
                    send,
                    responses.RuntimeResponse(401, failure.body, responses.JSON_TYPE, failure.code),
                )
                return f"401 {failure.message}"
        fn_scope = dict(scope)
        fn_scope["path"] = scope["path"][len(PREFIX) - 1 :]
        raw = scope.get("raw_path")
        if raw is not None:
            fn_scope["raw_path"] = raw[len(PREFIX) - 1 :]
        fn_scope["root_path"] = ""
        # The gateway's apikey rewrite; the function reads the one Authorization that was checked.
        fn_scope["headers"] = self.verifier.forwarded_headers(scope["headers"], authorization, apikey)
        try:
            await supervisor.dispatch(fn_scope, receive, send, ctx)
        except ResourceExhausted as exc:
            error = exhaustion(exc)
            if error is not None:
                report_exhaustion(exc.action, error, name)
            if not ctx.response_started:
                await responses.send_response(send, responses.RESOURCE_EXHAUSTED)
            return str(exc)
        except FunctionError as exc:
            response = _error_response(exc)
            if response is None:
                raise
            if not ctx.response_started:
                await responses.send_response(send, response)
            return str(exc)
        return ctx.error  # what the handler raised, when it did (it got a 500 or 502)

    # -- lifecycle -------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    logger.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Run the startup hooks (the job scheduler and the like)."""
        if self.started:
            return
        self.started = True
        for hook in self.startup_hooks:
            await hook()

    async def shutdown(self, timeout: float | None = None) -> list[str]:
        """Graceful shutdown: `beforeunload` (termination), wait for background work, cut the rest.

        Returns descriptions of the background tasks that were cut.
        """
        timeout = self.settings.graceful_exit_timeout_sec if timeout is None else timeout
        for hook in self.stopping_hooks:
            try:
                await hook()
            except Exception:
                logger.exception("stopping hook failed")
        results = await asyncio.gather(*(s.shutdown(timeout) for s in self.functions.values()))
        cut = [entry for names in results for entry in names]
        if cut:
            logger.warning(
                "shutdown cut %d background task(s) still running after %.0f s: %s",
                len(cut),
                timeout,
                "; ".join(cut),
            )
        for hook in reversed(self.shutdown_hooks):
            try:
                await hook()
            except Exception:
                logger.exception("shutdown hook failed")
        self.started = False
        return cut


async def _method_not_allowed(send: Send, method: str, allow: tuple[bytes, bytes]) -> None:
    extra = [allow, CLOSE] if method == "CONNECT" else [allow]
    await responses.send_response(send, responses.METHOD_NOT_ALLOWED, extra)


def create_app(settings: Settings) -> EdgeApp:
    """The ASGI app that serves every function of `settings.functions_dir`."""
    return EdgeApp(settings)
