"""Test helpers: an in-process client over the same app ``edgeruntime serve`` runs.

Example::

    from edgeruntime.testing import EdgeClient

    async def test_contact() -> None:
        async with EdgeClient("functions") as client:
            r = await client.invoke("contact", json={"email": "a@example.com", "message": "hi"})
            assert r.status_code == 200
            await client.drain()      # wait for wait_until work; raises its errors

        async with EdgeClient("functions") as client, client.websocket("chat") as ws:
            await ws.send_text("hello")
            assert await ws.receive_text() == "hello"
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json as jsonlib
import os
import shutil
import tempfile
import time
import types
import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from edgeruntime.config.settings import Settings
from edgeruntime.core.background import BackgroundTask, TaskOutcome
from edgeruntime.core.context import ExecutionContext
from edgeruntime.core.handlers import to_asgi
from edgeruntime.core.types import ASGIApp, Message, Scope
from edgeruntime.core.worker_state import WorkerState, default_worker
from edgeruntime.dashboard import Dashboard
from edgeruntime.exceptions import UsageError, WebSocketDenied
from edgeruntime.functions.discovery import ENTRYPOINT, FunctionSpec
from edgeruntime.functions.loading import load_function_module
from edgeruntime.gateway.app import EdgeApp
from edgeruntime.gateway.extensions import Extension
from edgeruntime.jobs import Clock, CronRun, FakeClock, JobResult, JobSystem, SystemClock, open_store
from edgeruntime.serving.build import build_app, process_environ

__all__ = [
    "EdgeClient",
    "FakeClock",
    "LoadedFunction",
    "WebSocketSession",
    "drain",
    "execution_context",
    "load_function",
]

Auth = Literal["service_role", "anon"] | None

# The options `EdgeClient` and `load_function` take are `serve`'s: the parameters of
# `Settings.build`, and the Settings fields it passes through as they are.
OPTIONS = frozenset(
    name
    for name, parameter in inspect.signature(Settings.build).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
) | {"graceful_exit_timeout_sec", "log_format", "server"}


def check_options(who: str, options: Mapping[str, Any], extra: Sequence[str] = ()) -> None:
    """Raise UsageError naming the first unknown option (not Settings' TypeError, which names
    neither the caller nor what it takes)."""
    unknown = sorted(set(options) - OPTIONS - set(extra))
    if unknown:
        hint = " (the functions' env is `environ`)" if unknown[0] == "env" else ""
        raise UsageError(
            f"{who}: unknown option {unknown[0]!r}{hint}; the options are: {', '.join(sorted({*OPTIONS, *extra}))}"
        )


def _build_settings(functions_dir: str | os.PathLike[str], options: Mapping[str, Any]) -> Settings:
    # The server's environment is the process's own, not the functions' env of a client still open.
    environ = options.get("environ")
    return Settings.build(
        functions_dir, watch=False, **{**options, "environ": process_environ() if environ is None else environ}
    )


class EdgeClient:
    """An in-process client for every function of a directory, with `serve`'s semantics.

    Settings are resolved exactly as ``edgeruntime serve`` resolves them (config.toml, env file,
    injected env, JWT verification); keyword arguments are the same as the command's options
    (``config_path``, ``env_file``, ``no_verify_jwt``, ``limits``, ``policy``, ``isolation`` ...).
    """

    def __init__(
        self, functions_dir: str | os.PathLike[str] = "functions", *, clock: Clock | None = None, **options: Any
    ) -> None:
        check_options("EdgeClient", options, extra=("settings",))
        self.settings = options.pop("settings", None) or _build_settings(functions_dir, options)
        #: The fake or real clock the jobs system reads (`FakeClock` to test delays and backoff).
        self.clock: Clock = clock or SystemClock()
        # Jobs: each client gets its own throw-away SQLite store unless `database_url` is passed.
        self._store_dir: str | None = None
        store = None
        if options.get("database_url") is None:
            self._store_dir = tempfile.mkdtemp(prefix="edgeruntime-test-")
            store = open_store(f"sqlite:///{Path(self._store_dir, 'edgeruntime.db')}")
        try:
            # The app `serve` runs (env, jobs, dashboard, metrics), but nothing runs by itself:
            # deliver jobs with `run_jobs()`, ticks with `trigger_cron()`.
            built = build_app(self.settings, store=store, clock=self.clock, background=False)
        except BaseException:
            if self._store_dir is not None:
                shutil.rmtree(self._store_dir, ignore_errors=True)
            raise
        self.app: EdgeApp = built.app
        self.jobs: JobSystem = built.jobs
        #: The dashboard API (`/_edgeruntime/api/...`) and metrics (`/_internal/metrics`), as `serve` has.
        self.dashboard: Dashboard = built.dashboard
        self.failed: list[BackgroundTask] = []
        self.finished: list[BackgroundTask] = []
        self.app.add_extension(_TaskRecorder(self))
        self._http: httpx.AsyncClient | None = None

    def _observe(self, task: BackgroundTask) -> None:
        self.finished.append(task)
        if task.outcome is TaskOutcome.FAILED:
            self.failed.append(task)

    async def __aenter__(self) -> EdgeClient:
        # os.environ agrees with Deno.env while the client is open, as under `serve`; restored on exit.
        try:
            await self.app.startup()
        except BaseException:
            await self.__aexit__()  # what did start (the env in os.environ ...) is undone
            raise
        self._http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url=self.settings.base_url, timeout=None
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if self._http is not None:
                await self._http.aclose()
        finally:
            try:
                await self.app.shutdown(timeout=0)
            finally:
                if self._store_dir is not None:
                    shutil.rmtree(self._store_dir, ignore_errors=True)

    @property
    def http(self) -> httpx.AsyncClient:
        """The underlying httpx client (base URL is the server's, e.g. http://127.0.0.1:54321)."""
        if self._http is None:
            raise RuntimeError("use `async with EdgeClient(...) as client:` first")
        return self._http

    def headers_for(self, auth: Auth) -> dict[str, str]:
        if auth is None:
            return {}
        key = self.settings.keys.service_role_key if auth == "service_role" else self.settings.keys.anon_key
        return {"Authorization": f"Bearer {key}"}

    async def invoke(
        self,
        name: str,
        *,
        method: str = "POST",
        path: str = "",
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        auth: Auth = "service_role",
    ) -> httpx.Response:
        """Call function `name` as `POST /functions/v1/<name><path>`; the service role key by default."""
        path = _subpath(path)
        all_headers = {**self.headers_for(auth), **(headers or {})}
        return await self.http.request(
            method,
            f"/functions/v1/{name}{path}",
            json=json,
            content=content,
            data=data,
            headers=all_headers,
            params=params,
        )

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Any request to the app (`/functions/v1/...`, `/_internal/health` ...), no key added."""
        return await self.http.request(method, url, **kwargs)

    @contextlib.asynccontextmanager
    async def websocket(
        self,
        name: str,
        *,
        path: str = "",
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        subprotocols: Sequence[str] = (),
        auth: Auth = "service_role",
    ) -> AsyncIterator[WebSocketSession]:
        """Open a WebSocket to function `name` in process, through the gateway as `serve` runs it
        (to any path of the app when `name` starts with ``/``).

        Raises WebSocketDenied when the upgrade is answered with a response instead (the
        gateway's 401 or 404, the function's 400). The connection is closed (1000) on exit if
        it is still open. Like `invoke`, sends the service role key unless `auth` says otherwise.
        """
        path = _subpath(path)
        raw_path = f"{name}{path}" if name.startswith("/") else f"/functions/v1/{name}{path}"
        all_headers = {
            "host": self.http.base_url.netloc.decode("ascii"),
            "connection": "Upgrade",
            "upgrade": "websocket",
            "sec-websocket-version": "13",
            "sec-websocket-key": base64.b64encode(os.urandom(16)).decode(),
            **self.headers_for(auth),
            **(headers or {}),
        }
        if subprotocols:
            all_headers["sec-websocket-protocol"] = ", ".join(subprotocols)
        scope: Scope = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "ws",
            "server": ("127.0.0.1", self.settings.port),
            "client": ("127.0.0.1", 50000),
            "root_path": "",
            "path": urllib.parse.unquote(raw_path),
            "raw_path": raw_path.encode(),
            "query_string": urllib.parse.urlencode(params or {}).encode(),
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in all_headers.items()],
            "subprotocols": list(subprotocols),
            "extensions": {"websocket.http.response": {}},
        }
        session = WebSocketSession(self.app, scope)
        await session.connect()
        try:
            yield session
        finally:
            await session.disconnect()

    def module(self, name: str) -> types.ModuleType:
        """The module of function `name` as its active worker loaded it (to inspect its state)."""
        supervisor = self.app.functions.get(name)
        if supervisor is None:
            raise LookupError(f"no function {name} in {self.settings.functions_dir}")
        worker = supervisor.worker
        if worker is None or worker.module is None:
            raise LookupError(f"function {name} has no booted worker; invoke it first")
        return worker.module

    def pending(self) -> list[BackgroundTask]:
        """Background tasks still running."""
        return self.app.pending_background()

    async def trigger_cron(self, name: str, at: datetime | float | None = None) -> CronRun:
        """Run `[cron.<name>]` now through the normal request path, as the scheduler would.

        Without `at` it is a manual run (scheduled ticks are untouched); with `at` it runs the
        scheduled tick at or before that instant, which is then consumed.
        """
        instant = at.timestamp() if isinstance(at, datetime) else at
        return await self.jobs.scheduler.run_now(name, instant)

    async def run_jobs(self, *, compress_backoff: bool = True, max_rounds: int = 1000) -> list[JobResult]:
        """Deliver every due queued job now, retries included (backoff waits compressed to zero).

        Jobs enqueued by the jobs themselves are delivered too; delayed jobs wait for the clock
        (`clock.advance(...)`). Returns every delivery, in order.
        """
        runner = self.jobs.runner
        previous, runner.backoff_scale = runner.backoff_scale, 0.0 if compress_backoff else 1.0
        results: list[JobResult] = []
        try:
            for _ in range(max_rounds):
                batch = await runner.run_once()
                if not batch:
                    return results
                results.extend(batch)
        finally:
            runner.backoff_scale = previous
        raise TimeoutError(f"run_jobs: jobs still due after {max_rounds} rounds (a job that re-enqueues itself?)")

    async def drain(self, timeout: float | None = 30.0) -> None:
        """Wait for all background work; raise an ExceptionGroup of the errors it raised.

        Errors are reported once: a second drain only reports errors that came after the first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending := self.pending():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                names = ", ".join(sorted(f"{t.function}:{t.name}" for t in pending))
                raise TimeoutError(f"background work still pending after {timeout} s: {names}")
            await asyncio.wait([t.task for t in pending], timeout=remaining)
        failed, self.failed = self.failed, []
        if failed:
            raise ExceptionGroup(
                f"{len(failed)} background task(s) failed: "
                + ", ".join(f"{t.function}:{t.name} ({t.execution_id})" for t in failed),
                [t.error if isinstance(t.error, Exception) else RuntimeError(repr(t.error)) for t in failed],
            )


def _subpath(path: str) -> str:
    # `path="sub"` means the function's subpath, never the function named `<name>sub`.
    return path if not path or path.startswith(("/", "?")) else f"/{path}"


class WebSocketSession:
    """One in-process WebSocket connection to a function (see :meth:`EdgeClient.websocket`).

    `receive_text`, `receive_bytes` and `receive_json` raise Starlette's ``WebSocketDisconnect``
    (with the close code and reason) once the function or the runtime closed the connection.
    """

    def __init__(self, app: ASGIApp, scope: Scope) -> None:
        self.scope = scope
        self._app = app
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        #: The subprotocol the function accepted with (None: none).
        self.subprotocol: str | None = None
        #: The headers of the 101 response the function added.
        self.accept_headers: dict[str, str] = {}
        #: The close code and reason, once the connection was closed (by either end).
        self.close_code: int | None = None
        self.close_reason: str = ""

    async def connect(self) -> None:
        async def run() -> None:
            try:
                await self._app(self.scope, self._to_app.get, self._from_app.put)
            finally:
                self._from_app.put_nowait(None)

        self._task = asyncio.get_running_loop().create_task(run())
        self._to_app.put_nowait({"type": "websocket.connect"})
        message = await self._next()
        if message is None:
            raise WebSocketDenied(500, [], b"the app returned without answering the upgrade")
        kind = message["type"]
        if kind == "websocket.accept":
            self.subprotocol = message.get("subprotocol")
            self.accept_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in message.get("headers") or ()}
            return
        await self._finish()
        if kind == "websocket.http.response.start":
            body = b""
            while (part := await self._next()) is not None and part["type"] == "websocket.http.response.body":
                body += part.get("body", b"")
                if not part.get("more_body"):
                    break
            raise WebSocketDenied(message["status"], list(message.get("headers") or ()), body)
        raise WebSocketDenied(403, [], b"")  # closed before it was accepted: a server answers 403

    async def _next(self) -> Message | None:
        return await self._from_app.get()

    async def _finish(self) -> None:
        task = self._task
        if task is not None and not task.done():
            self._to_app.put_nowait({"type": "websocket.disconnect", "code": 1006})
            await task

    async def send_text(self, data: str) -> None:
        self._to_app.put_nowait({"type": "websocket.receive", "text": data})

    async def send_bytes(self, data: bytes) -> None:
        self._to_app.put_nowait({"type": "websocket.receive", "bytes": data})

    async def send_json(self, data: Any) -> None:
        await self.send_text(jsonlib.dumps(data))

    async def receive(self) -> Message:
        """The next message the function sent: ``websocket.send`` or ``websocket.close``."""
        message = await self._next()
        if message is None:
            # The app is done: after our own close() that is the close we sent, else abnormal.
            code = 1006 if self.close_code is None else self.close_code
            message = {"type": "websocket.close", "code": code, "reason": self.close_reason}
        if message["type"] == "websocket.close":
            if self.close_code is None:  # the first close, by either end, is the connection's
                self.close_code = message.get("code", 1000)
                self.close_reason = message.get("reason") or ""
            self._from_app.put_nowait(message)  # every later receive sees the close too
        return message

    async def _data(self) -> Message:
        from starlette.websockets import WebSocketDisconnect

        message = await self.receive()
        if message["type"] == "websocket.close":
            raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
        return message

    async def _data_of(self, kind: Literal["text", "bytes"]) -> Any:
        message = await self._data()
        if message.get(kind) is None:
            other = "bytes" if kind == "text" else "text"
            raise TypeError(f"expected a {kind} message, got {other}: {message.get(other)!r:.200}")
        return message[kind]

    async def receive_text(self) -> str:
        text: str = await self._data_of("text")
        return text

    async def receive_bytes(self) -> bytes:
        data: bytes = await self._data_of("bytes")
        return data

    async def receive_json(self) -> Any:
        return jsonlib.loads(await self.receive_text())

    async def close(self, code: int = 1000, reason: str = "", *, timeout: float = 5.0) -> None:
        """Close the connection from the client's side and wait for the function to finish with it
        (it is cancelled if it does not within `timeout` seconds: it never read the close)."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._to_app.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=timeout)
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def disconnect(self) -> None:
        if self._task is not None and not self._task.done():
            await self.close()


class _TaskRecorder(Extension):
    """Hands every finished background task to its client (`finished`, `failed`, `drain`)."""

    def __init__(self, client: EdgeClient) -> None:
        self.observe_background = client._observe


@dataclass
class LoadedFunction:
    """A function module loaded on its own, for unit tests of its handler."""

    name: str
    module: types.ModuleType
    #: What the module passed to `serve()`: call it with a starlette Request.
    handler: Any
    app: ASGIApp
    worker: WorkerState

    def client(self, base_url: str = "http://127.0.0.1:54321") -> httpx.AsyncClient:
        """An httpx client calling this function's handler directly (paths as the function sees them)."""
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=base_url)


_last_loaded: LoadedFunction | None = None


def load_function(path: str | os.PathLike[str], **options: Any) -> LoadedFunction:
    """Load `functions/<name>` (or its index.py) with the env `serve` would give it.

    Hyphenated names work: the module is loaded from its file, not imported by name.
    """
    global _last_loaded
    target = Path(path)
    if target.name == ENTRYPOINT:
        target = target.parent
    if not (target / ENTRYPOINT).is_file():
        raise UsageError(f"{target / ENTRYPOINT} does not exist")
    check_options("load_function", options)
    settings = _build_settings(target.parent, options)
    spec = FunctionSpec(target.name, target.resolve())
    state = WorkerState(spec.name, settings.env)
    with contextlib.suppress(RuntimeError):
        state.loop = asyncio.get_running_loop()
    module, handler = load_function_module(spec, state)
    loaded = LoadedFunction(spec.name, module, handler, to_asgi(handler, spec.name), state)
    _last_loaded = loaded
    return loaded


@contextlib.asynccontextmanager
async def execution_context(
    function: LoadedFunction | None = None, *, execution_id: str | None = None
) -> AsyncIterator[ExecutionContext]:
    """Run code as one invocation: `wait_until` work attaches to it and `ctx.drain()` waits for it.

    Without `function`, the most recently loaded function's env and listeners are used.
    """
    fn = function or _last_loaded
    worker = fn.worker if fn is not None else default_worker()
    worker.loop = asyncio.get_running_loop()
    ctx = ExecutionContext(function=worker.function, worker=worker, trigger="test")
    if execution_id is not None:
        ctx.execution_id = execution_id
    token = ctx.activate()
    try:
        yield ctx
    finally:
        ctx.deactivate(token)


async def drain(timeout: float | None = 30.0) -> None:
    """Wait for `wait_until` work started outside any invocation (the default context)."""
    worker = default_worker()
    worker.loop = asyncio.get_running_loop()
    await worker.background.drain(timeout=timeout)
