"""The test helpers: EdgeClient, load_function, execution_context and the pytest plugin."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.websockets import WebSocketDisconnect

from edgeruntime import EdgeRuntime
from edgeruntime.exceptions import UsageError
from edgeruntime.testing import EdgeClient, execution_context, load_function
from tests.helpers import write_function

pytest_plugins = ["pytester"]

JOB = """
import asyncio
from starlette.responses import JSONResponse
from edgeruntime import Deno, EdgeRuntime, serve

DONE = []

async def record(value):
    await asyncio.sleep(0.01)
    if value == "boom":
        raise ValueError("boom in background")
    DONE.append(value)

async def handler(req):
    body = await req.json()
    EdgeRuntime.wait_until(record(body["value"]))
    return JSONResponse({"accepted": True, "url": Deno.env.get("SUPABASE_URL")}, status_code=202)

serve(handler)
"""


async def test_load_function_with_a_hyphenated_name(functions_dir: Path) -> None:
    write_function(functions_dir, "my-new-job", JOB)
    fn = load_function(functions_dir / "my-new-job")
    assert fn.name == "my-new-job"
    async with execution_context() as ctx:
        scope = {"type": "http", "method": "POST", "path": "/my-new-job", "headers": [], "query_string": b""}
        body = b'{"value": "direct"}'

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": body, "more_body": False}

        response = await fn.handler(Request(scope, receive))
        assert response.status_code == 202
        await ctx.drain()
    assert fn.module.DONE == ["direct"]
    assert b'"url":"http://127.0.0.1:54321"' in response.body


async def test_loaded_function_client(functions_dir: Path) -> None:
    write_function(functions_dir, "my-new-job", JOB)
    fn = load_function(functions_dir / "my-new-job" / "index.py")
    async with fn.client() as client, execution_context(fn) as ctx:
        r = await client.post("/my-new-job", json={"value": "via client"})
        assert r.status_code == 202
        await ctx.drain()
    assert fn.module.DONE == ["via client"]


async def test_execution_context_drain_raises_background_errors() -> None:
    async def boom() -> None:
        raise ValueError("nope")

    async with execution_context(execution_id="fixed-id") as ctx:
        assert ctx.execution_id == "fixed-id"
        EdgeRuntime.wait_until(boom())
        with pytest.raises(ExceptionGroup) as info:
            await ctx.drain()
    assert isinstance(info.value.exceptions[0], ValueError)


async def test_client_drain_raises_exception_group_once(functions_dir: Path) -> None:
    write_function(functions_dir, "job", JOB)
    async with EdgeClient(functions_dir) as client:
        await client.invoke("job", json={"value": "boom"})
        await client.invoke("job", json={"value": "fine"})
        with pytest.raises(ExceptionGroup) as info:
            await client.drain()
        assert [str(e) for e in info.value.exceptions] == ["boom in background"]
        await client.drain()  # reported once


async def test_client_drain_times_out_naming_the_task(functions_dir: Path) -> None:
    write_function(
        functions_dir,
        "sleepy",
        """
        import asyncio
        from starlette.responses import Response
        from edgeruntime import EdgeRuntime, serve

        async def nap():
            await asyncio.sleep(30)

        @serve
        async def handler(req):
            EdgeRuntime.wait_until(nap())
            return Response(status_code=204)
    """,
    )
    async with EdgeClient(functions_dir) as client:
        await client.invoke("sleepy")
        with pytest.raises(TimeoutError, match="sleepy:nap"):
            await client.drain(timeout=0.05)


async def test_client_uses_keys_and_auth(functions_dir: Path) -> None:
    write_function(functions_dir, "job", JOB)
    async with EdgeClient(functions_dir) as client:
        assert (await client.invoke("job", json={"value": 1}, auth=None)).status_code == 401
        assert (await client.invoke("job", json={"value": 2}, auth="anon")).status_code == 202
        await client.drain()


async def test_client_leaves_no_pending_work_after_exit(functions_dir: Path) -> None:
    write_function(functions_dir, "job", JOB)
    client = EdgeClient(functions_dir)
    async with client:
        await client.invoke("job", json={"value": "x"})
    assert client.pending() == []
    await asyncio.sleep(0)


PLUGIN_TEST = """
import pytest

async def test_drained(edge_client):
    r = await edge_client.invoke("job", json={"value": "a"})
    assert r.status_code == 202
    await edge_client.drain()

async def test_left_pending(edge_client):
    r = await edge_client.invoke("job", json={"value": "b"})
    assert r.status_code == 202

async def test_left_failed(edge_client):
    await edge_client.invoke("job", json={"value": "boom"})
    import asyncio
    await asyncio.sleep(0.2)

@pytest.mark.edgeruntime(functions_dir="other")
async def test_marker(edge_client):
    assert (await edge_client.invoke("job", json={"value": "c"})).status_code == 404
"""


def test_pytest_plugin_fails_tests_that_leave_background_work(pytester: pytest.Pytester) -> None:
    functions = pytester.path / "functions"
    write_function(functions, "job", JOB)
    (pytester.path / "other").mkdir()
    write_function(pytester.path / "other", "hello2", "from edgeruntime import serve\nserve(lambda r: None)\n")
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_user=PLUGIN_TEST)
    env_before = dict(os.environ)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert dict(os.environ) == env_before
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*background work still pending: job:record*", "*background work failed: job:record*"])


async def test_client_and_load_function_name_an_unknown_option(functions_dir: Path) -> None:
    write_function(functions_dir, "job", JOB)
    with pytest.raises(UsageError, match=r"EdgeClient: unknown option 'verify_jwt'.*no_verify_jwt"):
        EdgeClient(functions_dir, verify_jwt=False)
    with pytest.raises(UsageError, match=r"unknown option 'env'.*environ"):
        EdgeClient(functions_dir, env={"A": "b"})
    with pytest.raises(UsageError, match=r"load_function: unknown option 'bogus'"):
        load_function(functions_dir / "job", bogus=1)


ECHO = """
from starlette.responses import JSONResponse
from edgeruntime import serve

@serve
async def handler(req):
    return JSONResponse({"path": req.url.path, "query": dict(req.query_params)})
"""


async def test_invoke_path_without_a_leading_slash_is_a_subpath(functions_dir: Path) -> None:
    write_function(functions_dir, "echo", ECHO)
    async with EdgeClient(functions_dir) as client:
        assert (await client.invoke("echo", path="sub/x")).json()["path"] == "/echo/sub/x"
        assert (await client.invoke("echo", path="?a=1")).json() == {"path": "/echo", "query": {"a": "1"}}


async def test_module_of_an_unknown_function_says_so(functions_dir: Path) -> None:
    write_function(functions_dir, "job", JOB)
    async with EdgeClient(functions_dir) as client:
        with pytest.raises(LookupError, match="no function nope in"):
            client.module("nope")
        with pytest.raises(LookupError, match="invoke it first"):
            client.module("job")


WS_BYTES = """
from edgeruntime import serve, upgrade_websocket

@serve
async def handler(req):
    ws = await upgrade_websocket(req)
    await ws.receive_text()
    await ws.send_bytes(b"raw")
    await ws.receive_text()
"""


async def test_websocket_receive_of_the_wrong_kind_and_close_code(functions_dir: Path) -> None:
    write_function(functions_dir, "ws", WS_BYTES)
    async with EdgeClient(functions_dir) as client, client.websocket("ws") as ws:
        await ws.send_text("go")
        with pytest.raises(TypeError, match="expected a text message, got bytes"):
            await ws.receive_text()
        await ws.close(4001, "done")
        with pytest.raises(WebSocketDisconnect) as info:
            await ws.receive_text()
        assert (info.value.code, ws.close_code, ws.close_reason) == (4001, 4001, "done")


PLUGIN_MISUSE_TEST = """
import pytest

@pytest.mark.edgeruntime("other")
async def test_positional_dir(edge_client):
    assert (await edge_client.invoke("hello2")).status_code == 200

@pytest.mark.edgeruntime(bogus_option=1)
async def test_bad_option(edge_client):
    pass

@pytest.mark.xfail(reason="leaves work behind")
async def test_xfail_left_pending(edge_client):
    await edge_client.invoke("job", json={"value": "x"})
"""


def test_pytest_plugin_marker_misuse_and_xfail(pytester: pytest.Pytester) -> None:
    write_function(pytester.path / "functions", "job", JOB)
    write_function(
        pytester.path / "other",
        "hello2",
        "from edgeruntime import serve\nfrom starlette.responses import Response\nserve(lambda r: Response())\n",
    )
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_user=PLUGIN_MISUSE_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1, xfailed=1)
    result.stdout.fnmatch_lines(["*@pytest.mark.edgeruntime: unknown option 'bogus_option'*"])


PLUGIN_SCOPES_CONFTEST = """
import pytest
import pytest_asyncio
from edgeruntime.testing import EdgeClient

@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared():
    async with EdgeClient("other", port=54002) as client:
        yield client

@pytest.fixture
def late(edge_client, request):
    # The module's client, first asked for after the test's own: entered after it, exited after it.
    return request.getfixturevalue("shared")
"""

PLUGIN_SCOPES_TEST = """
import os

async def test_both_open(edge_client, late):
    assert os.environ["ER_TEST_WHO"] == "shared"  # the client entered last
    assert os.environ["SUPABASE_URL"] == "http://127.0.0.1:54002"
    assert "ER_TEST_ONLY_FIXTURE" not in late.settings.env  # built from the process env
    assert (await edge_client.invoke("hello2")).status_code == 200

def test_after_the_test_client_exited(shared):
    assert os.environ["ER_TEST_WHO"] == "shared" and "ER_TEST_ONLY_FIXTURE" not in os.environ
    assert os.environ["SUPABASE_URL"] == "http://127.0.0.1:54002"
"""

PLUGIN_SCOPES_AFTER = """
import os

BEFORE = dict(os.environ)  # at collection, before any client

def test_nothing_left_behind():
    after = dict(os.environ)
    for env in (BEFORE, after):
        env.pop("PYTEST_CURRENT_TEST", None)
    assert after == BEFORE
"""


def test_pytest_plugin_fixtures_of_different_scopes_leave_os_environ_as_it_was(pytester: pytest.Pytester) -> None:
    hello = "from edgeruntime import serve\nfrom starlette.responses import Response\nserve(lambda r: Response())\n"
    for directory, who in (("functions", "fixture"), ("other", "shared")):
        write_function(pytester.path / directory, "hello2", hello)
        (pytester.path / directory / ".env").write_text(f"ER_TEST_WHO={who}\nER_TEST_ONLY_{who.upper()}=1\n")
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest(PLUGIN_SCOPES_CONFTEST)
    pytester.makepyfile(test_a_scopes=PLUGIN_SCOPES_TEST, test_z_after=PLUGIN_SCOPES_AFTER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
