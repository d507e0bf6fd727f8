"""The ASGI app behind ``edgeruntime serve`` and the test client: the local functions gateway.

Routes ``/functions/v1/<name>[/...]`` to function ``<name>`` (which sees the path ``/<name>/...``),
checks its JWT when verify_jwt is on, turns failures into the local Supabase responses, gives every
request an execution id (``x-edgeruntime-execution-id``) and writes one access line per request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Iterable
from typing import Any

from edgeruntime.config.settings import Settings
from edgeruntime.core import responses
from edgeruntime.core.background import BackgroundTask
from edgeruntime.core.context import ExecutionContext
from edgeruntime.core.descriptors import exhaustion, report_exhaustion
from edgeruntime.core.logs import AccessLogger, log_access
from edgeruntime.core.metering import LoopWatchdog
from edgeruntime.core.types import ASGIApp, Enqueue, Message, Receive, Scope, Send
from edgeruntime.core.worker_state import default_worker
from edgeruntime.exceptions import (
    BootError,
    DuplicateHeader,
    FunctionError,
    IdleTimeout,
    JobsError,
    LimitExceeded,
    PayloadTooLarge,
    ResourceExhausted,
    WorkerCrashed,
)
from edgeruntime.functions.discovery import SHARED, discover
from edgeruntime.functions.loading import purge_modules
from edgeruntime.gateway.auth import Verifier, credentials
from edgeruntime.gateway.extensions import BackgroundObserver, Extension, Invocation, InvocationObserver, WorkerObserver
from edgeruntime.workers.process.sandbox import WorkerLauncher, sandbox_for
from edgeruntime.workers.supervisor import FunctionSupervisor

__all__ = ["EdgeApp", "Invocation"]

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
#: The 405s, by (Allow header, CONNECT or not).
_NOT_ALLOWED = {
    (allow, connect): dataclasses.replace(
        responses.METHOD_NOT_ALLOWED, extra_headers=(allow, CLOSE) if connect else (allow,)
    )
    for allow in (ALLOW_FUNCTION, ALLOW_HEALTH)
    for connect in (False, True)
}


def _not_allowed(method: str, allow: tuple[bytes, bytes]) -> responses.RuntimeResponse:
    """The 405 for `method` with `allow`; CONNECT's closes the connection too."""
    return _NOT_ALLOWED[allow, method == "CONNECT"]


EXECUTION_ID_HEADER = b"x-edgeruntime-execution-id"
#: Percent-encoded bytes that must never reach a function name: `/`, `\`, NUL.
_FORBIDDEN_ENCODED = (b"%2f", b"%5c", b"%00")


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

    def __init__(self, settings: Settings, *, access_log: AccessLogger = log_access) -> None:
        self.settings = settings
        self.verifier = Verifier(settings.keys, settings.env.get("SUPABASE_JWKS"))
        self.functions: dict[str, FunctionSupervisor] = {}
        #: Starts worker processes in their sandbox (process isolation; None inline). The server's
        #: own files (config.toml, the signing keys, what extensions name) are hidden from them.
        self.launcher: WorkerLauncher | None = None
        if settings.isolation == "process":
            private = [p for p in (settings.config.path, settings.config.signing_keys_path) if p is not None]
            self.launcher = WorkerLauncher(sandbox_for(settings), settings.functions_dir, private)
        self.started = False
        #: Writes the access line of every request (`edgeruntime serve` passes a faster writer).
        self.access_log: AccessLogger = access_log
        # What the extensions registered. The supervisors hold these lists by reference and
        # enqueue through `self.enqueue`, so they see extensions registered after them.
        self._extensions: list[Extension] = []
        self._observers: list[InvocationObserver] = []
        self._background_observers: list[BackgroundObserver] = []
        self._worker_observers: list[WorkerObserver] = []
        self._enqueue: Enqueue | None = None
        self._mounts: dict[str, ASGIApp] = {}
        #: Reports functions holding the shared event loop (inline isolation only).
        self.watchdog = LoopWatchdog() if settings.isolation == "inline" else None
        self.refresh()

    @property
    def extensions(self) -> tuple[Extension, ...]:
        """The registered extensions, in the order they start."""
        return tuple(self._extensions)

    def add_extension(self, extension: Extension) -> None:
        """Register `extension` (see :mod:`edgeruntime.gateway.extensions`); before the app starts."""
        if self.started:
            raise RuntimeError("add_extension() after the app started: its start() would never run")
        self._extensions.append(extension)
        if extension.observe_invocation is not None:
            self._observers.append(extension.observe_invocation)
        if extension.observe_background is not None:
            self._background_observers.append(extension.observe_background)
        if extension.observe_worker is not None:
            self._worker_observers.append(extension.observe_worker)
        if extension.enqueue is not None:
            self._enqueue = extension.enqueue
        if self.launcher is not None:
            for path in extension.private_paths():
                self.launcher.hide(path)
        self._mounts.update(extension.mounts())

    async def enqueue(
        self,
        function: str,
        payload: Any = None,
        *,
        delay: float = 0,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Enqueue a job with the extension that serves enqueues (the jobs system): what a function
        in a worker process calls, through its channel. Raises JobsError when there is none."""
        if self._enqueue is None:
            raise JobsError("enqueue: no jobs store is running (use edgeruntime serve or EdgeClient)")
        return await self._enqueue(
            function, payload, delay=delay, max_attempts=max_attempts, idempotency_key=idempotency_key
        )

    # -- functions -------------------------------------------------------------------------

    def refresh(self) -> None:
        """Rescan the functions directory: add new functions (their files compiled, see
        :meth:`FunctionSupervisor.check`), forget removed ones."""
        found = discover(self.settings.functions_dir)
        for name in list(self.functions):
            if name not in found:
                self.functions.pop(name).reload()
        for name, spec in found.items():
            if name not in self.functions and self.settings.enabled(name):
                supervisor = self.functions[name] = FunctionSupervisor(
                    spec,
                    self.settings,
                    self._background_observers,
                    self.launcher,
                    self._worker_observers,
                    enqueue=self.enqueue,
                )
                supervisor.check()

    def pending_background(self) -> list[BackgroundTask]:
        """Every background task still running, in every worker of every function."""
        return [t for s in self.functions.values() for w in s.workers for t in w.pending_background()]

    def reload(self, names: set[str]) -> list[str]:
        """Reload the named functions (`_shared` reloads all), their files compiled again; returns
        the names reloaded."""
        known = set(self.functions)
        self.refresh()
        if SHARED in names:
            purge_modules(SHARED)
            names = set(self.functions)
        reloaded = []
        for name in sorted(names):
            supervisor = self.functions.get(name)
            if supervisor is not None:
                supervisor.reload()
                if name in known:  # a new one was compiled by refresh()
                    supervisor.check()
                reloaded.append(name)
        return reloaded

    def reconfigure(self, settings: Settings, reload: Iterable[str] | None = None) -> list[str]:
        """Serve with `settings` from now on (config.toml or .env edited while serving).

        JWT verification, the keys and the request limits apply to the next request; functions
        newly disabled are no longer served and newly enabled ones are; the functions named in
        `reload` (None: all) retire their workers so the next request boots them with the new
        env and limits. Settings that cannot change while serving (the host, the isolation ...)
        are the caller's to keep. Returns the names reloaded.
        """
        self.settings = settings
        self.verifier = Verifier(settings.keys, settings.env.get("SUPABASE_JWKS"))
        for extension in self._extensions:
            try:
                extension.reconfigure(settings)
            except Exception:
                logger.exception("reconfiguring %s failed", type(extension).__name__)
        for name in list(self.functions):
            if not settings.enabled(name):
                self.functions.pop(name).reload()
            else:
                self.functions[name].configure(settings)
        known = set(self.functions)
        self.refresh()
        names = set(self.functions) if reload is None else set(reload) & known
        for name in sorted(names):
            self.functions[name].reload()
        return sorted(names)

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
            if self._observers:
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
                for observer in self._observers:
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
                await responses.send_response(send, _not_allowed(method, ALLOW_HEALTH))
        elif method == "CONNECT":
            await responses.send_response(send, _not_allowed(method, ALLOW_FUNCTION))
        elif (mounted := self._mounted(path)) is not None:
            await mounted(scope, receive, send)
        else:
            await responses.send_response(send, responses.NOT_FOUND)

    def _mounted(self, path: str) -> ASGIApp | None:
        for prefix, mounted in self._mounts.items():
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
            await responses.send_response(send, _not_allowed(method, ALLOW_FUNCTION))
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
        """Start the loop watchdog (inline) or say which sandbox the worker processes run in
        (process isolation), then every extension in the order they were registered."""
        if self.started:
            return
        self.started = True
        if self.watchdog is not None:
            self.watchdog.start()
        if self.launcher is not None:
            sandbox = self.launcher.sandbox
            logger.info("worker processes: sandbox %s", sandbox.describe())
            if sandbox.warning:
                logger.warning("worker processes: sandbox %s: %s", sandbox.mode, sandbox.warning)
        for extension in self._extensions:
            await extension.start()

    async def shutdown(self, timeout: float | None = None) -> list[str]:
        """Graceful shutdown: `beforeunload` (termination), wait for background work, cut the rest.

        Extensions stop taking new work first (``quiesce``) and are stopped last, in reverse
        order. Returns descriptions of the background tasks that were cut.
        """
        timeout = self.settings.graceful_exit_timeout_sec if timeout is None else timeout
        for extension in self._extensions:
            try:
                await extension.quiesce()
            except Exception:
                logger.exception("stopping %s failed", type(extension).__name__)
        try:
            results = await asyncio.gather(*(s.shutdown(timeout) for s in self.functions.values()))
            cut = [entry for names in results for entry in names]
            if cut:
                logger.warning(
                    "shutdown cut %d background task(s) still running after %.0f s: %s",
                    len(cut),
                    timeout,
                    "; ".join(cut),
                )
        finally:
            if self.launcher is not None:  # the functions' templates, once their workers have ended
                await self.launcher.close()
            for extension in reversed(self._extensions):
                try:
                    await extension.stop()
                except Exception:
                    logger.exception("shutting %s down failed", type(extension).__name__)
            if self.watchdog is not None:
                self.watchdog.stop()
            self.started = False
        return cut
