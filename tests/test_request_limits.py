"""413 PAYLOAD_TOO_LARGE while the body streams in, 504 IDLE_TIMEOUT before the response starts, 431 for big heads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edgeruntime.core.context import ExecutionContext
from edgeruntime.core.responses import CorsPolicy
from edgeruntime.core.types import Message, Receive, Scope, Send
from edgeruntime.core.worker_state import default_worker
from edgeruntime.testing import EdgeClient
from edgeruntime.workers.request_limits import (
    MAX_HEAD_BYTES,
    BodyLimit,
    IdleTimeouts,
    declares_no_body,
    head_size,
    limit_head,
)
from tests.probes import environ_for, write_probe

TOO_LARGE = {"code": "PAYLOAD_TOO_LARGE", "message": "Request body is larger than the function's max_request_body_mb"}
IDLE = {"code": "IDLE_TIMEOUT", "message": "Function did not start its response within the request idle timeout"}
ONE_KB_IN_MB = 1024 / (1024 * 1024)


@pytest.fixture(params=["inline", "process"])
def isolation(request: pytest.FixtureRequest) -> str:
    # The clients below run with sandbox none: the probe records its events in a file of the test's.
    value: str = request.param
    return value


async def chunks(count: int, size: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield b"x" * size


async def test_declared_oversize_body_is_413_before_the_function_runs(functions_dir: Path, isolation: str) -> None:
    events = write_probe(functions_dir)
    async with EdgeClient(
        functions_dir,
        isolation=isolation,
        sandbox="none",
        environ=environ_for(events),
        limits={"max_request_body_mb": ONE_KB_IN_MB},
    ) as client:
        r = await client.invoke("probe", params={"echo": 1}, content=b"x" * 2000)
        assert r.status_code == 413
        assert r.json() == TOO_LARGE
        assert r.headers["sb-error-code"] == "PAYLOAD_TOO_LARGE"
        assert client.app.functions["probe"].boots == 0
        r = await client.invoke("probe", params={"echo": 1}, content=b"x" * 1024)
        assert r.status_code == 200
        assert r.json()["size"] == 1024


async def test_streamed_oversize_body_is_413_while_streaming(functions_dir: Path, isolation: str) -> None:
    events = write_probe(functions_dir)
    async with EdgeClient(
        functions_dir,
        isolation=isolation,
        sandbox="none",
        environ=environ_for(events),
        limits={"max_request_body_mb": ONE_KB_IN_MB},
    ) as client:
        # No content-length: chunked. 50 chunks of 100 bytes: cut at the 11th, never buffered whole.
        url = "/functions/v1/probe?echo=1"
        headers = client.headers_for("service_role")
        r = await client.http.post(url, content=chunks(50, 100), headers=headers)
        assert r.status_code == 413
        assert r.json() == TOO_LARGE
        # The run records why: the limit, never the exception class's docstring.
        assert client.dashboard.last_invocations["probe"].error == "request body of probe is larger than 1024 bytes"
        r = await client.http.post(url, content=chunks(10, 100), headers=headers)
        assert r.status_code == 200
        assert r.json()["size"] == 1000


async def test_no_response_within_idle_timeout_is_504(functions_dir: Path, isolation: str) -> None:
    events = write_probe(functions_dir)
    async with EdgeClient(
        functions_dir,
        isolation=isolation,
        sandbox="none",
        environ=environ_for(events),
        limits={"request_idle_timeout_sec": 0.5},
    ) as client:
        await client.invoke("probe")
        started = time.monotonic()
        r = await client.invoke("probe", params={"sleep": 30})
        assert r.status_code == 504
        assert r.json() == IDLE
        assert r.headers["sb-error-code"] == "IDLE_TIMEOUT"
        assert time.monotonic() - started < 10
        # A response that started in time may take longer than the idle timeout to finish.
        r = await client.invoke("probe", params={"stream": 0.8})
        assert r.status_code == 200
        assert r.text == "started finished"
        # The worker was not harmed.
        assert (await client.invoke("probe")).status_code == 200


@pytest.mark.e2e
def test_real_server_idle_timeout_and_body_limit(functions_dir: Path) -> None:
    import httpx

    from tests.helpers import SERVICE_ROLE, ServerProcess

    write_probe(functions_dir)
    limits = ("--limit", "request_idle_timeout_sec=0.5", "--limit", f"max_request_body_mb={ONE_KB_IN_MB}")
    with (
        ServerProcess(functions_dir, "--no-watch", *limits) as server,
        httpx.Client(headers=SERVICE_ROLE, timeout=30) as http,
    ):
        r = http.get(server.url("probe"), params={"sleep": 30})
        assert r.status_code == 504
        assert r.json() == IDLE
        r = http.post(server.url("probe"), params={"echo": 1}, content=b"x" * 5000)
        assert r.status_code == 413
        assert r.json() == TOO_LARGE
        r = http.post(server.url("probe"), params={"echo": 1}, content=b"x" * 100)
        assert r.status_code == 200
        assert r.json()["size"] == 100


async def test_one_timer_expires_only_the_requests_still_waiting() -> None:
    timeouts = IdleTimeouts(0.4)
    loop = asyncio.get_running_loop()

    def request(function: str) -> tuple[ExecutionContext, asyncio.Task[None]]:
        ctx = ExecutionContext(function, default_worker())
        task = loop.create_task(asyncio.sleep(5))
        timeouts.start(ctx, task)
        return ctx, task

    finished_ctx, finished = request("finished")
    answered_ctx, answered = request("answered")
    waiting_ctx, waiting = request("waiting")
    timeouts.finish(finished_ctx)  # ended before the timeout
    answered_ctx.response_started = True  # its response started in time
    await asyncio.sleep(0.2)
    late_ctx, late = request("late")  # arrived later: its deadline is 0.6, the others' 0.4
    await asyncio.sleep(0.3)
    assert waiting.cancelled() and waiting_ctx.idle_expired
    assert not (finished.done() or answered.done() or late.done())
    assert not (finished_ctx.idle_expired or answered_ctx.idle_expired or late_ctx.idle_expired)
    await asyncio.sleep(0.3)
    assert late.cancelled() and late_ctx.idle_expired
    assert timeouts.waiting == {}  # nothing kept for requests that ended or answered
    for task in (finished, answered):
        task.cancel()
    timeouts.close()


# -- the request head (431) ------------------------------------------------------------------------


def scope_with(headers: list[tuple[bytes, bytes]], kind: str = "http") -> dict[str, Any]:
    return {
        "type": kind,
        "method": "GET",
        "path": "/functions/v1/hello",
        "raw_path": b"/functions/v1/hello",
        "query_string": b"a=1",
        "headers": headers,
    }


def test_head_size_never_counts_more_than_the_head_was() -> None:
    headers = [(b"host", b"127.0.0.1:54321"), (b"authorization", b"Bearer " + b"t" * 300), (b"x-empty", b"")]
    raw = b"GET /functions/v1/hello?a=1 HTTP/1.1\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n"
    assert len(raw) - len(headers) <= head_size(scope_with(headers)) <= len(raw)


async def test_limit_head_answers_431_before_the_app_sees_the_request() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    limited = limit_head(app)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request"}

    big = [(b"x-big", b"a" * MAX_HEAD_BYTES)]
    many = [(b"x-%d" % i, b"") for i in range(MAX_HEAD_BYTES // 4)]
    for headers in (big, many):
        sent.clear()
        await limited(scope_with(headers), receive, send)
        assert sent[0] == {
            "type": "http.response.start",
            "status": 431,
            "headers": [(b"content-length", b"0"), (b"connection", b"close")],
        }
        sent.clear()
        await limited(scope_with(headers, "websocket"), receive, send)  # the same, as a WebSocket denial
        assert [(m["type"], m.get("status")) for m in sent] == [
            ("websocket.http.response.start", 431),
            ("websocket.http.response.body", None),
        ]
    assert seen == []
    await limited(scope_with([(b"x-fits", b"a" * (MAX_HEAD_BYTES - 100))]), receive, send)
    await limited({"type": "lifespan"}, receive, send)
    assert seen == ["http", "lifespan"]


async def test_limit_head_s_431_carries_the_gateways_cors_headers() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("never reached")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request"}

    limited = limit_head(app, CorsPolicy(("https://app.example.com",)).for_scope)
    headers = [(b"origin", b"https://app.example.com"), (b"x-big", b"a" * MAX_HEAD_BYTES)]
    await limited(scope_with(headers), receive, send)
    assert sent[0]["status"] == 431
    assert (b"access-control-allow-origin", b"https://app.example.com") in sent[0]["headers"]
    sent.clear()
    await limited({**scope_with(headers), "path": "/_edgeruntime/"}, receive, send)  # not a function route
    assert sent[0]["status"] == 431
    assert not any(name.startswith(b"access-control-") for name, _ in sent[0]["headers"])


async def test_body_limit_notes_a_client_gone_before_the_response() -> None:
    messages: list[Message] = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.disconnect"}]

    async def receive() -> Message:
        return messages.pop(0)

    ctx = ExecutionContext("fn", default_worker())
    body = BodyLimit(receive, "fn", 100, ctx)
    await body.receive()
    assert not ctx.client_disconnected
    await body.receive()
    assert ctx.client_disconnected
    # After the response started, a disconnect is the normal end of the request.
    late = ExecutionContext("fn", default_worker(), response_started=True)
    messages.append({"type": "http.disconnect"})
    await BodyLimit(receive, "fn", 100, late).receive()
    assert not late.client_disconnected


@pytest.mark.parametrize(
    ("version", "headers", "none"),
    [
        ("1.1", [], True),
        ("1.0", [(b"host", b"x")], True),
        ("1.1", [(b"content-length", b"0")], True),
        ("1.1", [(b"Content-Length", b" 0 ")], True),
        ("1.1", [(b"content-length", b"10")], False),
        ("1.1", [(b"content-length", b"00x")], False),
        ("1.1", [(b"content-length", b"0"), (b"transfer-encoding", b"chunked")], False),
        ("1.1", [(b"transfer-encoding", b"chunked")], False),
        ("2", [], False),  # HTTP/2 may send data without declaring its length
    ],
)
def test_declares_no_body(version: str, headers: list[tuple[bytes, bytes]], none: bool) -> None:
    assert declares_no_body({"type": "http", "http_version": version, "headers": headers}) is none
