"""serve(), EdgeRuntime.wait_until / on, and Deno.env, driven through EdgeClient."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from edgeruntime import Deno, EdgeRuntime
from edgeruntime.exceptions import NotSupportedError
from edgeruntime.testing import EdgeClient, drain
from tests.helpers import write_function

SLOW_BACKGROUND = """
import asyncio
from starlette.responses import JSONResponse
from edgeruntime import EdgeRuntime, serve

DONE = []

async def work(n):
    await asyncio.sleep(float(n))
    DONE.append(n)

@serve
async def handler(req):
    body = await req.json()
    EdgeRuntime.wait_until(work(body["seconds"]))
    return JSONResponse({"accepted": True}, status_code=202)
"""


async def test_async_handler_and_decorator_form(functions_dir: Path) -> None:
    write_function(
        functions_dir,
        "deco",
        """
        from starlette.responses import PlainTextResponse
        from edgeruntime import serve

        @serve
        async def handler(req):
            return PlainTextResponse("decorated")

        assert callable(handler)  # the decorator returns its argument
    """,
    )
    async with EdgeClient(functions_dir) as client:
        r = await client.invoke("deco")
        assert r.text == "decorated"


async def test_sync_handler_runs_in_a_thread(functions_dir: Path) -> None:
    write_function(
        functions_dir,
        "sync",
        """
        import json, threading
        import anyio.from_thread
        from starlette.responses import JSONResponse
        from edgeruntime import EdgeRuntime, serve

        SEEN = []

        async def later(x):
            SEEN.append(x)

        def handler(req):
            body = json.loads(anyio.from_thread.run(req.body))
            EdgeRuntime.wait_until(later(body["x"]))
            return JSONResponse({"thread": threading.current_thread().name, "x": body["x"]})

        serve(handler)
    """,
    )
    async with EdgeClient(functions_dir) as client:
        r = await client.invoke("sync", json={"x": 7})
        assert r.status_code == 200
        assert r.json()["x"] == 7
        assert r.json()["thread"] != "MainThread"
        await client.drain()
        module = client.module("sync")
        assert module.SEEN == [7]


async def test_asgi_application_handler(functions_dir: Path) -> None:
    write_function(
        functions_dir,
        "app",
        """
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route
        from edgeruntime import serve

        async def items(req):
            return JSONResponse({"item": req.path_params["id"]})

        app = Starlette(routes=[Route("/app/items/{id}", items)])
        serve(app)
    """,
    )
    async with EdgeClient(functions_dir) as client:
        r = await client.invoke("app", method="GET", path="/items/42")
        assert r.json() == {"item": "42"}
        r = await client.invoke("app", method="GET", path="/nothing-here")
        assert r.status_code == 404
        assert r.text == "Not Found"


async def test_response_does_not_wait_for_background_work(functions_dir: Path) -> None:
    write_function(functions_dir, "slow", SLOW_BACKGROUND)
    async with EdgeClient(functions_dir) as client:
        started = time.perf_counter()
        r = await client.invoke("slow", json={"seconds": 1})
        elapsed = time.perf_counter() - started
        assert r.status_code == 202
        # Well under the task's 1 s, with room for a loaded machine (other tests beside this one).
        assert elapsed < 0.5, f"response took {elapsed:.3f} s while a 1 s task was pending"
        assert len(client.pending()) == 1
        module = client.module("slow")
        assert module.DONE == []
        await client.drain(timeout=10)
        assert module.DONE == [1]
        assert client.pending() == []


async def test_thousand_concurrent_requests_lose_no_background_work(functions_dir: Path) -> None:
    write_function(functions_dir, "slow", SLOW_BACKGROUND)
    async with EdgeClient(functions_dir) as client:
        responses = await asyncio.gather(*(client.invoke("slow", json={"seconds": 0.2}) for _ in range(1000)))
        assert [r.status_code for r in responses] == [202] * 1000
        await client.drain(timeout=60)
        module = client.module("slow")
        assert len(module.DONE) == 1000
        assert len({r.headers["x-edgeruntime-execution-id"] for r in responses}) == 1000


async def test_failing_background_work_is_logged_and_harmless(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_function(
        functions_dir,
        "flaky",
        """
        from starlette.responses import JSONResponse
        from edgeruntime import EdgeRuntime, serve

        async def explode():
            raise RuntimeError("background kaboom")

        async def fine():
            return 1

        @serve
        async def handler(req):
            body = await req.json()
            EdgeRuntime.wait_until(explode() if body.get("fail") else fine())
            return JSONResponse({"ok": True})
    """,
    )
    async with EdgeClient(functions_dir) as client:
        r1 = await client.invoke("flaky", json={"fail": True})
        assert r1.status_code == 200
        with pytest.raises(ExceptionGroup) as info:
            await client.drain()
        assert "background kaboom" in str(info.value.exceptions[0])
        r2 = await client.invoke("flaky", json={})
        assert r2.status_code == 200
        await client.drain()
    exec_id = r1.headers["x-edgeruntime-execution-id"]
    failures = [rec for rec in caplog.records if "background task explode" in rec.getMessage()]
    assert failures, caplog.text
    assert getattr(failures[0], "execution_id", None) == exec_id
    assert getattr(failures[0], "function", None) == "flaky"
    assert failures[0].exc_info is not None


async def test_wait_until_returns_an_awaitable_for_the_same_work(functions_dir: Path) -> None:
    write_function(
        functions_dir,
        "ret",
        """
        import asyncio
        from starlette.responses import JSONResponse
        from edgeruntime import EdgeRuntime, serve

        async def value():
            await asyncio.sleep(0.01)
            return 41

        @serve
        async def handler(req):
            pending = EdgeRuntime.wait_until(value())
            EdgeRuntime.wait_until(report(pending))
            return JSONResponse({"ok": True})

        RESULTS = []

        async def report(pending):
            RESULTS.append(await pending + 1)
    """,
    )
    async with EdgeClient(functions_dir) as client:
        await client.invoke("ret")
        await client.drain()
        module = client.module("ret")
        assert module.RESULTS == [42]


async def test_awaiting_wait_until_before_responding_warns(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_function(
        functions_dir,
        "awaits",
        """
        import asyncio
        from starlette.responses import JSONResponse
        from edgeruntime import EdgeRuntime, serve

        async def process():
            await asyncio.sleep(0.01)

        @serve
        async def handler(req):
            await EdgeRuntime.wait_until(process())   # the seed's anti-pattern
            return JSONResponse({"done": True})
    """,
    )
    async with EdgeClient(functions_dir) as client:
        assert (await client.invoke("awaits")).status_code == 200
    assert "delays the response" in caplog.text


async def test_wait_until_rejects_non_awaitables() -> None:
    with pytest.raises(TypeError, match="awaitable"):
        EdgeRuntime.wait_until(42)  # type: ignore[arg-type]


async def test_wait_until_outside_a_request_attaches_to_the_default_context() -> None:
    seen: list[int] = []

    async def work() -> None:
        await asyncio.sleep(0.01)
        seen.append(1)

    EdgeRuntime.wait_until(work())
    await drain()
    assert seen == [1]


async def test_beforeunload_fires_with_termination_on_shutdown(functions_dir: Path) -> None:
    marker = functions_dir.parent / "unloaded.txt"
    write_function(
        functions_dir,
        "unload",
        f"""
        from starlette.responses import JSONResponse
        from edgeruntime import EdgeRuntime, serve

        def on_unload(event):
            with open({str(marker)!r}, "a") as f:
                f.write(event.reason + "|" + event.detail["reason"] + "\\n")

        EdgeRuntime.on("beforeunload", on_unload)

        @serve
        async def handler(req):
            return JSONResponse({{}})
    """,
    )
    async with EdgeClient(functions_dir) as client:
        await client.invoke("unload")
    assert marker.read_text() == "termination|termination\n"


async def test_serve_returns_its_argument_and_async_beforeunload_callbacks_are_awaited(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # DESIGN 2: `serve` "usable as a decorator (returns its argument)"; event callbacks "may be sync
    # or async; an exception inside a callback is logged, never propagated".
    marker = functions_dir.parent / "unloaded.txt"
    write_function(
        functions_dir,
        "unload-async",
        f"""
        import asyncio
        from starlette.responses import JSONResponse
        from edgeruntime import EdgeRuntime, serve

        async def on_unload(event):
            await asyncio.sleep(0.01)
            with open({str(marker)!r}, "a") as f:
                f.write("async " + event.reason + "\\n")

        def broken(event):
            raise RuntimeError("unload listener bug")

        EdgeRuntime.on("beforeunload", broken)
        EdgeRuntime.on("beforeunload", on_unload)

        async def handler(req):
            return JSONResponse({{"same": SERVED is handler}})

        SERVED = serve(handler)
    """,
    )
    async with EdgeClient(functions_dir) as client:
        r = await client.invoke("unload-async")
        assert (r.status_code, r.json()) == (200, {"same": True})
    assert marker.read_text() == "async termination\n"
    assert "unload listener bug" in caplog.text


async def test_unhandledrejection_listener_gets_error_and_others_keep_running(functions_dir: Path) -> None:
    write_function(
        functions_dir,
        "rejects",
        """
        import asyncio
        from starlette.responses import JSONResponse
        from edgeruntime import EdgeRuntime, serve

        EVENTS = []
        DONE = []

        async def listener(event):
            EVENTS.append((type(event.error).__name__, event.execution_id, event.function))

        EdgeRuntime.on("unhandledrejection", listener)

        def bad_listener(event):
            raise RuntimeError("listener bug")   # logged, never propagated

        EdgeRuntime.on("unhandledrejection", bad_listener)

        async def fails():
            raise KeyError("x")

        async def survives():
            await asyncio.sleep(0.05)
            DONE.append(True)

        @serve
        async def handler(req):
            EdgeRuntime.wait_until(fails())
            EdgeRuntime.wait_until(survives())
            return JSONResponse({})
    """,
    )
    async with EdgeClient(functions_dir) as client:
        r = await client.invoke("rejects")
        with pytest.raises(ExceptionGroup):
            await client.drain()
        await asyncio.sleep(0.05)
        module = client.module("rejects")
        assert module.DONE == [True]
        assert module.EVENTS == [("KeyError", r.headers["x-edgeruntime-execution-id"], "rejects")]


async def test_on_rejects_unknown_events() -> None:
    with pytest.raises(ValueError, match="unknown event"):
        EdgeRuntime.on("load", lambda e: None)  # type: ignore[arg-type]


async def test_deno_env_is_the_function_env_and_read_only(functions_dir: Path) -> None:
    (functions_dir / ".env").write_text("GREETING=hi from env file\n")
    write_function(
        functions_dir,
        "env",
        """
        from starlette.responses import JSONResponse
        from edgeruntime import Deno, serve

        @serve
        async def handler(req):
            try:
                Deno.env.set("X", "1")
                settable = True
            except Exception as exc:
                settable = type(exc).__name__
            Deno.env.delete("GREETING")   # a silent no-op
            return JSONResponse({
                "greeting": Deno.env.get("GREETING"),
                "has": Deno.env.has("GREETING"),
                "missing": Deno.env.get("NOPE_NOT_SET"),
                "url": Deno.env.get("SUPABASE_URL"),
                "settable": settable,
                "keys": sorted(k for k in Deno.env.to_object() if k.startswith("SUPABASE_")),
            })
    """,
    )
    async with EdgeClient(functions_dir) as client:
        data = (await client.invoke("env")).json()
    assert data["greeting"] == "hi from env file"
    assert data["has"] is True
    assert data["missing"] is None
    assert data["url"] == "http://127.0.0.1:54321"
    assert data["settable"] == "NotSupportedError"
    assert {"SUPABASE_ANON_KEY", "SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_URL", "SUPABASE_JWKS"} <= set(data["keys"])


def test_deno_env_set_raises_outside_functions() -> None:
    with pytest.raises(NotSupportedError):
        Deno.env.set("A", "b")
    assert Deno.env.get("PATH") is not None
