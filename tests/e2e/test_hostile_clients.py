"""What a hostile client sends, over a real socket, to both servers: raw HTTP, byte for byte."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import (
    CREDENTIALS_ECHO,
    KEYS,
    ServerProcess,
    forged_token,
    raw_exchange,
    status_of,
    wait_until,
    write_function,
)

pytestmark = pytest.mark.e2e

READER = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve

async def handler(req: Request) -> JSONResponse:
    return JSONResponse({"size": len(await req.body())})

serve(handler)
"""


IGNORER = """
import asyncio
from starlette.responses import JSONResponse
from edgeruntime import serve


async def handler(req):
    await asyncio.sleep(0.2)  # the body queues up meanwhile
    return JSONResponse({"read": False})

serve(handler)
"""


LATE = """
import asyncio
from starlette.responses import Response
from edgeruntime import EdgeRuntime, serve


async def after() -> None:
    await asyncio.sleep(0.1)
    print("background work done")


async def handler(req):
    await asyncio.sleep(0.5)  # neither reads the body nor streams: the client leaves meanwhile
    EdgeRuntime.wait_until(after())
    print("answering after the client left")
    return Response("late")

serve(handler)
"""


class Served:
    """A running server and the file its credentials echo writes a line to on every run."""

    def __init__(self, server: ServerProcess, runs: Path) -> None:
        self.server = server
        self.runs = runs

    @property
    def port(self) -> int:
        return self.server.port

    def ran(self) -> int:
        return self.runs.read_text().count("ran") if self.runs.exists() else 0

    def log_after(self, mark: int) -> str:
        return self.server.output[mark:]


# Hypercorn with workers inline, Uvicorn with a process per worker: each request path once.
@pytest.fixture(scope="module", params=[("hypercorn", "inline"), ("uvicorn", "process")], ids=lambda p: p[0])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server_kind, isolation = request.param
    root = tmp_path_factory.mktemp(server_kind)
    functions = root / "project" / "functions"
    write_function(functions, "checked", CREDENTIALS_ECHO)
    write_function(functions, "open", CREDENTIALS_ECHO)
    write_function(functions, "reader", READER)
    write_function(functions, "ignorer", IGNORER)
    (functions.parent / "config.toml").write_text(
        "[functions.open]\nverify_jwt = false\n[functions.ignorer]\nverify_jwt = false\n"
    )
    runs = root / "runs.txt"
    # The functions count their runs in a file outside their directory, named by the server's env:
    # no sandbox, which would hide both from a worker process (what this tests is the gateway).
    args = ("--no-watch", "--server", server_kind, "--isolation", isolation, "--sandbox", "none")
    with ServerProcess(functions, *args, env={"RUNS_FILE": str(runs)}) as server:
        yield Served(server, runs)


def request(method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers)]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@pytest.mark.parametrize("function", ["checked", "open"])
def test_a_repeated_credential_header_on_the_wire_is_400_and_no_function_runs(served: Served, function: str) -> None:
    before = served.ran()
    forged, anon = f"Bearer {forged_token()}", f"Bearer {KEYS.anon_key}"
    for headers, header in [
        ([("Authorization", forged), ("Authorization", anon)], "Authorization"),
        ([("authorization", anon), ("AUTHORIZATION", forged)], "Authorization"),
        ([("apikey", forged_token()), ("Authorization", anon), ("apikey", KEYS.publishable_key)], "apikey"),
    ]:
        response = raw_exchange(served.port, request("POST", f"/functions/v1/{function}", headers, b"{}"))
        assert status_of(response) == 400, response[:200]
        assert b"sb-error-code: DUPLICATE_AUTH_HEADER" in response
        body = b'{"code":"DUPLICATE_AUTH_HEADER","message":"Request has more than one %s header"}' % header.encode()
        assert response.endswith(body)
    assert served.ran() == before  # the function never ran
    # One of each: the function runs and reads the one that was checked.
    response = raw_exchange(served.port, request("GET", f"/functions/v1/{function}", [("Authorization", anon)]))
    assert status_of(response) == 200 and f'"authorization":["{anon}"]'.encode() in response
    assert served.ran() == before + 1


@pytest.mark.parametrize(
    ("name", "head"),
    [
        ("1MB-header", b"X-Big: " + b"a" * 1_000_000 + b"\r\n"),
        ("20000-headers", b"".join(b"X-%d: v\r\n" % i for i in range(20_000))),
        ("20KB-header", b"X-Big: " + b"a" * 20_000 + b"\r\n"),
        ("huge-token", b"Authorization: Bearer " + b"e" * 40_000 + b"\r\n"),
    ],
)
def test_a_head_over_16_kib_is_431(served: Served, name: str, head: bytes) -> None:
    start = len(served.server.output)
    data = b"GET /functions/v1/open HTTP/1.1\r\nHost: 127.0.0.1\r\n" + head + b"Connection: close\r\n\r\n"
    response = raw_exchange(served.port, data)
    assert status_of(response) == 431, response[:200]
    assert b"connection: close" in response.lower()
    fits = b"GET /functions/v1/open HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Fill: " + b"a" * 15_000 + b"\r\n"
    assert status_of(raw_exchange(served.port, fits + b"Connection: close\r\n\r\n")) == 200
    assert "Traceback" not in served.log_after(start)


def test_connect_and_other_methods_on_health(served: Served) -> None:
    start = len(served.server.output)
    response = raw_exchange(served.port, b"CONNECT /_internal/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", timeout=10)
    assert status_of(response) == 405, response
    assert b"allow: GET, HEAD\r\n" in response
    for method in ("POST", "DELETE", "OPTIONS"):
        response = raw_exchange(served.port, request(method, "/_internal/health", []))
        assert status_of(response) == 405
    response = raw_exchange(served.port, request("HEAD", "/_internal/health", []))
    assert status_of(response) == 200 and response.endswith(b"\r\n\r\n")  # no body
    base = f"http://127.0.0.1:{served.port}"
    assert httpx.get(f"{base}/_internal/health").json() == {"message": "ok"}
    time.sleep(0.2)
    log = served.log_after(start)
    assert "Traceback" not in log and "Error" not in log and "Unsupported upgrade" not in log, log


def runs_of(port: int, function: str) -> list[dict[str, object]]:
    """The runs of `function` in the history, once there is one (it is written in batches)."""
    base = f"http://127.0.0.1:{port}"
    runs: list[dict[str, object]] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not runs:
        time.sleep(0.2)
        runs = httpx.get(f"{base}/_edgeruntime/api/runs", params={"function": function}).json()["runs"]
    return runs


def test_a_client_gone_mid_body_is_recorded_as_a_disconnect(served: Served) -> None:
    start = len(served.server.output)
    data = b"POST /functions/v1/reader HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
    data += f"Authorization: Bearer {KEYS.anon_key}\r\n\r\n".encode() + b"x" * 1000
    raw_exchange(served.port, data, timeout=0.5)  # sends a part, waits a little, hangs up
    runs = runs_of(served.port, "reader")
    assert [(r["http_status"], r["status"], r["error"]) for r in runs] == [
        (499, "failed", "client disconnected before the response")
    ]
    metrics = httpx.get(f"http://127.0.0.1:{served.port}/_internal/metrics").text
    assert 'edgeruntime_requests_total{function="reader",status="499",trigger="http"} 1.0' in metrics
    log = served.log_after(start)
    assert "POST /functions/v1/reader 499" in log
    assert "raised" not in log and "Traceback" not in log


@pytest.mark.parametrize("isolation", ["inline", "process"])
@pytest.mark.parametrize("server_kind", ["hypercorn", "uvicorn"])
def test_a_client_gone_before_a_late_answer_is_recorded_as_a_disconnect(
    tmp_path: Path, server_kind: str, isolation: str
) -> None:
    """A function that neither reads the body nor streams, whose client leaves while it works:
    its answer goes into a closed connection, and the request is a 499 all the same; the function
    and its background work go on to their end."""
    functions = tmp_path / "functions"
    write_function(functions, "late", LATE)
    args = ("--no-watch", "--no-verify-jwt", "--server", server_kind, "--isolation", isolation)
    with ServerProcess(functions, *args) as server:
        assert raw_exchange(server.port, request("GET", "/functions/v1/late", []), timeout=0.1) == b""  # gone
        runs = runs_of(server.port, "late")
        assert [(r["http_status"], r["status"], r["error"]) for r in runs] == [
            (499, "failed", "client disconnected before the response")
        ]
        metrics = httpx.get(f"{server.base_url}/_internal/metrics").text
        assert 'edgeruntime_requests_total{function="late",status="499",trigger="http"} 1.0' in metrics
        wait_until(lambda: "background work done" in server.output, 10, "the function's background work")
        log = server.output
        assert "GET /functions/v1/late 499" in log and "answering after the client left" in log
        assert "Traceback" not in log and "raised" not in log and "ERROR" not in log, log
        # The next client of the same worker is answered as ever.
        assert httpx.get(server.url("late"), timeout=10).text == "late"


def test_a_rebinding_host_on_the_wire_is_403(served: Served) -> None:
    evil = [("Host", "rebind.evil.example:54321"), ("Origin", "http://rebind.evil.example:54321")]
    for method, path in (("GET", "/_internal/metrics"), ("POST", "/_edgeruntime/api/failed/retry-all")):
        data = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in evil) + "Connection: close\r\n\r\n"
        assert status_of(raw_exchange(served.port, data.encode())) == 403
        assert status_of(raw_exchange(served.port, request(method, path, []))) == 200


def test_a_body_the_function_leaves_unread_does_not_hold_the_request_open(served: Served) -> None:
    """A large chunked body the function answers without reading: each request ends (its access
    line is written), rather than waiting for ever with its connection open (Hypercorn queues ten
    messages of a body; the end of its response waited to queue the client's leaving behind them)."""
    start = len(served.server.output)
    chunk = b"10000\r\n" + b"a" * 0x10000 + b"\r\n"
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
            sock.sendall(request("POST", "/functions/v1/ignorer", [("Transfer-Encoding", "chunked")]))
            with contextlib.suppress(OSError):  # the server may stop reading once it has answered
                for _ in range(80):  # 5 MiB
                    sock.sendall(chunk)
                sock.sendall(b"0\r\n\r\n")
            assert sock.recv(12) == b"HTTP/1.1 200"
    deadline = time.monotonic() + 15
    while served.log_after(start).count("POST /functions/v1/ignorer 200") < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert served.log_after(start).count("POST /functions/v1/ignorer 200") == 3, served.log_after(start)
