"""Script mode: ``python functions/hello/index.py`` serves that one handler, like ``deno run``.

It serves on the server ``edgeruntime serve`` picks by default (``--server auto``: Uvicorn on
uvloop with httptools when they are installed, else Hypercorn), on the same event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from edgeruntime.core import responses
from edgeruntime.core.context import ExecutionContext
from edgeruntime.core.events import StopReason
from edgeruntime.core.logs import configure_logging
from edgeruntime.core.types import Handler, Message, Receive, Scope, Send
from edgeruntime.exceptions import UsageError
from edgeruntime.functions.discovery import FunctionSpec
from edgeruntime.gateway.websocket import CLOSE_NORMAL, Socket
from edgeruntime.limits import DEFAULT_LIMITS
from edgeruntime.serving.server import check_port, resolve_server, serve_asgi, serving_loop
from edgeruntime.workers.worker import InlineWorker

__all__ = ["DEFAULT_SCRIPT_PORT", "run_script", "run_standalone", "script_port"]

logger = logging.getLogger("edgeruntime")

#: The messages that answer a request (or a WebSocket upgrade request).
_STARTS = frozenset({"http.response.start", "websocket.accept", "websocket.http.response.start", "websocket.close"})


#: The port of a function run as a script when PORT is not set, as `deno run`'s Deno.serve.
DEFAULT_SCRIPT_PORT = 8000


def script_port(environ: Mapping[str, str] = os.environ) -> int:
    """``PORT`` (DEFAULT_SCRIPT_PORT when unset or empty); UsageError naming it when it is not a TCP port."""
    value = environ.get("PORT", "").strip()
    if not value:
        return DEFAULT_SCRIPT_PORT
    port = int(value) if value.isascii() and value.isdigit() else 0
    if not 0 < port < 65536:
        raise UsageError(f"PORT={value!r}: expected a TCP port, 1 to 65535")
    return port


def run_script(handler: Handler, file: str | None) -> None:
    """Serve `handler` as ``python functions/<name>/index.py`` does: on ``PORT``. A bad PORT, or a port
    that cannot be listened on, is one line on stderr and exit status 2 (as the CLI's errors)."""
    try:
        run_standalone(handler, file, script_port())
    except UsageError as exc:
        print(f"edgeruntime: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def run_standalone(handler: Handler, file: str | None, port: int, host: str | None = None) -> None:
    """Serve `handler` on every path of `host:port` until SIGINT/SIGTERM."""
    host = host or os.environ.get("HOST", "127.0.0.1")
    directory = Path(file).resolve().parent if file else Path.cwd()
    worker = InlineWorker.from_handler(FunctionSpec(directory.name, directory), handler, os.environ, DEFAULT_LIMITS)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await worker.state.dispatch_beforeunload(StopReason.TERMINATION)
            await worker.state.background.wait(15)
            await worker.end(StopReason.TERMINATION)
            await send({"type": "lifespan.shutdown.complete"})
            return
        socket: Socket | None = None
        if scope["type"] == "websocket":  # as `deno run` serves Deno.upgradeWebSocket
            socket = Socket(scope, receive, send)
            receive, send = socket.receive, socket.send
        elif scope["type"] != "http":
            return
        ctx = ExecutionContext(function=worker.name, worker=worker.state)

        async def tracked(message: Message) -> None:
            if message["type"] in _STARTS:
                ctx.response_started = True
            await send(message)

        await worker.handle(scope, receive, tracked, ctx)
        if not ctx.response_started:  # pragma: no cover - handle() always answers
            await responses.send_response(send, responses.INTERNAL_SERVER_ERROR)
        if socket is not None:
            await socket.close(CLOSE_NORMAL)
            await socket.drain()

    configure_logging()
    check_port(host, port)
    server = resolve_server("auto")
    print(f"Listening on http://{host}:{port}/", flush=True)

    async def main() -> None:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        worker.state.loop = loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve_asgi(app, host, port, graceful_timeout=15, shutdown_trigger=stop.wait, server=server)

    with asyncio.Runner(loop_factory=serving_loop(server)) as runner:
        runner.run(main())
