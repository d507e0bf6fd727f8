"""Uvicorn's HTTP/1.1 protocols, held to the request-head limit Hypercorn has (431).

Uvicorn's httptools protocol buffers a request head of any size (a 1 MB header, 20,000 headers),
and its h11 protocol answers a head over h11's limit with 400. The protocols here answer 431 and
close the connection once more than MAX_HEAD_BYTES of a head have arrived without its end, as
Hypercorn does (see :mod:`edgeruntime.workers.request_limits`). The bytes are counted as they arrive, so
a head is never buffered past the limit and one read.

The httptools protocol also answers a malformed request (400) without a log line, as Hypercorn
does: each one would be a line any client can add. It keeps the keep-alive timeout of all its
connections with one timer (:mod:`edgeruntime.serving.keep_alive`) rather than a timer armed after every
response and cancelled by the next request, and starts each request's task without going
through the loop's task factory (the CPU meter's, which only concerns tasks metered code creates).
Its responses start with one validation of all the headers an app sent (see `ResponseCycle`).

Imported by `edgeruntime serve --server uvicorn` only: it needs uvicorn (and httptools for the
protocol uvicorn prefers).
"""

from __future__ import annotations

import asyncio
import functools
import re
import weakref
from typing import Any

from edgeruntime.serving.keep_alive import IdleConnections
from edgeruntime.workers.request_limits import MAX_HEAD_BYTES

__all__ = ["h11_protocol", "head_limited_protocol", "httptools_protocol"]


def _refusal(default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """431 as Hypercorn sends it (no body, connection closed), with the server's date and name."""
    lines = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
    lines.extend(name + b": " + value + b"\r\n" for name, value in default_headers)
    lines.append(b"content-length: 0\r\nconnection: close\r\n\r\n")
    return b"".join(lines)


@functools.cache
def h11_protocol() -> type[asyncio.Protocol]:
    """Uvicorn's h11 protocol, answering 431 rather than 400 when h11 finds a head over its limit.

    h11 raises once more than MAX_HEAD_BYTES of a head are buffered without its end (uvicorn
    gives it that limit); a complete head over the limit is refused by `limit_head`. Made on
    first use: h11 is imported only where httptools is missing.
    """
    from uvicorn.protocols.http import h11_impl  # type: ignore[import-not-found, unused-ignore]

    class H11Protocol(h11_impl.H11Protocol):  # type: ignore[misc, unused-ignore]
        head_refused = False

        def data_received(self, data: bytes) -> None:
            if not self.head_refused:  # the connection is closing: nothing more is parsed
                super().data_received(data)

        def send_400_response(self, msg: str) -> None:
            # h11 does not keep its error's status hint; a buffer over the limit is what its 431 means.
            if len(self.conn.trailing_data[0]) > MAX_HEAD_BYTES:
                self.head_refused = True
                self.transport.write(_refusal(self.server_state.default_headers))
                self.transport.close()
                return
            super().send_400_response(msg)

    H11Protocol.__qualname__ = "H11Protocol"
    H11Protocol.__module__ = __name__
    return H11Protocol


def _keep_alive_expired(protocol: Any) -> None:
    protocol.timeout_keep_alive_handler()


#: The idle connections of each server (its ServerState), made on its first connection.
_idle_connections: weakref.WeakKeyDictionary[Any, IdleConnections] = weakref.WeakKeyDictionary()


#: What Uvicorn refuses in a header name (its HEADER_RE): separators, controls, spaces and tabs.
_INVALID_NAME = re.compile(b'[\x00-\x1f\x7f()<>@,;:\\[\\]={} \t\\\\"]')
#: What Uvicorn refuses in a header value (its HEADER_VALUE_RE): controls other than tab.
_INVALID_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")
#: Maps every byte a header value may not hold (`_INVALID_VALUE`, CR and LF included) to NUL and
#: every other byte to itself, for `_valid_values`.
_VALUE_CHECK = bytes(0 if _INVALID_VALUE.match(bytes((byte,))) else byte for byte in range(256))
#: Header names seen valid, each with its lower-case spelling: names repeat from one response to
#: the next, so each is checked once. (At most _NAMES_KEPT: names an app makes up are checked again.)
_valid_names: dict[bytes, bytes] = {}
_NAMES_KEPT = 1024


#: The parameters of Uvicorn's RequestResponseCycle, in the order the protocol passes them.
CYCLE_PARAMETERS = (
    "scope",
    "transport",
    "flow",
    "logger",
    "access_logger",
    "access_log",
    "default_headers",
    "message_event",
    "expect_100_continue",
    "keep_alive",
    "on_response",
)


class _HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing a complete head over the limit."""


def _lowered_name(name: Any) -> Any:
    """`name` in lower case if Uvicorn lets it through (None if it refuses it), remembered when valid."""
    if _INVALID_NAME.search(name):
        return None
    lowered = name.lower()
    if type(name) is bytes and len(_valid_names) < _NAMES_KEPT:
        _valid_names[name] = lowered
    return lowered


def _valid_values(block: bytes, headers: int) -> bool:
    """Whether the values in `block`, the lines ("name: value\r\n") of `headers` headers with valid
    names, are all valid: the only bytes `_VALUE_CHECK` maps to NUL are the lines' CR LF (a
    value with CR LF in it would pass as two lines, a header injected)."""
    return block.translate(_VALUE_CHECK).count(0) == 2 * headers


def _header_refusal(headers: Any) -> RuntimeError | None:
    """What Uvicorn raises for the first header its checks refuse, if one is refused."""
    for name, value in headers:
        if _INVALID_NAME.search(name):
            return RuntimeError("Invalid HTTP header name.")
        if _INVALID_VALUE.search(value):
            return RuntimeError("Invalid HTTP header value.")
    return None


def _refuse_headers(headers: Any) -> None:
    """Raise what Uvicorn raises for the first header its checks refuse (RuntimeError)."""
    raise _header_refusal(headers) or RuntimeError("Invalid HTTP header.")  # (not reached: one was refused)


@functools.cache
def httptools_protocol() -> type[asyncio.Protocol]:
    """Uvicorn's httptools protocol, held to the limit: incomplete heads and complete ones.

    ImportError without httptools.
    """
    import contextvars
    import urllib.parse

    import httptools
    from uvicorn.protocols.http import httptools_impl  # type: ignore[import-not-found, unused-ignore]
    from uvicorn.protocols.http.flow_control import service_unavailable  # type: ignore[import-not-found, unused-ignore]
    from uvicorn.protocols.utils import ClientDisconnected  # type: ignore[import-not-found, unused-ignore]

    from edgeruntime.gateway.app import EdgeApp, gateway_start

    status_lines: dict[int, bytes] = httptools_impl.STATUS_LINE
    #: The server's own headers (date, server) as lines, for the list they were made from: Uvicorn
    #: makes a new list when the date changes, once a second.
    #: (Held as one pair, replaced whole: servers of other threads in this process read it too.)
    default_lines: list[tuple[object, bytes]] = [(None, b"")]

    class ResponseCycle(httptools_impl.RequestResponseCycle):  # type: ignore[misc, unused-ignore]
        """Uvicorn's request-response cycle with a cheaper start of the response.

        Uvicorn checks each header's name and value with a regular expression of its own (ten
        searches for a response of five headers); this cycle checks each header name once (the
        names it has seen valid are remembered with their lower-case spelling) and the values of
        all the headers the app sent at once (`_valid_values`: one translation and one count, no
        regular expression), and writes the server's own, checked once a second, as they were. A
        body with a content-length is written without going through Uvicorn's `send` (one
        coroutine less per message). The same bytes go out and the same errors are raised; what
        this does not cover (an access log, a paused or gone connection, chunked bodies, HEAD,
        messages out of order) is Uvicorn's own code. One difference: the gateway's start of a
        function's response to a client that has gone raises OSError (as ASGI 2.4 lets a
        server), where Uvicorn drops it silently, so the request is recorded as 499 (see
        `edgeruntime.gateway.app.gateway_start`).
        """

        async def send(self, message: Any) -> None:
            if self.disconnected or self.flow.write_paused or self.access_log:
                if self.disconnected and not self.response_started and gateway_start(message):
                    # Uvicorn drops it silently: the gateway learns the client has gone (499).
                    raise ClientDisconnected("the client disconnected before the response")
                await super().send(message)
            elif not self.response_started and message["type"] == "http.response.start":
                self._start(message)
            elif (
                self.chunked_encoding is False
                and not self.response_complete
                and message["type"] == "http.response.body"
                and self.scope["method"] != "HEAD"
            ):
                self._body(message)
            else:  # chunks, HEAD, messages out of order: Uvicorn's
                await super().send(message)

        def _body(self, message: Any) -> None:
            """A body (or part of one) of a response with a content-length, as Uvicorn sends it."""
            body = message.get("body", b"")
            size = len(body)
            if size > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= size
            self.transport.write(body)
            if not message.get("more_body", False):
                if self.expected_content_length != 0:
                    raise RuntimeError("Response content shorter than Content-Length")
                self.response_complete = True
                self.message_event.set()
                if not self.keep_alive:
                    self.transport.close()
                self.on_response()

        def _start(self, message: Any) -> None:
            """The status line and headers, as Uvicorn writes them (see the class docstring)."""
            status_line = status_lines[message["status"]]
            self.response_started = True
            self.waiting_for_100_continue = False
            headers = message.get("headers", ())
            parts: list[bytes] = []
            closes = False
            names = _valid_names
            for name, value in headers:
                try:
                    lowered = names.get(name)
                except TypeError:  # not bytes (a bytearray): checked each time
                    lowered = None
                if lowered is None:
                    lowered = _lowered_name(name)
                    if lowered is None:
                        _refuse_headers(headers)
                if lowered == b"content-length":
                    if self.chunked_encoding is None:
                        try:
                            # What int(value.decode()) gives, where bytes are read as ASCII (as they are).
                            self.expected_content_length = int(value)
                        except (TypeError, ValueError):
                            try:
                                self.expected_content_length = int(value.decode())
                            except ValueError:  # Uvicorn refuses a value with a control character first
                                if _INVALID_VALUE.search(value):
                                    _refuse_headers(headers)
                                raise
                        self.chunked_encoding = False
                elif lowered == b"transfer-encoding":
                    if value.lower() == b"chunked":
                        self.expected_content_length = 0
                        self.chunked_encoding = True
                elif lowered == b"connection" and b"close" in [token.lower().strip() for token in value.split(b",")]:
                    self.keep_alive = False
                    closes = True
                parts += (lowered, b": ", value, b"\r\n")
            block = b"".join(parts)
            if not _valid_values(block, len(parts) >> 2):
                _refuse_headers(headers)
            if not self.keep_alive and not closes:
                block += b"connection: close\r\n"
            if self.chunked_encoding is None and self.scope["method"] != "HEAD" and message["status"] not in (204, 304):
                self.chunked_encoding = True
                block += b"transfer-encoding: chunked\r\n"
            defaults = self.default_headers
            rendered = default_lines[0]
            if rendered[0] is not defaults:
                refused = _header_refusal(defaults)
                if refused is not None:
                    raise refused
                server_lines = b"".join(b"%s: %s\r\n" % (name.lower(), value) for name, value in defaults)
                rendered = default_lines[0] = (defaults, server_lines)
            self.transport.write(b"".join((status_line, rendered[1], block, b"\r\n")))

    class HttpToolsProtocol(httptools_impl.HttpToolsProtocol):  # type: ignore[misc, unused-ignore]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            #: Whether the parser is inside a request head (between requests counts as inside).
            self.reading_head = True
            #: Bytes received since the current head started, in whole reads: at least the head's size.
            self.head_bytes = 0
            self.head_refused = False
            idle = _idle_connections.get(self.server_state)
            if idle is None or idle.timeout != self.timeout_keep_alive:
                idle = _idle_connections[self.server_state] = IdleConnections(
                    self.loop, self.timeout_keep_alive, _keep_alive_expired
                )
            self.idle_connections = idle
            #: Each request's task in a fresh context (uvicorn's `reset_contextvars`, where it has one).
            self.fresh_context = bool(getattr(self.config, "reset_contextvars", False))
            #: What serves an HTTP request: the gateway's `handle_http` when the app is the gateway
            #: (what its `__call__` does with an "http" scope, without that coroutine in between).
            app = self.app
            gateway = isinstance(app, EdgeApp) and type(app).__call__ is EdgeApp.__call__
            self.http_app = app.handle_http if gateway else app

        def data_received(self, data: bytes) -> None:
            # Uvicorn's own, plus the count: a head over the limit is refused, not buffered on.
            if self.head_refused:
                return
            if self.reading_head:
                self.head_bytes += len(data)
            self.idle_connections.waiting.pop(self, None)  # busy: no keep-alive timeout
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                if self.head_refused:
                    self._refuse_head()
                else:  # answered, not logged: any client could fill the log with these (Hypercorn is silent too)
                    self.send_400_response("Invalid HTTP request received.")
                return
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                elif self.scope.get("method") != "CONNECT":  # the gateway answers CONNECT (405) and closes
                    self._unsupported_upgrade_warning()
                return
            if self.reading_head and self.head_bytes > MAX_HEAD_BYTES:
                self._refuse_head()

        def on_headers_complete(self) -> None:
            self.reading_head = False
            # The reads that brought the head may have brought some of the body too: the head's own
            # size is worked out only when they add up to more than the limit.
            if self.head_bytes > MAX_HEAD_BYTES and self._parsed_head_size() > MAX_HEAD_BYTES:
                self.head_refused = True
                raise _HeadTooLarge
            self.head_bytes = 0
            # What Uvicorn does here, with a ResponseCycle for the request (not a cycle whose class
            # is changed afterwards: that costs every later attribute lookup on it its fast path).
            parser = self.parser
            scope = self.scope
            http_version = parser.get_http_version()
            scope["method"] = parser.get_method().decode("ascii")
            if http_version != "1.1":
                scope["http_version"] = http_version
            if parser.should_upgrade() and self._should_upgrade():
                return
            url = httptools.parse_url(self.url)
            raw_path = url.path
            path = raw_path.decode("ascii")
            if "%" in path:
                path = urllib.parse.unquote(path)
            root_path = self.root_path
            if root_path:
                scope["path"] = root_path + path
                scope["raw_path"] = root_path.encode("ascii") + raw_path
            else:
                scope["path"] = path
                scope["raw_path"] = raw_path
            scope["query_string"] = url.query or b""
            limit = self.limit_concurrency
            if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
                app = service_unavailable
                self.logger.warning("Exceeded concurrency limit.")
            else:
                app = self.http_app
            previous = self.cycle
            # Uvicorn's arguments, passed by position (`CYCLE_PARAMETERS`): keywords cost a dict per request.
            self.cycle = ResponseCycle(
                scope,
                self.transport,
                self.flow,
                self.logger,
                self.access_logger,
                self.access_log,
                self.server_state.default_headers,
                asyncio.Event(),
                self.expect_100_continue,
                http_version != "1.0" and parser.should_keep_alive(),
                self.on_response_complete,
            )
            if previous is None or previous.response_complete:
                self._start_asgi_task(self.cycle, app)
            else:  # a pipelined request waits for the response before it
                self.flow.pause_reading()
                self.pipeline.appendleft((self.cycle, app))

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self.reading_head = True
            self.head_bytes = 0

        def _unset_keepalive_if_required(self) -> None:
            self.idle_connections.discard(self)

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            self.idle_connections.discard(self)  # (uvicorn leaves its timer to fire after an error)

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            # The task made as the loop would without a task factory: the CPU meter's factory only
            # concerns tasks metered code creates, and this code (a protocol callback) is not metered.
            if self.fresh_context:
                task = asyncio.Task(cycle.run_asgi(app), loop=self.loop, context=contextvars.Context())
            else:
                task = asyncio.Task(cycle.run_asgi(app), loop=self.loop)
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)

        def on_response_complete(self) -> None:
            # Uvicorn's own, with the keep-alive timeout kept by IdleConnections.
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            self.flow.resume_reading()
            if self.pipeline:
                cycle, app = self.pipeline.pop()
                self._start_asgi_task(cycle, app)
            else:
                self.idle_connections.add(self)

        def _parsed_head_size(self) -> int:
            """The head's size, at least (its shortest spelling: as `head_size` counts)."""
            size = len(self.parser.get_method()) + len(self.url) + 14  # the target with its query
            for name, value in self.headers:
                size += len(name) + len(value) + 3
            return size

        def _refuse_head(self) -> None:
            self.head_refused = True
            self.transport.write(_refusal(self.server_state.default_headers))
            self.transport.close()

    HttpToolsProtocol.__qualname__ = "HttpToolsProtocol"
    HttpToolsProtocol.__module__ = __name__
    return HttpToolsProtocol


def head_limited_protocol() -> tuple[type[asyncio.Protocol], bool]:
    """The protocol uvicorn's "auto" would pick (httptools if installed, else h11), held to the limit.

    Also says whether it refuses complete heads over the limit itself; if not, serve the app
    wrapped in `edgeruntime.workers.request_limits.limit_head`.
    """
    try:
        return httptools_protocol(), True
    except ImportError:  # as uvicorn itself: no httptools, h11
        return h11_protocol(), False
