"""Uvicorn's protocols held to Hypercorn's request-head limit: 431 as the bytes arrive, both parsers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from edgeruntime.core.types import Receive, Scope, Send
from edgeruntime.gateway.app import EXECUTION_ID_HEADER
from edgeruntime.serving.uvicorn_http import h11_protocol, head_limited_protocol, httptools_protocol
from edgeruntime.workers.request_limits import MAX_HEAD_BYTES, limit_head
from tests.helpers import RecordingTransport

HEAD = b"GET /functions/v1/hello HTTP/1.1\r\nhost: 127.0.0.1\r\n"


class Transport(RecordingTransport):
    """A connection as the protocol sees it (flow control included)."""

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    @property
    def sent(self) -> bytes:
        return b"".join(self.writes)


class App:
    """Answers 200 with the size of the body; counts the requests it saw."""

    def __init__(self) -> None:
        self.requests = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.requests += 1
        size, more = 0, True
        while more:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        body = str(size).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


def kinds() -> list[tuple[str, type[asyncio.Protocol], bool]]:
    """(name, protocol, whether it refuses whole heads itself) for each parser uvicorn can use."""
    return [("httptools", httptools_protocol(), True), ("h11", h11_protocol(), False)]


Connect = Callable[[], tuple[asyncio.Protocol, Transport, App]]


@pytest.fixture(params=kinds(), ids=lambda k: k[0])
def connect(request: pytest.FixtureRequest) -> Connect:
    """Opens a connection to a protocol as `edgeruntime serve --server uvicorn` sets it up."""
    _, protocol_class, whole_heads = request.param

    def open_connection() -> tuple[asyncio.Protocol, Transport, App]:
        app = App()
        config = Config(
            app=app if whole_heads else limit_head(app),
            http=protocol_class,
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            lifespan="off",
            log_level="warning",
        )
        config.load()
        protocol = protocol_class(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg, unused-ignore]
        transport = Transport()
        protocol.connection_made(transport)
        return protocol, transport, app

    return open_connection


async def settle(transport: Transport, app: App) -> None:
    for _ in range(100):
        await asyncio.sleep(0.001)
        if transport.closed or b"\r\n\r\n" in transport.sent:
            return


def refused(transport: Transport) -> bool:
    return transport.sent.startswith(b"HTTP/1.1 431 ") and b"connection: close" in transport.sent and transport.closed


async def test_a_head_is_refused_once_over_the_limit_not_buffered_on(connect: Connect) -> None:
    protocol, transport, app = connect()
    protocol.data_received(HEAD)
    for _ in range(MAX_HEAD_BYTES // 1024 + 1):
        protocol.data_received(b"x-filler: " + b"a" * 1012 + b"\r\n")  # 1 KiB a line, no end of the head
    assert refused(transport)
    assert transport.sent.endswith(b"content-length: 0\r\nconnection: close\r\n\r\n")
    before = transport.sent
    protocol.data_received(b"x-more: " + b"b" * 1_000_000)
    assert transport.sent == before and app.requests == 0


@pytest.mark.parametrize(
    "head",
    [
        HEAD + b"x-big: " + b"a" * 1_000_000 + b"\r\n\r\n",  # a 1 MB header
        HEAD + b"".join(b"x-%d: v\r\n" % i for i in range(20_000)) + b"\r\n",  # 20,000 headers
        HEAD + b"x-big: " + b"a" * (MAX_HEAD_BYTES + 100) + b"\r\n\r\n",  # just over, whole in one read
    ],
    ids=["1MB-header", "20000-headers", "just-over"],
)
async def test_a_head_over_the_limit_is_431_whole_or_in_pieces(connect: Connect, head: bytes) -> None:
    for piece in (len(head), 4096):
        protocol, transport, app = connect()
        for start in range(0, len(head), piece):
            protocol.data_received(head[start : start + piece])
        await settle(transport, app)
        assert refused(transport), (piece, transport.sent[:80])
        assert app.requests == 0


async def test_heads_within_the_limit_and_large_bodies_are_served(connect: Connect) -> None:
    protocol, transport, app = connect()
    filler = b"x-fill: " + b"a" * (MAX_HEAD_BYTES - len(HEAD) - 200) + b"\r\n"
    protocol.data_received(HEAD + filler + b"\r\n")
    await settle(transport, app)
    assert transport.sent.startswith(b"HTTP/1.1 200 ")
    # A big body in the same read as its head, then the next request: the body is not a head.
    protocol, transport, app = connect()
    body = b"z" * 200_000
    post = b"POST /functions/v1/hello HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: %d\r\n\r\n" % len(body)
    protocol.data_received(post + body[:100_000])
    protocol.data_received(body[100_000:])
    await settle(transport, app)
    assert transport.sent.startswith(b"HTTP/1.1 200 ") and transport.sent.endswith(b"200000")
    assert not transport.closed
    protocol.data_received(HEAD + b"\r\n")
    for _ in range(100):
        await asyncio.sleep(0.001)
        if app.requests == 2 and transport.sent.count(b"HTTP/1.1 200 ") == 2:
            break
    assert transport.sent.count(b"HTTP/1.1 200 ") == 2


async def test_connect_is_not_logged_as_an_unsupported_upgrade(caplog: pytest.LogCaptureFixture) -> None:
    protocol, transport, app = (kinds()[0][1], Transport(), App())
    config = Config(app=app, http=protocol, lifespan="off")
    config.load()
    instance = protocol(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg, unused-ignore]
    instance.connection_made(transport)
    with caplog.at_level(logging.WARNING, logger="uvicorn.error"):
        instance.data_received(b"CONNECT /_internal/health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        await settle(transport, app)
    assert "Unsupported upgrade request" not in caplog.text
    assert app.requests == 1


def test_the_protocol_is_the_one_uvicorn_would_pick(monkeypatch: pytest.MonkeyPatch) -> None:
    assert head_limited_protocol() == (httptools_protocol(), True)

    def no_httptools() -> type[asyncio.Protocol]:
        raise ImportError("No module named 'httptools'")

    monkeypatch.setattr("edgeruntime.serving.uvicorn_http.httptools_protocol", no_httptools)
    assert head_limited_protocol() == (h11_protocol(), False)


def keep_alive_connection(server_state: ServerState, timeout: float) -> tuple[asyncio.Protocol, Transport, App]:
    """A connection to the httptools protocol with a keep-alive timeout of `timeout` seconds."""
    app = App()
    protocol_class = httptools_protocol()
    config = Config(app=app, http=protocol_class, lifespan="off", log_level="warning", timeout_keep_alive=timeout)  # type: ignore[arg-type, unused-ignore]
    config.load()
    protocol = protocol_class(config=config, server_state=server_state, app_state={})  # type: ignore[call-arg]
    transport = Transport()
    protocol.connection_made(transport)
    return protocol, transport, app


async def answered(transport: Transport, count: int) -> None:
    for _ in range(200):
        if transport.sent.count(b"HTTP/1.1 200 ") >= count:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(transport.sent)


async def test_idle_connections_are_closed_at_the_keep_alive_timeout_by_one_timer() -> None:
    state = ServerState()
    first, first_transport, _ = keep_alive_connection(state, 0.2)
    second, second_transport, _ = keep_alive_connection(state, 0.2)
    first.data_received(HEAD + b"\r\n")
    await answered(first_transport, 1)
    idle = first.idle_connections  # type: ignore[attr-defined]
    assert idle is second.idle_connections  # type: ignore[attr-defined]  # one per server
    await asyncio.sleep(0.1)
    second.data_received(HEAD + b"\r\n")
    await answered(second_transport, 1)
    # The first went idle first: it is closed first, the second a timeout after its own response.
    await asyncio.sleep(0.15)
    assert first_transport.closed and not second_transport.closed
    await asyncio.sleep(0.15)
    assert second_transport.closed
    assert not idle.waiting


async def test_a_request_on_an_idle_connection_stops_its_keep_alive_timeout() -> None:
    protocol, transport, app = keep_alive_connection(ServerState(), 0.2)
    protocol.data_received(HEAD + b"\r\n")
    await answered(transport, 1)
    await asyncio.sleep(0.15)
    protocol.data_received(HEAD[:20])  # a request begins: the connection is busy, not idle
    await asyncio.sleep(0.15)
    assert not transport.closed  # past the first response's timeout
    protocol.data_received(HEAD[20:] + b"\r\n")
    await answered(transport, 2)
    assert app.requests == 2 and not transport.closed
    await asyncio.sleep(0.3)
    assert transport.closed  # a timeout after the second response


async def test_a_closed_connection_leaves_the_idle_connections() -> None:
    protocol, transport, _ = keep_alive_connection(ServerState(), 5)
    protocol.data_received(HEAD + b"\r\n")
    await answered(transport, 1)
    idle = protocol.idle_connections  # type: ignore[attr-defined]
    assert protocol in idle.waiting
    protocol.connection_lost(ConnectionResetError("gone"))
    assert protocol not in idle.waiting


class Replies:
    """Answers with the messages it is given, whatever the request, while a task listens for what
    the connection says next (the request, then its end once the response is sent)."""

    def __init__(self, messages: list[dict[str, object]]) -> None:
        self.messages = messages
        self.heard: list[str] = []
        #: What each send raised ("" for none): the refusals, compared too.
        self.raised: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def listen() -> None:
            for _ in range(2):
                self.heard.append((await receive())["type"])

        listener = asyncio.get_running_loop().create_task(listen())
        await asyncio.sleep(0.01)  # it has the request and waits for what comes next
        try:
            for message in self.messages:
                try:
                    await send(message)
                except Exception as exc:
                    self.raised.append(f"{type(exc).__name__}: {exc}")
                    raise
                self.raised.append("")
        finally:
            try:
                await asyncio.wait_for(listener, 0.2)
            except TimeoutError:
                self.heard.append("nothing")


async def _exchange(protocol_class: type[asyncio.Protocol], request: bytes, app: Replies) -> tuple[bytes, bool]:
    config = Config(app=app, http=protocol_class, lifespan="off", log_level="critical", access_log=False)
    config.load()
    state = ServerState()
    state.default_headers = [(b"date", b"Mon, 07 Dec 2026 00:00:00 GMT"), (b"server", b"uvicorn")]
    protocol = protocol_class(config=config, server_state=state, app_state={})  # type: ignore[call-arg, unused-ignore]
    transport = Transport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    for _ in range(200):  # until the app has returned (its listener heard the end, or waited 0.2 s)
        await asyncio.sleep(0.005)
        if not protocol.tasks:  # type: ignore[attr-defined]
            break
    return transport.sent, transport.closed


GET = b"GET /functions/v1/hello HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"


def _start(*headers: tuple[bytes, bytes], status: int = 200) -> dict[str, object]:
    return {"type": "http.response.start", "status": status, "headers": list(headers)}


BODY = {"type": "http.response.body", "body": b"hello"}


@pytest.mark.parametrize(
    ("request_head", "messages"),
    [
        (GET, [_start((b"content-length", b"5"), (b"Content-Type", b"text/plain")), BODY]),
        (GET, [_start((b"content-type", b"text/plain")), BODY]),  # no length: chunked
        (GET, [_start((b"transfer-encoding", b"chunked")), BODY]),
        (b"HEAD / HTTP/1.1\r\nhost: a\r\n\r\n", [_start(), {"type": "http.response.body", "body": b""}]),
        (GET, [_start(status=204), {"type": "http.response.body", "body": b""}]),
        (GET, [_start((b"content-length", b"5"), (b"connection", b"Keep-Alive, close")), BODY]),
        (b"GET / HTTP/1.0\r\nhost: a\r\n\r\n", [_start((b"content-length", b"5")), BODY]),
        (GET, [_start((b"x-ok", b"a\tb: c"), (b"content-length", b"5")), BODY]),
        (GET, [_start((b"x bad", b"v"), (b"content-length", b"5")), BODY]),  # a space in a name
        (GET, [_start((b"x-bad", b"v\r\nset-cookie: a=b"), (b"content-length", b"5")), BODY]),  # a header injected
        (GET, [_start((b"x-bad:", b"v"), (b"content-length", b"5")), BODY]),
        (GET, [_start((b"x-bad", b"v\rw"), (b"content-length", b"5")), BODY]),  # a lone CR
        (GET, [_start((b"x-bad", b"v\nw"), (b"content-length", b"5")), BODY]),  # a lone LF
        (GET, [_start((b"x-bad", b"v\x00"), (b"content-length", b"5")), BODY]),
        (GET, [_start((b"x-bad", b"v\x7f"), (b"content-length", b"5")), BODY]),
        (GET, [_start((b"x-bad", b"\x1b[2J"), (b"content-length", b"5")), BODY]),
        (GET, [_start((b"x-ok", b"caf\xc3\xa9 \x80\xff ~"), (b"content-length", b"5")), BODY]),  # obs-text
        (GET, [_start((b"x-ok", b""), (b"", b"empty name"), (b"content-length", b"5")), BODY]),
        (GET, [_start((b"X-Mixed-Case", b"v"), (b"Content-Length", b"5"), (b"CONNECTION", b"close")), BODY]),
        (GET, [_start((b"x\tbad", b"v"), (b"content-length", b"5")), BODY]),  # a tab in a name
        (GET, [_start((b"x\x00bad", b"v"), (b"content-length", b"5")), BODY]),
        (GET, [_start((b"x-\xc3\xa9", b"v"), (b"content-length", b"5")), BODY]),  # a name not ASCII
        (GET, [_start((b"x-bad", b"v\x01"), (b"x bad", b"v"), (b"content-length", b"5")), BODY]),  # value first
        (GET, [_start((b"x bad", b"v"), (b"x-bad", b"v\x01"), (b"content-length", b"5")), BODY]),  # name first
        (GET, [_start((b"content-length", b"5\x00"), (b"x-ok", b"v")), BODY]),  # a length with a control
        (GET, [_start((b"content-length", b"five")), BODY]),  # a length that is no number
        (GET, [_start((b"content-length", b" +5 ")), BODY]),  # int() takes spaces and a sign
        (GET, [_start((b"content-length", "\u0665".encode())), BODY]),  # a digit int() reads, not ASCII
        (GET, [_start((b"content-length", b"\x1c5")), BODY]),  # a control int() takes for a space in text
        (GET, [_start(*[(b"x-many-%d" % n, b"v" * n) for n in range(60)], (b"content-length", b"5")), BODY]),
        (GET, [_start((b"content-length", b"4")), BODY]),  # longer than said
        (GET, [_start((b"content-length", b"9")), {**BODY, "more_body": True}, {**BODY, "body": b" you"}]),
        (GET, [_start((b"content-length", b"9")), BODY]),  # shorter than said
        (GET, [BODY]),  # a body before the start
        (GET, [_start((b"content-length", b"5")), BODY, BODY]),  # a body after the end
    ],
    ids=[
        "length",
        "chunked-by-server",
        "chunked-by-app",
        "head",
        "204",
        "connection-close",
        "http-1.0",
        "tab-and-colon-in-value",
        "space-in-name",
        "crlf-in-value",
        "colon-in-name",
        "cr-in-value",
        "lf-in-value",
        "nul-in-value",
        "del-in-value",
        "escape-in-value",
        "obs-text-in-value",
        "empty-value-and-name",
        "mixed-case-names",
        "tab-in-name",
        "nul-in-name",
        "non-ascii-name",
        "bad-value-before-bad-name",
        "bad-name-before-bad-value",
        "control-in-length",
        "length-not-a-number",
        "length-with-spaces-and-sign",
        "length-in-another-script",
        "length-with-a-separator-control",
        "many-headers",
        "too-long",
        "two-parts",
        "too-short",
        "body-first",
        "body-after-end",
    ],
)
async def test_responses_go_out_as_uvicorn_sends_them(request_head: bytes, messages: list[dict[str, object]]) -> None:
    """ResponseCycle sends and refuses exactly what Uvicorn's own cycle does, and wakes a listener as it does."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    ours, theirs = Replies(messages), Replies(messages)
    assert await _exchange(httptools_protocol(), request_head, ours) == await _exchange(
        HttpToolsProtocol, request_head, theirs
    )
    assert ours.heard == theirs.heard
    assert ours.raised == theirs.raised
    assert b"set-cookie" not in (await _exchange(httptools_protocol(), request_head, Replies(messages)))[0]


class AnswersLate:
    """Answers once its connection is lost, with `headers`; keeps what its sends raised."""

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers
        self.raised: list[BaseException | None] = []
        self.lost = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.lost.wait()
        for message in (
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4"), *self.headers]},
            {"type": "http.response.body", "body": b"late"},
        ):
            try:
                await send(message)
            except OSError as exc:
                self.raised.append(exc)
            else:
                self.raised.append(None)


@pytest.mark.parametrize("gateway", [True, False], ids=["function-route", "other"])
async def test_the_gateways_answer_to_a_client_gone_raises_oserror_others_are_dropped(gateway: bool) -> None:
    """The client left before the response: the start the gateway sends for a function raises
    OSError (ASGI 2.4; the gateway records 499), and is not written; any other app's is dropped
    silently, as Uvicorn drops it, and its body too."""
    protocol_class = httptools_protocol()
    app = AnswersLate([(EXECUTION_ID_HEADER, b"01234")] if gateway else [])
    config = Config(app=app, http=protocol_class, lifespan="off", log_level="critical", access_log=False)
    config.load()
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg, unused-ignore]
    transport = Transport()
    protocol.connection_made(transport)
    protocol.data_received(GET)
    await asyncio.sleep(0.01)
    protocol.connection_lost(None)
    app.lost.set()
    for _ in range(200):
        await asyncio.sleep(0.005)
        if not protocol.tasks:  # type: ignore[attr-defined]
            break
    expected = ["ClientDisconnected", "NoneType"] if gateway else ["NoneType", "NoneType"]
    assert [type(exc).__name__ for exc in app.raised] == expected
    assert transport.sent == b""


def test_the_cycle_is_made_with_uvicorns_parameters_in_their_order() -> None:
    """The protocol passes a cycle's arguments by position (`CYCLE_PARAMETERS`): a uvicorn that
    renamed or reordered them would get them mixed up."""
    import inspect

    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    from edgeruntime.serving.uvicorn_http import CYCLE_PARAMETERS

    parameters = list(inspect.signature(RequestResponseCycle.__init__).parameters.values())[1:]
    assert tuple(p.name for p in parameters) == CYCLE_PARAMETERS
    assert all(p.default is inspect.Parameter.empty for p in parameters)


class ScopeRecorder:
    """Answers 204 and keeps the scope of each request (its path, raw path, query, method, version)."""

    def __init__(self) -> None:
        self.seen: list[tuple[object, ...]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(
            tuple(scope.get(key) for key in ("method", "http_version", "path", "raw_path", "query_string", "root_path"))
        )
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.mark.parametrize("root_path", ["", "/api"])
@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /functions/v1/hello HTTP/1.1",
        b"POST /functions/v1/hello/a%20b/%2Fx?q=1&r=%20 HTTP/1.1",
        b"GET /%66unctions/v1/hello? HTTP/1.0",
        b"DELETE / HTTP/1.1",
    ],
)
async def test_the_scope_is_uvicorns(root_path: str, request_line: bytes) -> None:
    """The protocol makes each request's scope as Uvicorn's own does, with and without a root path."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    scopes = []
    for protocol_class in (httptools_protocol(), HttpToolsProtocol):
        app = ScopeRecorder()
        config = Config(app=app, http=protocol_class, lifespan="off", log_level="critical", root_path=root_path)
        config.load()
        protocol = protocol_class(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg, unused-ignore]
        transport = Transport()
        protocol.connection_made(transport)
        protocol.data_received(request_line + b"\r\nhost: a\r\ncontent-length: 0\r\n\r\n")
        for _ in range(100):
            await asyncio.sleep(0.002)
            if app.seen:
                break
        scopes.append(app.seen)
    assert scopes[0] == scopes[1]
    assert len(scopes[0]) == 1


async def test_the_gateway_is_handed_its_requests_and_a_subclass_that_wraps_its_call_keeps_it(hello_dir: Path) -> None:
    """The protocol gives an HTTP request straight to the gateway's `handle_http` (what its
    `__call__` does with it); a subclass with a `__call__` of its own is called through that."""
    from edgeruntime.config.settings import Settings
    from edgeruntime.gateway.app import EdgeApp

    class Counting(EdgeApp):
        calls = 0

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            Counting.calls += 1
            await super().__call__(scope, receive, send)

    for app_class in (EdgeApp, Counting):
        app = app_class(Settings.build(hello_dir, watch=False))
        protocol_class = httptools_protocol()
        config = Config(
            app=app, http=protocol_class, lifespan="off", log_level="critical", access_log=False, proxy_headers=False
        )
        config.load()
        protocol = protocol_class(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg, unused-ignore]
        assert protocol.http_app == (app.handle_http if app_class is EdgeApp else app)  # type: ignore[attr-defined]
        transport = Transport()
        protocol.connection_made(transport)
        protocol.data_received(GET)
        for _ in range(200):
            await asyncio.sleep(0.005)
            if b"\r\n\r\n" in transport.sent and not protocol.tasks:  # type: ignore[attr-defined]
                break
        assert transport.sent.startswith(b"HTTP/1.1 "), transport.sent
        assert EXECUTION_ID_HEADER in transport.sent
        await app.shutdown(1)
    assert Counting.calls == 1
