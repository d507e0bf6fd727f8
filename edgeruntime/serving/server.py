"""Running the app on a real socket with graceful shutdown, under Uvicorn or Hypercorn.

`--server auto` (the default) is Uvicorn on uvloop with httptools when all three are installed
(they come with edgeruntime), else Hypercorn. A serving process of several (`--workers N`) serves
on the listening socket its supervisor hands it (`serving/supervisor.py`) rather than binding one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import ipaddress
import logging
import os
import re
import signal
import socket
import sys
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any

from edgeruntime.config.settings import DEFAULT_KEEP_ALIVE_TIMEOUT_SEC, Settings
from edgeruntime.core.descriptors import EXHAUSTION_ERRNOS, report_exhaustion
from edgeruntime.core.responses import CorsPolicy
from edgeruntime.core.transport import batched_writes
from edgeruntime.core.types import ASGIApp, Message, Receive, Scope, Send
from edgeruntime.exceptions import UsageError
from edgeruntime.limits import DEFAULT_LIMITS
from edgeruntime.serving.collector import PacedCollector, gc_thresholds, start_collector
from edgeruntime.serving.keep_alive import IdleConnections
from edgeruntime.workers.request_limits import MAX_HEAD_BYTES, declares_no_body, limit_head

__all__ = [
    "LISTEN_BACKLOG",
    "SERVERS",
    "check_host",
    "check_port",
    "listening_socket",
    "resolve_server",
    "run_server",
    "serve_asgi",
    "serving_loop",
]

logger = logging.getLogger("edgeruntime")


#: A host made of digits and dots: meant as an IPv4 address.
_DOTTED = re.compile(r"[0-9.]+")


def check_host(host: str, given: str | None = None) -> None:
    """Raise UsageError, one line naming ``--host`` and its value as `given` (default `host`), if
    `host` is nothing this machine can listen on: a name that does not resolve, an address that
    is not one of its own.

    The check binds a socket to a port the kernel picks, and closes it: an address of another
    machine binds nothing. IPv6 as the server listens: IPv6 only (an IPv4-mapped address is refused).
    """
    flag = f"--host {host if given is None else given!r}"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            probe.bind((host, 0))
        except socket.gaierror as exc:
            if _DOTTED.fullmatch(host):
                raise UsageError(
                    f"{flag}: not an IP address (each of the 4 numbers of an IPv4 address is 0 to 255), "
                    "nor a name that resolves"
                ) from None
            raise UsageError(f"{flag}: the name does not resolve to an address ({exc.strerror})") from None
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UsageError(f"{flag}: not an address of this machine ({exc.strerror})") from None
            raise UsageError(f"{flag}: cannot listen on it ({exc.strerror}){_address_hint(host)}") from None


def _address_hint(host: str) -> str:
    """What may be wrong with the IPv6 address `host`, as "; ..." (else "")."""
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        return ""
    if address.ipv4_mapped is not None:
        return f"; an IPv4-mapped address: pass the IPv4 address, --host {address.ipv4_mapped}"
    if address.is_link_local and address.scope_id is None:
        return f"; a link-local address needs its interface, like --host {host}%eth0"
    return ""


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


#: The `--server` choices.
SERVERS = ("auto", "uvicorn", "hypercorn")
#: What `--server auto` needs for Uvicorn: the server, its event loop and its HTTP parser.
FAST_SERVER_MODULES = ("uvicorn", "uvloop", "httptools")
#: Connections the kernel queues on a listening socket shared by serving processes (Uvicorn's default).
LISTEN_BACKLOG = 2048
#: How long a serving process of several still serves what it has accepted, after it stopped accepting
#: and before the server closes idle connections: a connection accepted just before the stop has its
#: first request read meanwhile, so it is answered rather than closed unanswered.
ACCEPT_GRACE_SEC = 0.5
#: Under Hypercorn, how long the end of a response waits for the rest of a request body the app
#: left unread, so that the connection is kept alive (see `_reading_unread_bodies`).
UNREAD_BODY_WAIT_SEC = 1.0


def missing_fast_server() -> list[str]:
    """The modules of FAST_SERVER_MODULES that cannot be imported here."""
    return [name for name in FAST_SERVER_MODULES if importlib.util.find_spec(name) is None]


def resolve_server(name: str) -> str:
    """The server `--server NAME` runs: "auto" is "uvicorn" when uvicorn, uvloop and httptools are
    all importable, else "hypercorn". UsageError for a name that is not a server."""
    if name not in SERVERS:
        raise UsageError(f"--server: expected one of {', '.join(SERVERS)}, got {name!r}")
    if name != "auto":
        return name
    return "hypercorn" if missing_fast_server() else "uvicorn"


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port` and listening, for serving processes to share.

    UsageError (one line) when it cannot be bound: the port is in use, or the address is not one
    of this host's. Not inherited by processes this one starts unless it passes it on explicitly.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} on {host} is already in use") from None
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_asgi(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    graceful_timeout: float,
    shutdown_trigger: Callable[[], Awaitable[object]],
    server: str = "hypercorn",
    before_serving: Callable[[], None] | None = None,
    log_format: str = "text",
    keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_TIMEOUT_SEC,
    websocket_max_message_bytes: int = DEFAULT_LIMITS.max_websocket_message_bytes,
    cors: Callable[[Scope], list[tuple[bytes, bytes]]] | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve `app` until `shutdown_trigger` returns, then finish in-flight requests.

    `sock`: a listening socket to serve on (the server then closes it) instead of binding `host:port`.
    `before_serving` is called once the server's own modules are loaded, right before it starts.
    With `log_format` "json" the server's own log lines go through edgeruntime's handler.
    Either server answers a request head over MAX_HEAD_BYTES with 431 (with the `cors(scope)`
    headers when the app sees it). An idle connection is closed after `keep_alive_timeout`
    seconds, and one whose client has closed its side as soon as its responses are written. A
    WebSocket message over `websocket_max_message_bytes` closes its connection with 1009.
    """
    server = resolve_server(server)
    if server == "uvicorn":
        await _serve_uvicorn(
            app,
            host,
            port,
            graceful_timeout,
            shutdown_trigger,
            before_serving,
            log_format,
            keep_alive_timeout,
            websocket_max_message_bytes,
            cors,
            sock,
        )
        return
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    if sock is not None:
        # Hypercorn makes its own socket object of the descriptor and closes it: this one lets go.
        config.bind = [f"fd://{sock.detach()}"]
        config.backlog = LISTEN_BACKLOG  # it listens again: the shared socket keeps its backlog
    else:
        config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = graceful_timeout
    # Lifespan shutdown waits for background work for up to the same timeout.
    config.shutdown_timeout = graceful_timeout + 10
    config.accesslog = None
    config.errorlog = logging.getLogger("edgeruntime.server")
    config.keep_alive_timeout = keep_alive_timeout
    config.h11_max_incomplete_size = MAX_HEAD_BYTES
    config.websocket_max_message_size = websocket_max_message_bytes
    if before_serving is not None:
        before_serving()
    # h11 refuses a head over the limit only while it is incomplete; a whole one in a read passes.
    with _closing_at_eof():
        await serve(limit_head(_reading_unread_bodies(app), cors), config, shutdown_trigger=shutdown_trigger)  # type: ignore[arg-type, unused-ignore]


def _reading_unread_bodies(app: ASGIApp) -> ASGIApp:
    """`app`, with the rest of a request body it left unread read (and dropped) before its response ends.

    Hypercorn (0.17, 0.18) keeps a connection alive only if the request was read to its end when
    the response ends: it closes it otherwise, although the response said nothing of it, and the
    client's next request on the connection finds it closed ("server disconnected without
    sending a response"; a POST is not retried). A function answers before its body arrived
    whenever it does not read it (a webhook's 202, a 401 or 404 of the gateway), as clients
    write a request's head and its body apart. So the rest is read first, for up to
    UNREAD_BODY_WAIT_SEC: what a client is still sending normally arrives within it.

    A body that does not end within it (a slow or endless one) is read meanwhile as the response
    ends, and the connection is closed after it, as Hypercorn would: it queues at most ten
    messages of a request's body for the app, and the end of the response would otherwise wait
    to queue the client's leaving behind them, for ever (the request would never end, holding a
    descriptor of the server). An HTTP/1 request that declares no body has none to read, and goes
    to `app` as it is.
    """

    async def reading(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or declares_no_body(scope):
            await app(scope, receive, send)
            return
        read_all = False

        async def tracked_receive() -> Message:
            nonlocal read_all
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                read_all = True
            return message

        async def ending_send(message: Message) -> None:
            if read_all or message["type"] != "http.response.body" or message.get("more_body", False):
                await send(message)
                return
            try:
                async with asyncio.timeout(UNREAD_BODY_WAIT_SEC):
                    await _read_rest(tracked_receive)
            except TimeoutError:
                pass
            if read_all:
                await send(message)
                return
            rest = asyncio.get_running_loop().create_task(_read_rest(tracked_receive))
            try:
                await send(message)
            finally:
                rest.cancel()

        await app(scope, tracked_receive, ending_send)

    return reading


async def _read_rest(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


class _IdleConnections(IdleConnections):
    """Hypercorn's keep-alive connections waiting for their next request (see
    :mod:`edgeruntime.serving.keep_alive`), each closed as Hypercorn would: through its protocol,
    in a task nothing cancels. When the server stops, every idle connection is closed at once, as
    Hypercorn's own timeout tasks do.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, terminated: Any) -> None:
        super().__init__(loop, timeout, self._close)
        self._terminated = terminated
        self._closing: set[asyncio.Task[None]] = set()
        self._watch = loop.create_task(self._close_all_when_terminated())

    def add(self, connection: Any) -> None:
        """`connection` (a Hypercorn TCPServer) is idle from now on."""
        if self._terminated.is_set():
            self._close(connection)
            return
        super().add(connection)

    def _close(self, server: Any) -> None:
        task = self._loop.create_task(server._initiate_server_close())
        self._closing.add(task)
        task.add_done_callback(self._closed)

    def _closed(self, task: asyncio.Task[None]) -> None:
        self._closing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("closing an idle connection failed: %r", task.exception())

    async def _close_all_when_terminated(self) -> None:
        await self._terminated.wait()
        waiting, self.waiting = self.waiting, {}
        for server in waiting:
            self._close(server)


class _KeepAlive:
    """What a Hypercorn connection uses as its idle task: its place among the `_IdleConnections`."""

    __slots__ = ("idle", "server")

    def __init__(self, server: Any, idle: _IdleConnections) -> None:
        self.server = server
        self.idle = idle

    async def restart(self, task_group: Any, action: Any) -> None:
        self.idle.add(self.server)

    async def stop(self) -> None:
        self.idle.discard(self.server)


@contextlib.contextmanager
def _closing_at_eof() -> Iterator[None]:
    """Hypercorn's connections, closed once their client has gone and their responses are written,
    and their keep-alive timeouts kept by one timer (see `_IdleConnections`).

    Hypercorn reads a connection until the client's EOF (or a read error), then still waits for
    the connection's keep-alive timer before it closes it: a client that sends a request and
    closes, or just connects and closes, holds a descriptor here for the whole keep-alive
    timeout. Nothing more can arrive once reading has ended, so the connection's class below
    stops that timer then and starts it no more; the requests in flight finish, their responses
    are written (a half-closed client still gets its response), and Hypercorn closes the
    connection.

    A request whose client ended its side before its response started is told to the gateway
    when the response starts (see `answering_after_eof`), as Uvicorn's protocol does.
    """
    from hypercorn.asyncio import run
    from hypercorn.asyncio.tcp_server import MAX_RECV, TCPServer
    from hypercorn.events import Closed, Event, RawData, Updated
    from hypercorn.protocol.events import Response
    from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream

    from edgeruntime.gateway.app import EXECUTION_ID_HEADER

    if getattr(run, "TCPServer", None) is not TCPServer or not all(
        hasattr(TCPServer, name) for name in ("_read_data", "protocol_send", "_initiate_server_close")
    ):
        logger.warning(
            "this Hypercorn version is not one edgeruntime knows: a connection whose client has gone "
            "is closed only by the keep-alive timeout"
        )
        yield
        return

    def answering_after_eof(protocol: Any) -> None:
        """The client of connection `protocol` (a ProtocolWrapper) ended its side: the request in
        flight whose response has not started is answered all the same (a half-closed client
        reads it; Hypercorn cannot tell it from one that has gone), and the start of the gateway's
        answer raises OSError once written, as ASGI 2.4 lets a server, so the gateway records the
        request as 499 (see `edgeruntime.gateway.app.gateway_start`)."""
        stream = getattr(getattr(protocol, "protocol", None), "stream", None)
        if type(stream) is not HTTPStream or stream.state != ASGIHTTPState.REQUEST:
            return
        write = stream.send

        async def send(event: Any) -> None:
            await write(event)
            if type(event) is Response and any(name == EXECUTION_ID_HEADER for name, _ in event.headers):
                stream.state = ASGIHTTPState.RESPONSE  # what app_send does next, which the error skips
                raise ConnectionAbortedError("the client closed its side before the response")

        stream.send = send

    #: The idle connections of each running server (its WorkerContext).
    idle_connections: weakref.WeakKeyDictionary[Any, _IdleConnections] = weakref.WeakKeyDictionary()

    class ClosingAtEOF(TCPServer):
        reading_ended = False

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            idle = idle_connections.get(self.context)
            if idle is None:
                idle = idle_connections[self.context] = _IdleConnections(
                    self.loop, self.config.keep_alive_timeout, self.context.terminated
                )
            self.idle_task = _KeepAlive(self, idle)  # type: ignore[assignment]

        async def _read_data(self) -> None:
            try:
                # Hypercorn's own loop, with the request in flight told of the end before Hypercorn
                # closes its stream (which forgets it).
                while not self.reader.at_eof():
                    try:
                        data = await asyncio.wait_for(self.reader.read(MAX_RECV), self.config.read_timeout)
                    except (OSError, TimeoutError):  # (ConnectionError, SSLError: OSErrors)
                        break
                    await self.protocol.handle(RawData(data))
                answering_after_eof(self.protocol)
                await self.protocol.handle(Closed())
            finally:
                self.reading_ended = True
                idle = getattr(self, "idle_task", None)
                if idle is not None:
                    await idle.stop()

        async def protocol_send(self, event: Event) -> None:
            # The last response of a half-closed connection ends after reading did: no timer for it either.
            if not (self.reading_ended and isinstance(event, Updated) and event.idle):
                await super().protocol_send(event)

    run.TCPServer = ClosingAtEOF  # type: ignore[attr-defined]
    try:
        yield
    finally:
        run.TCPServer = TCPServer  # type: ignore[attr-defined]


async def _serve_uvicorn(
    app: ASGIApp,
    host: str,
    port: int,
    graceful_timeout: float,
    shutdown_trigger: Callable[[], Awaitable[object]],
    before_serving: Callable[[], None] | None,
    log_format: str,
    keep_alive_timeout: float,
    websocket_max_message_bytes: int,
    cors: Callable[[Scope], list[tuple[bytes, bytes]]] | None,
    sock: socket.socket | None,
) -> None:
    try:
        import uvicorn  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise UsageError("--server uvicorn needs uvicorn: pip install 'uvicorn[standard]'") from None
    extra: dict[str, Any] = {}
    if log_format == "json":  # uvicorn's own handlers would write its warnings as plain text
        extra["log_config"] = None
    from edgeruntime.serving.uvicorn_http import head_limited_protocol

    protocol, checks_whole_heads = head_limited_protocol()
    config = uvicorn.Config(
        app if checks_whole_heads else limit_head(app, cors),
        host=host,
        port=port,
        lifespan="on",
        access_log=False,
        log_level="warning",
        **extra,
        timeout_graceful_shutdown=int(graceful_timeout) or 1,
        # Typed int, used as a delay in seconds (loop.call_later): fractions work.
        timeout_keep_alive=keep_alive_timeout,  # type: ignore[arg-type, unused-ignore]
        loop="none",
        # As under Hypercorn: the client address is the connection's peer. (Uvicorn's default
        # rewrites it from X-Forwarded-For, in a middleware run on every request.)
        proxy_headers=False,
        # Hypercorn's limit on the request head (431), kept as the bytes arrive.
        http=protocol,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        ws=_uvicorn_websockets(),  # type: ignore[arg-type, unused-ignore]  # uvicorn only calls it, as it would a class
        ws_max_size=websocket_max_message_bytes,
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
        await instance.serve(sockets=None if sock is None else [sock])
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
    on_stop: Callable[[], Awaitable[None]] | None = None,
    background: Sequence[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = (),
    sock: socket.socket | None = None,
    on_listening: Callable[[], None] | None = None,
    on_stopped: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Serve `app` with `settings` until SIGTERM or SIGINT; returns the exit status.

    `on_stop` runs when the signal arrives, before the server stops accepting and waits for its
    connections (the app closes its WebSockets then).

    The garbage collector, paused while `edgeruntime serve` starts, is turned on (tuned as by
    `edgeruntime.serving.collector`) right before the server starts. A serving process of several passes the shared
    listening `sock`: on SIGTERM it stops accepting at once, so the other serving processes take
    the new connections, and closes idle connections ACCEPT_GRACE_SEC later. `on_listening` is
    called once the server accepts connections; `on_stopped` once it has shut down (the app's
    background work drained or cut), on the server's loop.
    """
    if sock is None:
        check_port(settings.host, settings.port)
    gc_setting = os.environ.get("EDGERUNTIME_GC", "")
    gc_thresholds(gc_setting)  # a bad setting fails before anything starts
    server = resolve_server(settings.server)
    loop_factory = serving_loop(server, on_listening)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks = [loop.create_task(job(stop)) for job in background]
        pacer: PacedCollector | None = None

        def before_serving() -> None:
            nonlocal pacer
            pacer = start_collector(gc_setting)

        async def shutdown_trigger() -> None:
            await stop.wait()
            if sock is not None:  # one of several: the others take new connections from now on
                for listener in getattr(loop, "listeners", ()):
                    listener.close()
            if on_stop is not None:
                try:
                    await on_stop()
                except Exception:
                    logger.exception("stopping failed")
            if sock is not None:
                await asyncio.sleep(ACCEPT_GRACE_SEC)

        try:
            if on_start is not None:
                await on_start()
            await serve_asgi(
                app,
                settings.host,
                settings.port,
                graceful_timeout=settings.graceful_exit_timeout_sec,
                shutdown_trigger=shutdown_trigger,
                server=server,
                before_serving=before_serving,
                log_format=settings.log_format,
                keep_alive_timeout=settings.keep_alive_timeout_sec,
                websocket_max_message_bytes=settings.websocket_max_message_bytes,
                cors=CorsPolicy(settings.config.cors_origins).for_scope,
                sock=sock,
            )
            if on_stopped is not None:
                await on_stopped()
        finally:
            if pacer is not None:
                pacer.stop()
            stop.set()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    sys.stdout.flush()
    return 0


#: How long accepting pauses after `accept()` failed for want of descriptors (or memory).
ACCEPT_RETRY_SEC = 0.1
#: The errors after which accepting pauses: asyncio's list (descriptors, buffer space, memory).
_ACCEPT_PAUSE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class _SelectorLoop(asyncio.SelectorEventLoop):
    """asyncio's loop, whose accept loop pauses once, and says so once a second, when out of descriptors.

    asyncio accepts up to `backlog` connections per wake-up. When `accept()` fails for want of
    descriptors it stops watching the socket and schedules a retry, but then goes on with the
    next accept, which fails the same way: up to `backlog` retries and log records per wake-up,
    each retry waking up to as many again (CPython gh-151615, fixed in later releases). A
    server at its limit logged hundreds of thousands of tracebacks and spent its time in
    retries instead of serving. Here the first such failure ends the batch, is reported through
    the descriptors' log (one line a second) and schedules one retry, made only while the
    server still serves.
    """

    _accept_error_logged_at = float("-inf")

    def _accept_connection(  # type: ignore[no-untyped-def]
        self, protocol_factory, sock, sslcontext=None, server=None, backlog=100, *rest
    ) -> None:
        # The arguments are asyncio's (`rest`: the TLS timeouts, and a context from 3.14 on).
        for _ in range(backlog):
            try:
                conn, addr = sock.accept()
                conn.setblocking(False)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in _ACCEPT_PAUSE_ERRNOS:
                    raise  # the loop logs it and goes on
                if exc.errno in EXHAUSTION_ERRNOS:
                    report_exhaustion("accepting a connection", exc)
                elif time.monotonic() - self._accept_error_logged_at >= 1.0:  # out of memory: once a second
                    self._accept_error_logged_at = time.monotonic()
                    logger.error("accepting a connection failed: %s; trying again every %g s", exc, ACCEPT_RETRY_SEC)
                self._remove_reader(sock.fileno())  # type: ignore[attr-defined]
                self.call_later(
                    ACCEPT_RETRY_SEC, self._accept_again, protocol_factory, sock, sslcontext, server, backlog, *rest
                )
                return
            self.create_task(
                self._accept_connection2(  # type: ignore[attr-defined]
                    protocol_factory, conn, {"peername": addr}, sslcontext, server, *rest
                )
            )

    def _accept_again(  # type: ignore[no-untyped-def]
        self, protocol_factory, sock, sslcontext, server, backlog, *rest
    ) -> None:
        if sock.fileno() < 0 or (server is not None and not server.is_serving()):
            return  # closed meanwhile (shutdown)
        self._start_serving(protocol_factory, sock, sslcontext, server, backlog, *rest)  # type: ignore[attr-defined]


def serving_loop(
    server: str, on_listening: Callable[[], None] | None = None
) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop to serve on; the connections its TCP servers accept batch their writes.

    The loop keeps the servers it made in `listeners` (a serving process of several closes them
    to stop accepting) and calls `on_listening` once one accepts connections. Their listening
    sockets are not inherited by processes a function starts (Hypercorn marks them inheritable).

    uvloop under uvicorn when it is installed (as uvicorn itself would pick), asyncio's otherwise.
    Both servers make their listening sockets with `loop.create_server`, so this is where every
    accepted connection can be given a BatchedTransport (see `edgeruntime.core.transport`). Out of
    descriptors, asyncio's loop pauses accepting for ACCEPT_RETRY_SEC (see `_SelectorLoop`);
    uvloop (libuv) accepts and closes the waiting connections at once, so their clients see
    the connection close rather than wait.
    """
    base: type[asyncio.AbstractEventLoop] = _SelectorLoop
    if server == "uvicorn":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            base = uvloop.Loop

    class ServingLoop(base):  # type: ignore[misc, valid-type]
        listeners: list[asyncio.AbstractServer]

        async def create_server(
            self, protocol_factory: Callable[[], asyncio.BaseProtocol], *args: Any, **kwargs: Any
        ) -> asyncio.AbstractServer:
            created: asyncio.AbstractServer = await super().create_server(
                batched_writes(protocol_factory), *args, **kwargs
            )
            if not hasattr(self, "listeners"):
                self.listeners = []
            self.listeners.append(created)
            for listener in getattr(created, "sockets", None) or ():
                with contextlib.suppress(OSError):
                    os.set_inheritable(listener.fileno(), False)
            if on_listening is not None:
                on_listening()
            return created

    return ServingLoop
