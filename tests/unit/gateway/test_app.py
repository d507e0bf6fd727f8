"""The gateway: routing, the runtime's own responses, execution ids (through EdgeClient)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edgeruntime.testing import EdgeClient
from tests.helpers import write_function

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
