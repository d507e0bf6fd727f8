"""The ASGI app behind ``edgeruntime serve`` and the test client: the local functions gateway.

Routes ``/functions/v1/<name>[/...]`` to function ``<name>`` (which sees the path ``/<name>/...``),
checks its JWT when verify_jwt is on, turns failures into the local Supabase responses, gives every
request an execution id (``x-edgeruntime-execution-id``) and writes one access line per request.
WebSocket upgrade requests take the same path (see :mod:`edgeruntime.gateway.websocket`), and
are recorded once per connection, when it ends.

The runtime's own responses on function routes carry CORS headers as the local stack's Kong
``cors`` plugin adds them (``[edge_runtime] cors_origins``); a function's own responses are
passed on untouched. A CORS preflight (``OPTIONS`` with ``Origin`` and
``Access-Control-Request-Method``) goes to the function, as on the platform; when the runtime
would answer it itself (an unknown function, a boot error, a crash, a handler that raised), the
gateway answers it as Kong does (200, no body), so the browser goes on to the actual request and
can read its error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
import urllib.parse
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from edgeruntime.config.settings import Settings
from edgeruntime.core import responses
from edgeruntime.core.background import BackgroundTask
from edgeruntime.core.context import ExecutionContext, new_execution_id
from edgeruntime.core.descriptors import exhaustion, report_exhaustion
from edgeruntime.core.events import StopReason
from edgeruntime.core.logs import AccessLogger, log_access
from edgeruntime.core.metering import LoopWatchdog
from edgeruntime.core.responses import RUNTIME_RESPONSE, CorsPolicy
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
from edgeruntime.gateway.websocket import CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_NORMAL, Socket, close_for
from edgeruntime.workers.supervisor import FunctionSupervisor

if TYPE_CHECKING:
    from edgeruntime.workers.process.sandbox import WorkerLauncher

__all__ = ["EdgeApp", "Invocation"]

logger = logging.getLogger("edgeruntime")

PREFIX = responses.FUNCTIONS_PREFIX
_PREFIX_BYTES = PREFIX.encode()
#: Where a raw path that starts with the prefix as it is written is cut for the function.
_RAW_CUT = len(_PREFIX_BYTES) - 1
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


#: Makes an Invocation from a tuple of its fields (what its `_make` does, without the method call).
_invocation = tuple.__new__


def _not_allowed(method: str, allow: tuple[bytes, bytes]) -> responses.RuntimeResponse:
    """The 405 for `method` with `allow`; CONNECT's closes the connection too."""
    return _NOT_ALLOWED[allow, method == "CONNECT"]


#: On every response to a function route (added by the gateway to what the function sends).
EXECUTION_ID_HEADER = b"x-edgeruntime-execution-id"


def gateway_start(message: Message) -> bool:
    """Whether `message` starts a response the gateway sends for a function route.

    The servers of `edgeruntime serve` raise OSError for such a start when its client has gone
    before it (ASGI 2.4 lets a server raise it on any send): the gateway then records the request
    as 499, and the function is not told. What else they send to a client that has gone (a
    body, the dashboard's answers) they drop silently, as Uvicorn and Hypercorn do.
    """
    if message["type"] != "http.response.start":
        return False
    return any(name == EXECUTION_ID_HEADER for name, _ in message.get("headers", ()))


#: The trigger a WebSocket connection is recorded with (run history, metrics).
WEBSOCKET_TRIGGER = "websocket"
#: Percent-encoded bytes that must never reach a function name: `/`, `\`, NUL.
_FORBIDDEN_ENCODED = (b"%2f", b"%5c", b"%00")
#: Control characters (C0, DEL, C1), which a path only holds percent-encoded: decoded, a line
#: break would forge lines in the server's log, an escape sequence drive the terminal showing it.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _function_name(scope: Scope) -> str:
    """The function name of a `/functions/v1/<name>/...` request ("" if the path is malformed).

    Only names found on disk are ever looked up, so `..`, overlong names and the like simply
    match nothing; encoded separators and control characters are refused outright.
    """
    path: str = scope["path"]
    raw = scope.get("raw_path") or b""
    if not path.isprintable() and _CONTROL.search(path):  # isprintable(): one fast check for most paths
        return ""
    if b"%" in raw and any(bad in raw.lower() for bad in _FORBIDDEN_ENCODED):
        return ""
    return path[len(PREFIX) :].partition("/")[0]


def _function_raw_path(raw: bytes) -> bytes:
    """The raw path a function sees: the request's from the `/` before the function name.

    The prefix may be percent-encoded (`/%66unctions/v1/...` decodes to the same path), so it is
    not cut at its decoded length; an encoded `/` is refused before this, so the raw path has
    the path's slashes.
    """
    if raw.startswith(_PREFIX_BYTES):
        return raw[_RAW_CUT:]
    return b"/" + raw.split(b"/", 3)[-1]


def _printable(text: str) -> str:
    """`text` for a log line: what is not printable percent-encoded (as the client sent it)."""
    return "".join(c if c.isprintable() else urllib.parse.quote(c, safe="") for c in text)


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

    def __init__(self, settings: Settings, *, access_log: AccessLogger = log_access, announce: bool = True) -> None:
        self.settings = settings
        #: Whether this app says at start what holds for the whole server: a function's syntax
        #: error, the sandbox (see :meth:`announce_sandbox`). False for a serving process of
        #: several: their supervisor says it once, and the edits one of them is told to report.
        self.announce = announce
        self.verifier = Verifier(settings.keys, settings.env.get("SUPABASE_JWKS"))
        #: The CORS headers of the runtime's own responses to function routes.
        self.cors = CorsPolicy(settings.config.cors_origins)
        #: The WebSocket connections open now, each with the function serving it.
        self._sockets: dict[Socket, str] = {}
        self.functions: dict[str, FunctionSupervisor] = {}
        #: Starts worker processes in their sandbox (process isolation; None inline). The server's
        #: own files (config.toml, the signing keys, what extensions name) are hidden from them.
        self.launcher: WorkerLauncher | None = None
        if settings.isolation == "process":
            # Imported here: an inline server never loads the worker-process modules.
            from edgeruntime.workers.process.sandbox import WorkerLauncher, sandbox_for

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
        self.refresh(report=announce)

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

    def refresh(self, *, report: bool = True) -> None:
        """Rescan the functions directory: add new functions (their files compiled, see
        :meth:`FunctionSupervisor.check`; `report=False`: a syntax error kept, not logged),
        forget removed ones."""
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
                supervisor.check(report=report)

    def pending_background(self) -> list[BackgroundTask]:
        """Every background task still running, in every worker of every function."""
        return [t for s in self.functions.values() for w in s.workers for t in w.pending_background()]

    def reload(self, names: set[str], *, report: bool = True) -> list[str]:
        """Reload the named functions (`_shared` reloads all), their files compiled again; returns
        the names reloaded. `report=False` (a serving process of several that another one speaks
        for) keeps a syntax error as the function's boot error without logging it."""
        known = set(self.functions)
        self.refresh(report=report)
        if SHARED in names:
            purge_modules(SHARED)
            names = set(self.functions)
        reloaded = []
        for name in sorted(names):
            supervisor = self.functions.get(name)
            if supervisor is not None:
                supervisor.reload()
                if name in known:  # a new one was compiled by refresh()
                    supervisor.check(report=report)
                reloaded.append(name)
        return reloaded

    def reconfigure(self, settings: Settings, reload: Iterable[str] | None = None, *, report: bool = True) -> list[str]:
        """Serve with `settings` from now on (config.toml or .env edited while serving).

        JWT verification, the keys and the request limits apply to the next request; functions
        newly disabled are no longer served and newly enabled ones are; the functions named in
        `reload` (None: all) retire their workers so the next request boots them with the new
        env and limits. Settings that cannot change while serving (the host, the isolation ...)
        are the caller's to keep. Returns the names reloaded. `report=False`: a syntax error of a
        function newly enabled is kept as its boot error, not logged (see :meth:`reload`).
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
        self.refresh(report=report)
        names = set(self.functions) if reload is None else set(reload) & known
        for name in sorted(names):
            self.functions[name].reload()
        return sorted(names)

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.handle_http(scope, receive, send)
        elif kind == "websocket":
            await self.handle_websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def handle_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket upgrade request: to a function, as any request to it; anywhere else 404."""
        socket = Socket(scope, receive, send)
        if not scope["path"].startswith(PREFIX):  # the dashboard, metrics and health check take none
            await responses.send_response(socket.send, responses.NOT_FOUND)
            return
        self._sockets[socket] = _function_name(scope)
        try:
            await self.handle_http(scope, socket.receive, socket.send, WEBSOCKET_TRIGGER, socket)
            await socket.drain()
        finally:
            self._sockets.pop(socket, None)

    async def close_websockets(self) -> None:
        """The server is shutting down: dispatch `beforeunload` (termination) to the workers that
        are serving requests or open WebSockets, then close those sockets with 1001 and the reason
        ``termination``.

        Called when shutdown begins, before the server waits for its connections: a socket or a
        streamed response (server-sent events) may stay open for good, and would otherwise be cut
        at the end of the graceful timeout without its function having heard of the shutdown.
        """
        open_sockets = [(socket, name) for socket, name in self._sockets.items() if socket.open]
        socket_functions = {name for _, name in open_sockets}
        workers = [
            worker
            for name, supervisor in self.functions.items()
            for worker in supervisor.workers
            if worker.in_flight or name in socket_functions
        ]
        if workers:
            await asyncio.gather(*(worker.beforeunload(StopReason.TERMINATION) for worker in workers))
        if open_sockets:
            reason = StopReason.TERMINATION.key
            await asyncio.gather(*(socket.close(CLOSE_GOING_AWAY, reason) for socket, _ in open_sockets))

    async def handle_http(
        self, scope: Scope, receive: Receive, send: Send, trigger: str = "http", socket: Socket | None = None
    ) -> None:
        path: str = scope["path"]
        if not path.startswith(PREFIX):
            await self._handle_other(scope, receive, send)
            return

        started = time.perf_counter()
        name = _function_name(scope)
        method: str = scope.get("method", "GET")
        ctx = ExecutionContext(name, default_worker(), new_execution_id(), trigger)
        execution_id = ctx.execution_id
        exec_header = (EXECUTION_ID_HEADER, execution_id.encode())
        # The runtime's answer to a preflight is the preflight answer (see the module docstring).
        emptied = False

        async def tracked_send(message: Message) -> None:
            nonlocal emptied
            kind = message["type"]
            if kind == "http.response.start":
                if RUNTIME_RESPONSE in message:
                    message = self._runtime_response(scope, message)
                    emptied = message["status"] == 200 and method == "OPTIONS"
                if not ctx.response_started:  # a second start is the server's to refuse: not the status sent
                    ctx.response_started = True
                    ctx.status = message["status"]
                message["headers"] = [*message.get("headers", ()), exec_header]
            elif kind == "http.response.body":
                if emptied:
                    message = {**message, "body": b""}
                if not message.get("more_body"):
                    ctx.response_ended = True
            elif kind != "websocket.send":
                self._track_websocket(message, ctx)
            try:
                await send(message)
            except OSError:  # the client left (a server of ASGI 2.4; `serve`'s own for a start, see below)
                if kind == "http.response.start" or (kind == "http.response.body" and ctx.client_disconnected):
                    # Gone before the response: recorded as 499. Not the function's concern: as with
                    # a server that drops the answer silently, it goes on (a response's background
                    # runs) and what it sends reaches no one. The servers `edgeruntime serve` runs
                    # raise this for the start of an answer carrying EXECUTION_ID_HEADER only.
                    ctx.client_disconnected = True
                    return
                if kind == "http.response.body" and not ctx.response_ended:
                    ctx.client_left = True  # (a WebSocket's client leaving is how a connection ends)
                elif kind == "websocket.accept" or kind == "websocket.http.response.start":
                    ctx.client_disconnected = True  # before its upgrade was answered
                raise

        # What the run record says went wrong, if anything.
        error: str | None = None
        try:
            supervisor = self.functions.get(name) if name else None
            if supervisor is None:
                await responses.send_response(tracked_send, responses.FUNCTION_NOT_FOUND)
            elif method not in METHODS:
                await responses.send_response(tracked_send, _not_allowed(method, ALLOW_FUNCTION))
            else:
                # Check the request's credentials, then serve it (written out here, not in a coroutine
                # of its own: this is every request's path).
                headers = scope["headers"]
                refusal: responses.RuntimeResponse | None = None
                try:
                    authorization, apikey = credentials(headers)
                except DuplicateHeader as exc:
                    # Refused whether or not the function verifies JWTs: it would read one copy, a check another.
                    refusal = (
                        responses.DUPLICATE_APIKEY if exc.header == "apikey" else responses.DUPLICATE_AUTHORIZATION
                    )
                    refused = f"400 {exc}"
                else:
                    if supervisor.verify_jwt and method != "OPTIONS":
                        failure = self.verifier.check_credentials(authorization, apikey)
                        if failure is not None:
                            refusal = responses.RuntimeResponse(401, failure.body, responses.JSON_TYPE, failure.code)
                            refused = f"401 {failure.message}"
                if refusal is not None:
                    await responses.send_response(tracked_send, refusal)
                    error = refused
                else:
                    fn_scope = dict(scope)
                    fn_scope["path"] = path[len(PREFIX) - 1 :]
                    raw = scope.get("raw_path")
                    if raw is not None:
                        fn_scope["raw_path"] = (
                            raw[_RAW_CUT:] if raw.startswith(_PREFIX_BYTES) else _function_raw_path(raw)
                        )
                    fn_scope["root_path"] = ""
                    # The gateway's apikey rewrite; the function reads the one Authorization that was checked.
                    if apikey is not None or authorization is not None:
                        fn_scope["headers"] = self.verifier.forwarded_headers(headers, authorization, apikey)
                    try:
                        await supervisor.dispatch(fn_scope, receive, tracked_send, ctx)
                    except (ResourceExhausted, FunctionError) as exc:
                        error = await self._dispatch_failed(exc, tracked_send, ctx, supervisor, socket)
                    else:
                        if socket is not None:  # a function (an ASGI app) that returned with its socket open
                            await socket.close(CLOSE_INTERNAL_ERROR if ctx.error else CLOSE_NORMAL)
                        error = ctx.error  # what the handler raised, when it did (it got a 500 or 502)
        finally:
            duration_ms = (time.perf_counter() - started) * 1000
            status = ctx.status or 500
            if ctx.client_disconnected:  # whatever the function did next reached no one
                status = responses.CLIENT_CLOSED_REQUEST
                error = "client disconnected before the response"
            elif ctx.client_left and error is None:
                error = "client disconnected during the response"
            # The path and a name not found are the client's: a log line never holds them raw (the
            # name is part of the path: printable if the path is).
            if path.isprintable():
                self.access_log(method, path, status, duration_ms, name or None, execution_id)
            else:
                self.access_log(method, _printable(path), status, duration_ms, _printable(name) or None, execution_id)
            if self._observers:
                # One record for every observer, made as a plain tuple (a named tuple's own
                # constructor is a Python function: twice the cost).
                record = _invocation(
                    Invocation,
                    (
                        name,
                        trigger,
                        execution_id,
                        method,
                        path,
                        status,
                        time.time() - duration_ms / 1000,
                        duration_ms,
                        error,
                    ),
                )
                for observer in self._observers:
                    try:
                        observer(record)
                    except Exception:
                        logger.exception("invocation observer failed")

    def _runtime_response(self, scope: Scope, message: Message) -> Message:
        """The start of one of the runtime's own responses, with its CORS headers; the preflight
        answer instead when the request is a CORS preflight."""
        headers = scope["headers"]
        origin = requested = None
        preflight = False
        if scope.get("method") == "OPTIONS":
            for key, value in headers:
                if key == b"origin":
                    origin = value
                elif key == b"access-control-request-method":
                    preflight = True
                elif key == b"access-control-request-headers":
                    requested = value
        else:
            origin = next((value for key, value in headers if key == b"origin"), None)
        if preflight and origin is not None:
            return {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"0"), *self.cors.preflight_headers(origin, requested)],
            }
        start = {key: value for key, value in message.items() if key != RUNTIME_RESPONSE}
        start["headers"] = [*message.get("headers", ()), *self.cors.headers(origin)]
        return start

    def _track_websocket(self, message: Message, ctx: ExecutionContext) -> None:
        """Note what the function did with a WebSocket upgrade request: accepted it (101), refused it."""
        kind = message["type"]
        if kind == "websocket.accept":
            ctx.response_started = True
            ctx.status = 101
        elif kind == "websocket.http.response.start" or (kind == "websocket.close" and not ctx.response_started):
            status = message.get("status", 403)
            ctx.response_started = True
            ctx.status = status
            logger.log(
                logging.WARNING if status < 400 else logging.INFO,
                "function %s did not accept the WebSocket upgrade request: it %s%s",
                ctx.function,
                f"answered {status}" if kind != "websocket.close" else "closed it (the server answers 403)",
                " (call `await upgrade_websocket(req)` to accept it)" if status < 400 else "",
                extra={"function": ctx.function, "execution_id": ctx.execution_id},
            )

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

    async def _dispatch_failed(
        self,
        exc: ResourceExhausted | FunctionError,
        send: Send,
        ctx: ExecutionContext,
        supervisor: FunctionSupervisor,
        socket: Socket | None,
    ) -> str:
        """Answer a request its function failed with `exc` (what the supervisor's dispatch raised),
        unless it had answered; returns the error description for the run record. Raises `exc`
        again when it is no failure the gateway answers."""
        if isinstance(exc, ResourceExhausted):
            error = exhaustion(exc)
            if error is not None:
                report_exhaustion(exc.action, error, supervisor.name)
            if not ctx.response_started:
                await responses.send_response(send, responses.RESOURCE_EXHAUSTED)
            elif socket is not None:
                await socket.close(CLOSE_INTERNAL_ERROR)
            return str(exc)
        response = _error_response(exc)
        if response is None:
            raise exc
        if not ctx.response_started:
            await responses.send_response(send, response)
        elif socket is not None:
            await socket.close(*close_for(exc))
        return str(exc)

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
        (process isolation, see :meth:`announce_sandbox`), then every extension in the order they
        were registered."""
        if self.started:
            return
        self.started = True
        if self.watchdog is not None:
            self.watchdog.start()
        if self.announce:
            self.announce_sandbox()
        for extension in self._extensions:
            await extension.start()

    def announce_sandbox(self) -> None:
        """Say which sandbox the worker processes run in, what it leaves open, and (``uid``) a
        jobs store other users may read; nothing under inline isolation. :meth:`startup` says it,
        or the supervisor of several serving processes, once for all of them."""
        if self.launcher is None:
            return
        sandbox = self.launcher.sandbox
        logger.info("worker processes: sandbox %s", sandbox.describe())
        if sandbox.warning:
            logger.warning("worker processes: sandbox %s: %s", sandbox.mode, sandbox.warning)
        if sandbox.mode == "uid":  # bwrap hides the store; basic and none run as the server's user
            self._warn_of_a_readable_store()

    def _warn_of_a_readable_store(self) -> None:
        """Under ``--sandbox uid`` every function runs as a uid of its own: a jobs store other
        users may read (made before edgeruntime created it private, or by hand) shows every
        function every run and job payload. Said once, with the chmod that closes it."""
        from edgeruntime.workers.process.sandbox import readable_by_others

        for extension in self._extensions:
            exposed = [found for path in extension.private_paths() if (found := readable_by_others(path))]
            if not exposed:
                continue
            paths = " ".join(str(path) for path, _ in exposed)
            fix = f"chmod 700 {paths}" if all(path.is_dir() for path, _ in exposed) else f"chmod 600 {paths}"
            logger.warning(
                "worker processes: sandbox uid: the jobs store %s other users may read, so every "
                "function (each runs as its own uid) can read every run and job payload in it: %s",
                ", ".join(f"{path} (mode {mode:04o})" for path, mode in exposed),
                fix,
            )

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
