"""The gateway: routing, the runtime's own responses, execution ids (through EdgeClient)."""

from __future__ import annotations

import logging
import urllib.parse
from pathlib import Path

import pytest

from edgeruntime.config.settings import Settings
from edgeruntime.core.types import Message, Receive, Scope, Send
from edgeruntime.exceptions import JobsError
from edgeruntime.gateway.app import EXECUTION_ID_HEADER, EdgeApp
from edgeruntime.gateway.extensions import Extension
from edgeruntime.testing import EdgeClient
from tests.helpers import KEYS, write_function

ECHO = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve

@serve
async def handler(req: Request) -> JSONResponse:
    return JSONResponse({"path": req.url.path, "query": req.url.query, "method": req.method,
                         "root_path": req.scope.get("root_path")})
"""


async def test_function_sees_path_with_its_name(functions_dir: Path) -> None:
    write_function(functions_dir, "echo", ECHO)
    async with EdgeClient(functions_dir) as client:
        r = await client.invoke("echo", method="GET", path="/sub/path", params={"q": "1"})
        assert r.status_code == 200
        assert r.json() == {"path": "/echo/sub/path", "query": "q=1", "method": "GET", "root_path": ""}
        r = await client.invoke("echo", method="GET")
        assert r.json()["path"] == "/echo"


RAW_PATH_ECHO = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve

@serve
async def handler(req: Request) -> JSONResponse:
    return JSONResponse({"path": req.scope["path"], "raw_path": req.scope["raw_path"].decode()})
"""


@pytest.mark.parametrize(
    ("url", "raw_path"),
    [
        ("/functions/v1/echo/x", "/echo/x"),
        ("/functions/v1/%65cho/%78", "/%65cho/%78"),
        # Encoded in the prefix: the function's raw path was cut at the prefix's decoded length.
        ("/%66unctions/v1/echo/x", "/echo/x"),
        ("/functions/%76%31/echo/%61dmin", "/echo/%61dmin"),
    ],
)
async def test_the_functions_raw_path_is_its_path_as_the_client_sent_it(
    functions_dir: Path, url: str, raw_path: str
) -> None:
    write_function(functions_dir, "echo", RAW_PATH_ECHO)
    async with EdgeClient(functions_dir) as client:
        r = await client.request("GET", url, headers=client.headers_for("service_role"))
        assert r.status_code == 200
        assert r.json()["raw_path"] == raw_path
        assert r.json()["path"] == urllib.parse.unquote(raw_path)


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
async def test_methods(functions_dir: Path, method: str) -> None:
    write_function(functions_dir, "echo", ECHO)
    async with EdgeClient(functions_dir) as client:
        r = await client.invoke("echo", method=method)
        assert r.status_code == 200


async def test_unknown_method_is_405(hello_dir: Path) -> None:
    async with EdgeClient(hello_dir) as client:
        r = await client.invoke("hello", method="TRACE")
        assert r.status_code == 405


async def test_unknown_function_is_404(hello_dir: Path) -> None:
    async with EdgeClient(hello_dir) as client:
        r = await client.invoke("nope")
        assert r.status_code == 404
        assert r.text == "Function not found"
        assert r.headers["content-type"].startswith("text/plain")
        assert r.headers["sb-error-code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    "url",
    [
        "/functions/v1/",
        "/functions/v1/..",
        "/functions/v1/../hello",
        "/functions/v1/%2e%2e/hello",
        "/functions/v1/hello%2Fx",
        "/functions/v1/hel%00lo",
        "/functions/v1/_shared",
        "/functions/v1/.hidden",
        "/functions/v1/" + "a" * 300,
        "/functions/v1//hello",
        "/functions/v1/HELLO",
        "/functions/v1/hell%D0%BE",  # a Cyrillic o
        "/functions/v1/hello%E2%80%8B",  # a zero-width space
        "/functions/v1/_edgeruntime/",  # the dashboard and the health check are not functions
        "/functions/v1/_internal/health",
    ],
)
async def test_malformed_names_are_404(hello_dir: Path, url: str) -> None:
    (hello_dir / "_shared").mkdir()
    (hello_dir / "_shared" / "index.py").write_text("raise SystemExit('must never be imported')\n")
    (hello_dir / ".hidden").mkdir()
    (hello_dir / ".hidden" / "index.py").write_text("raise SystemExit('must never be imported')\n")
    async with EdgeClient(hello_dir) as client:
        r = await client.request("GET", url, headers=client.headers_for("service_role"))
        assert r.status_code == 404


@pytest.mark.parametrize(
    ("url", "logged"),
    [
        (
            "/functions/v1/hello/%0d%0a12:00:00.000 INFO    [admin] forged",
            "/functions/v1/hello/%0D%0A12:00:00.000 INFO    [admin] forged",
        ),
        ("/functions/v1/nope%0aforged", "/functions/v1/nope%0Aforged"),
        ("/functions/v1/hello/%1b[2J", "/functions/v1/hello/%1B[2J"),
        ("/functions/v1/hello/%09", "/functions/v1/hello/%09"),
        ("/functions/v1/hello/%7f", "/functions/v1/hello/%7F"),
        ("/functions/v1/hello/%c2%85", "/functions/v1/hello/%C2%85"),  # NEL: a line break to some terminals
    ],
)
async def test_control_characters_in_a_path_are_404_and_never_reach_a_log_line(
    hello_dir: Path, url: str, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The server decodes the path: a line break in it would forge lines in the server's log
    # (the access line; the function's own lines about its request).
    async with EdgeClient(hello_dir) as client:
        r = await client.request("GET", url, headers=client.headers_for("service_role"))
        assert r.status_code == 404
        assert r.text == "Function not found"
    (access,) = [rec for rec in caplog.records if rec.name == "edgeruntime.access"]
    assert access.getMessage().startswith(f"GET {logged} 404 ")
    assert access.path == logged  # type: ignore[attr-defined]
    assert access.function is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "path"),
    [("/functions/v1/hello/caf%C3%A9", "/hello/café"), ("/functions/v1/hello/a%20b%C2%A0c", "/hello/a b\xa0c")],
)
async def test_printable_unicode_and_spaces_in_a_path_are_served(hello_dir: Path, url: str, path: str) -> None:
    async with EdgeClient(hello_dir) as client:
        r = await client.request("GET", url, headers=client.headers_for("service_role"))
        assert r.status_code == 200
        assert r.json()["path"] == path


async def test_health(hello_dir: Path) -> None:
    async with EdgeClient(hello_dir) as client:
        r = await client.request("GET", "/_internal/health")
        assert r.status_code == 200
        assert r.json() == {"message": "ok"}


async def test_execution_id_header_and_log_lines(hello_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with EdgeClient(hello_dir) as client:
        r1 = await client.invoke("hello")
        r2 = await client.invoke("hello")
    id1 = r1.headers["x-edgeruntime-execution-id"]
    assert id1 != r2.headers["x-edgeruntime-execution-id"]
    access = [rec for rec in caplog.records if rec.name == "edgeruntime.access"]
    assert any(
        getattr(rec, "execution_id", None) == id1 and "POST /functions/v1/hello 200" in rec.getMessage()
        for rec in access
    )


async def test_boot_error_is_503_for_that_function_only(hello_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_function(hello_dir, "broken", "def handler(:\n")
    write_function(hello_dir, "badimport", "import does_not_exist_anywhere\n")
    write_function(hello_dir, "noserve", "x = 1\n")
    async with EdgeClient(hello_dir) as client:
        for name in ("broken", "badimport", "noserve"):
            r = await client.invoke(name)
            assert r.status_code == 503, name
            assert r.json() == {"code": "BOOT_ERROR", "message": "Worker failed to boot (please check logs)"}
            assert r.headers["sb-error-code"] == "BOOT_ERROR"
        assert (await client.invoke("hello")).status_code == 200
    assert "SyntaxError" in caplog.text
    assert "ModuleNotFoundError" in caplog.text
    assert "did not call serve(handler)" in caplog.text


async def test_boot_error_is_retried_on_next_request(hello_dir: Path) -> None:
    path = write_function(hello_dir, "flaky", "def handler(:\n")
    async with EdgeClient(hello_dir) as client:
        assert (await client.invoke("flaky")).status_code == 503
        path.write_text(
            path.read_text().replace("def handler(:\n", "") + (hello_dir / "hello" / "index.py").read_text()
        )
        assert (await client.invoke("flaky")).status_code == 200


async def test_top_level_exception_is_worker_error(hello_dir: Path) -> None:
    write_function(hello_dir, "crash", "raise RuntimeError('boom at import')\n")
    async with EdgeClient(hello_dir) as client:
        r = await client.invoke("crash")
        assert r.status_code == 500
        assert r.json() == {"code": "WORKER_ERROR", "message": "Function exited due to an error (please check logs)"}
        assert r.headers["sb-error-code"] == "WORKER_ERROR"


async def test_handler_raising_is_500_text(hello_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_function(
        hello_dir,
        "raises",
        """
        from edgeruntime import serve

        async def handler(req):
            raise ValueError("handler exploded")

        serve(handler)
    """,
    )
    async with EdgeClient(hello_dir) as client:
        r = await client.invoke("raises")
        assert r.status_code == 500
        assert r.text == "Internal Server Error"
        assert r.headers["content-type"].startswith("text/plain")
        assert (await client.invoke("hello")).status_code == 200
    assert "handler exploded" in caplog.text
    assert "Traceback" in caplog.text


async def test_non_response_is_502(hello_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_function(
        hello_dir,
        "dicty",
        """
        from edgeruntime import serve

        @serve
        async def handler(req):
            return {"not": "a response"}
    """,
    )
    async with EdgeClient(hello_dir) as client:
        r = await client.invoke("dicty")
        assert r.status_code == 502
        assert r.text == "Bad Gateway"
    errors = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert any("dicty" in m and "builtins.dict" in m for m in errors)


async def test_disabled_function_is_404(hello_dir: Path) -> None:
    (hello_dir.parent / "config.toml").write_text("[functions.hello]\nenabled = false\n")
    async with EdgeClient(hello_dir) as client:
        assert (await client.invoke("hello")).status_code == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "BREW"])
async def test_health_answers_get_and_head_only(hello_dir: Path, method: str) -> None:
    async with EdgeClient(hello_dir) as client:
        assert (await client.request("HEAD", "/_internal/health")).status_code == 200
        r = await client.request(method, "/_internal/health")
        assert r.status_code == 405
        assert r.text == "Method Not Allowed"
        assert r.headers["allow"] == "GET, HEAD"
        assert r.headers["sb-error-code"] == "METHOD_NOT_ALLOWED"
        # Nothing is tunnelled: a CONNECT is answered and its connection closed.
        assert (r.headers.get("connection") == "close") is (method == "CONNECT")


@pytest.mark.parametrize("path", ["/functions/v1/hello", "/_edgeruntime/", "/_internal/metrics", "/elsewhere"])
async def test_connect_is_405_and_closes_the_connection(hello_dir: Path, path: str) -> None:
    async with EdgeClient(hello_dir) as client:
        r = await client.request("CONNECT", path, headers=client.headers_for("service_role"))
        assert r.status_code == 405
        assert r.headers["allow"] == "GET, POST, PUT, PATCH, DELETE, OPTIONS, HEAD"
        assert r.headers["connection"] == "close"
        r = await client.request("TRACE", "/functions/v1/hello", headers=client.headers_for("service_role"))
        assert (r.status_code, r.headers["allow"]) == (405, "GET, POST, PUT, PATCH, DELETE, OPTIONS, HEAD")
        assert "connection" not in r.headers


READER = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve

async def handler(req: Request) -> JSONResponse:
    return JSONResponse({"size": len(await req.body())})

serve(handler)
"""

SYNC_READER = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve

def handler(req: Request) -> JSONResponse:
    return JSONResponse({"sync": True})

serve(handler)
"""


def partial_body_then_gone(name: str) -> tuple[Scope, Receive, Send, list[Message]]:
    """A request to `name` whose client sends a part of its body and disconnects."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"/functions/v1/{name}",
        "raw_path": f"/functions/v1/{name}".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:54321"),
            (b"content-length", b"1000"),
            (b"authorization", f"Bearer {KEYS.anon_key}".encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 54321),
    }
    messages: list[Message] = [
        {"type": "http.request", "body": b"x" * 100, "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    return scope, receive, send, sent


async def test_a_client_gone_mid_body_is_recorded_as_a_disconnect(
    hello_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await check_client_gone_mid_body(hello_dir, caplog, "inline")  # process isolation: tests/test_process.py


async def check_client_gone_mid_body(hello_dir: Path, caplog: pytest.LogCaptureFixture, isolation: str) -> None:
    write_function(hello_dir, "reader", READER)
    write_function(hello_dir, "syncreader", SYNC_READER)
    async with EdgeClient(hello_dir, isolation=isolation) as client:
        for name in ("reader", "syncreader"):
            scope, receive, send, _ = partial_body_then_gone(name)
            await client.app.handle_http(scope, receive, send)
        await client.jobs.history.flush()
        runs = (await client.request("GET", "/_edgeruntime/api/runs")).json()["runs"]
        assert sorted((r["function"], r["http_status"], r["error"]) for r in runs) == [
            ("reader", 499, "client disconnected before the response"),
            ("syncreader", 499, "client disconnected before the response"),
        ]
        metrics = (await client.request("GET", "/_internal/metrics")).text
        assert 'edgeruntime_requests_total{function="reader",status="499",trigger="http"} 1.0' in metrics
        assert (await client.invoke("reader", content=b"abc")).json() == {"size": 3}  # and it keeps serving
    assert "raised" not in caplog.text
    assert "Traceback" not in caplog.text
    access = [rec.getMessage() for rec in caplog.records if rec.name == "edgeruntime.access"]
    assert any("POST /functions/v1/reader 499" in line for line in access)


LATE = """
import pathlib
from starlette.background import BackgroundTask
from starlette.responses import Response
from edgeruntime import serve

def note() -> None:
    (pathlib.Path(__file__).parent / "background-ran").touch()

async def handler(req):
    return Response("late", background=BackgroundTask(note))

serve(handler)
"""


async def test_an_answer_the_server_says_reached_no_one_is_recorded_as_a_disconnect(
    hello_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The server raises OSError for the start of the response (its client has gone, as the
    servers of `edgeruntime serve` say): 499, and the function is not told (its response's
    background runs); the body goes to the server, which drops it. (Process isolation, and the
    servers themselves: tests/e2e/test_hostile_clients.py.)"""
    write_function(hello_dir, "late", LATE)
    async with EdgeClient(hello_dir) as client:
        scope, receive, _, _ = partial_body_then_gone("late")
        scope["method"] = "GET"
        scope["headers"] = [(key, value) for key, value in scope["headers"] if key != b"content-length"]
        tried: list[str] = []

        async def send(message: Message) -> None:
            tried.append(message["type"])
            if message["type"] == "http.response.start":
                assert message["headers"][-1][0] == EXECUTION_ID_HEADER
                raise ConnectionResetError("the client disconnected")

        await client.app.handle_http(scope, receive, send)
        assert tried == ["http.response.start", "http.response.body"]
        await client.jobs.history.flush()
        runs = (await client.request("GET", "/_edgeruntime/api/runs")).json()["runs"]
        assert [(r["function"], r["http_status"], r["error"]) for r in runs] == [
            ("late", 499, "client disconnected before the response")
        ]
        metrics = (await client.request("GET", "/_internal/metrics")).text
        assert 'edgeruntime_requests_total{function="late",status="499",trigger="http"} 1.0' in metrics
        assert (hello_dir / "late" / "background-ran").exists()
        assert (await client.invoke("late")).text == "late"  # and it keeps serving
    assert "raised" not in caplog.text and "Traceback" not in caplog.text
    access = [rec.getMessage() for rec in caplog.records if rec.name == "edgeruntime.access"]
    assert any("GET /functions/v1/late 499" in line for line in access)


# The function's own open() (or, for `boot`, the server's read of index.py) failing with EMFILE
# while a marker file exists: what a server at its descriptor limit meets.
EXHAUSTED_AT_BOOT = """
import errno
import pathlib
from starlette.responses import JSONResponse
from edgeruntime import serve

if (pathlib.Path(__file__).parent / "exhausted").exists():
    raise OSError(errno.EMFILE, "Too many open files", __file__)

serve(lambda req: JSONResponse({"booted": True}))
"""
EXHAUSTED_IN_HANDLER = """
import errno
import pathlib
from starlette.responses import JSONResponse
from edgeruntime import serve

class ConnectError(Exception):
    pass

@serve
async def handler(req):
    if (pathlib.Path(__file__).parent / "exhausted").exists():
        try:
            raise OSError(errno.EMFILE, "Too many open files")
        except OSError as exc:
            raise ConnectError("cannot connect") from exc  # as an HTTP client wraps it
    return JSONResponse({"served": True})
"""
RESOURCE_EXHAUSTED = {
    "code": "RESOURCE_EXHAUSTED",
    "message": "Server is out of file descriptors (please retry shortly)",
}


@pytest.mark.parametrize("where", ["boot", "handler"])
async def test_out_of_file_descriptors_is_503_not_a_boot_error_or_a_500_and_passes(
    functions_dir: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], where: str
) -> None:
    await check_exhaustion_is_503(functions_dir, caplog, capfd, "inline", where)  # process: tests/test_process.py


async def check_exhaustion_is_503(
    functions_dir: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], isolation: str, where: str
) -> None:
    """A function out of file descriptors (at boot, in its handler) gets 503, one line, and recovers."""
    source = EXHAUSTED_AT_BOOT if where == "boot" else EXHAUSTED_IN_HANDLER
    marker = write_function(functions_dir, "fn", source).parent / "exhausted"
    marker.touch()
    async with EdgeClient(functions_dir, isolation=isolation) as client:
        for _ in range(3):
            r = await client.invoke("fn")
            assert (r.status_code, r.json()) == (503, RESOURCE_EXHAUSTED)
            assert (r.headers["sb-error-code"], r.headers["retry-after"]) == ("RESOURCE_EXHAUSTED", "1")
        supervisor = client.app.functions["fn"]
        assert supervisor.boot_error is None  # not held against the function (the dashboard shows boot errors)
        marker.unlink()  # descriptors free again
        r = await client.invoke("fn")
        assert r.status_code == 200, r.text
    # A handler runs in the worker process under process isolation: its lines are that process's output.
    logged = caplog.text + capfd.readouterr().err
    exhausted = [line for line in logged.splitlines() if "out of file descriptors" in line]
    assert len(exhausted) == 1, exhausted  # one line a second at most, no traceback
    assert "fn" in exhausted[0] and "EMFILE" in exhausted[0]
    assert "Traceback" not in logged and "raised" not in logged


async def test_jobs_enqueued_in_worker_processes_go_to_the_extension_that_serves_them(hello_dir: Path) -> None:
    """A function in a worker process holds no store: its enqueue reaches the app, which hands it on."""
    app = EdgeApp(Settings.build(hello_dir, watch=False))
    with pytest.raises(JobsError, match="no jobs store is running"):
        await app.enqueue("hello", {"n": 1})
    queued: list[tuple[str, object, float, int | None, str | None]] = []

    class Queue(Extension):
        async def take(
            self,
            function: str,
            payload: object = None,
            *,
            delay: float = 0,
            max_attempts: int | None = None,
            idempotency_key: str | None = None,
        ) -> int:
            queued.append((function, payload, delay, max_attempts, idempotency_key))
            return len(queued)

        def __init__(self) -> None:
            self.enqueue = self.take

    app.add_extension(Queue())
    assert await app.enqueue("hello", {"n": 1}, delay=2.5, max_attempts=3, idempotency_key="k") == 1
    assert queued == [("hello", {"n": 1}, 2.5, 3, "k")]
    assert app.functions["hello"].enqueue == app.enqueue  # what its worker processes call


TWO_STARTS = """
from edgeruntime import serve


async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

serve(app)
"""


async def test_a_second_response_start_does_not_change_the_status_recorded(hello_dir: Path) -> None:
    """The server refuses a second start (its send raises): the run and the metrics keep the
    status the client got."""
    write_function(hello_dir, "twice", TWO_STARTS)
    async with EdgeClient(hello_dir) as client:
        scope, receive, _, _ = partial_body_then_gone("twice")
        started: list[int] = []

        async def server_send(message: Message) -> None:  # as Uvicorn: one start per response
            if message["type"] == "http.response.start":
                if started:
                    raise RuntimeError("Expected ASGI message 'http.response.body', but got 'http.response.start'.")
                started.append(message["status"])

        await client.app.handle_http(scope, receive, server_send)
        await client.jobs.history.flush()
        [run] = (await client.request("GET", "/_edgeruntime/api/runs")).json()["runs"]
        assert (run["http_status"], run["status"]) == (200, "failed")
        assert "Expected ASGI message" in run["error"]
