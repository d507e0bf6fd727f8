"""Running the app on a real socket with graceful shutdown (Hypercorn by default)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import importlib.util
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from edgeruntime.config.settings import Settings
from edgeruntime.core.transport import batched_writes
from edgeruntime.core.types import ASGIApp
from edgeruntime.exceptions import UsageError

__all__ = ["check_port", "run_server"]

logger = logging.getLogger("edgeruntime")


def check_port(host: str, port: int) -> None:
    """Raise UsageError if `host:port` cannot be bound (in use, or not an address of this host)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} on {host} is already in use") from None
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


#: Collector thresholds for a server with many pending tasks (see docs/performance.md).
GC_THRESHOLDS = (100_000, 50, 100)
#: Seconds after the server starts at which the objects alive then are frozen (see `_start_gc`).
FREEZE_DELAY_SEC = 1.0


def gc_thresholds(setting: str | None = None) -> tuple[int, int, int] | None:
    """The collector thresholds to serve with; None to keep Python's (`EDGERUNTIME_GC=default`).

    `setting` (default: the `EDGERUNTIME_GC` environment variable) is "default", three numbers
    "gen0,gen1,gen2", or empty for GC_THRESHOLDS. UsageError for anything else.
    """
    setting = os.environ.get("EDGERUNTIME_GC", "") if setting is None else setting
    if setting == "default":
        return None
    if not setting:
        return GC_THRESHOLDS
    try:
        gen0, gen1, gen2 = (int(part) for part in setting.split(","))
    except ValueError:
        raise UsageError(f"EDGERUNTIME_GC={setting!r}: expected 'default' or three numbers 'gen0,gen1,gen2'") from None
    return gen0, gen1, gen2


def freeze_gc() -> None:
    """Collect once, then exempt every object alive now from later collections (gc.freeze)."""
    gc.collect()
    gc.freeze()


def _start_gc(setting: str) -> None:
    """Turn the collector on for a server about to listen, tuned as `setting` says (see `gc_thresholds`).

    A server with tens of thousands of pending background tasks pays for every full collection
    with a pause proportional to all of them, so young objects are collected less often and the
    objects alive once the server is up are frozen (moved out of the collector's way). The
    freeze runs FREEZE_DELAY_SEC after the server starts: the collection before it walks
    everything start-up built (~10 ms on a 2-core machine), and the server answers sooner when
    that happens once it is up. With "default" the collector is only turned on.
    """
    thresholds = gc_thresholds(setting)
    if thresholds is not None:
        gc.set_threshold(*thresholds)
        asyncio.get_running_loop().call_later(FREEZE_DELAY_SEC, freeze_gc)
    gc.enable()


async def serve_asgi(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    graceful_timeout: float,
    shutdown_trigger: Callable[[], Awaitable[object]],
    server: str = "hypercorn",
    before_serving: Callable[[], None] | None = None,
) -> None:
    """Serve `app` until `shutdown_trigger` returns, then finish in-flight requests.

    `before_serving` is called once the server's own modules are loaded, right before it starts.
    """
    if server == "uvicorn":
        await _serve_uvicorn(app, host, port, graceful_timeout, shutdown_trigger, before_serving)
        return
    if server != "hypercorn":
        raise UsageError(f"--server: expected hypercorn or uvicorn, got {server!r}")
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = graceful_timeout
    # Lifespan shutdown waits for background work for up to the same timeout.
    config.shutdown_timeout = graceful_timeout + 10
    config.accesslog = None
    config.errorlog = logging.getLogger("edgeruntime.server")
    config.keep_alive_timeout = 75
    if before_serving is not None:
        before_serving()
    await serve(app, config, shutdown_trigger=shutdown_trigger)  # type: ignore[arg-type, unused-ignore]


async def _serve_uvicorn(
    app: ASGIApp,
    host: str,
    port: int,
    graceful_timeout: float,
    shutdown_trigger: Callable[[], Awaitable[object]],
    before_serving: Callable[[], None] | None,
) -> None:
    try:
        import uvicorn  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise UsageError("--server uvicorn needs uvicorn: pip install 'edgeruntime[uvicorn]'") from None
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=int(graceful_timeout) or 1,
        loop="none",
        # As under Hypercorn: the client address is the connection's peer. (Uvicorn's default
        # rewrites it from X-Forwarded-For, in a middleware run on every request.)
        proxy_headers=False,
        ws=_uvicorn_websockets(),  # type: ignore[arg-type, unused-ignore]  # uvicorn only calls it, as it would a class
    )
    config.load()  # imports the protocol modules now, so before_serving runs after every import
    instance = uvicorn.Server(config)
    # Our own SIGTERM/SIGINT handling triggers the shutdown; uvicorn would re-raise the signal
    # after a graceful stop and turn exit status 0 into a death by signal.
    instance.capture_signals = contextlib.nullcontext  # type: ignore[method-assign, assignment, unused-ignore]

    async def stop() -> None:
        await shutdown_trigger()
        instance.should_exit = True

    if before_serving is not None:
        before_serving()
    stopper = asyncio.get_running_loop().create_task(stop())
    try:
        await instance.serve()
    finally:
        stopper.cancel()


def _uvicorn_websockets() -> str | Callable[..., asyncio.Protocol]:
    """uvicorn's `ws="auto"`, with the WebSocket library imported on the first upgrade request.

    "auto" imports the `websockets` package as the server starts: ~60M instructions, a tenth of
    what a bare uvicorn app takes to its first response. The protocol "auto" would pick (or
    "none" where it would find no library) behaves the same when it is made on first use.
    """
    if importlib.util.find_spec("websockets") is None and importlib.util.find_spec("wsproto") is None:
        return "none"

    def websocket_protocol(**kwargs: Any) -> asyncio.Protocol:
        from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

        assert AutoWebSocketsProtocol is not None  # found above
        return AutoWebSocketsProtocol(**kwargs)

    return websocket_protocol


def run_server(
    settings: Settings,
    app: ASGIApp,
    *,
    on_start: Callable[[], Awaitable[None]] | None = None,
    background: Sequence[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = (),
) -> int:
    """Serve `app` with `settings` until SIGTERM or SIGINT; returns the exit status.

    The garbage collector, paused while `edgeruntime serve` starts, is turned on (tuned as by
    `_start_gc`) right before the server starts.
    """
    check_port(settings.host, settings.port)
    gc_setting = os.environ.get("EDGERUNTIME_GC", "")
    gc_thresholds(gc_setting)  # a bad setting fails before anything starts

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks = [loop.create_task(job(stop)) for job in background]
        try:
            if on_start is not None:
                await on_start()
            await serve_asgi(
                app,
                settings.host,
                settings.port,
                graceful_timeout=settings.graceful_exit_timeout_sec,
                shutdown_trigger=stop.wait,
                server=settings.server,
                before_serving=lambda: _start_gc(gc_setting),
            )
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    with asyncio.Runner(loop_factory=_loop_factory(settings.server)) as runner:
        runner.run(main())
    sys.stdout.flush()
    return 0


def _loop_factory(server: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop to serve on; the connections its TCP servers accept batch their writes.

    uvloop under uvicorn when it is installed (as uvicorn itself would pick), asyncio's otherwise.
    Both servers make their listening sockets with `loop.create_server`, so this is where every
    accepted connection can be given a BatchedTransport (see `edgeruntime.core.transport`).
    """
    base: type[asyncio.AbstractEventLoop] = asyncio.SelectorEventLoop
    if server == "uvicorn":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            base = uvloop.Loop

    class ServingLoop(base):  # type: ignore[misc, valid-type]
        async def create_server(
            self, protocol_factory: Callable[[], asyncio.BaseProtocol], *args: Any, **kwargs: Any
        ) -> asyncio.AbstractServer:
            return await super().create_server(batched_writes(protocol_factory), *args, **kwargs)  # type: ignore[no-any-return]

    return ServingLoop
