"""docs/porting.md, "supabase-py is not supabase-js": every snippet marked `<!-- tested: NAME -->` runs here.

The snippets are read from the page itself and run against the local Supabase REST stand-in (and
the PostHog one), in a function served by EdgeClient or in a loaded function's namespace, so the
guide and what supabase-py and httpx really do cannot drift apart.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from postgrest import ReturnMethod
from starlette.requests import Request
from starlette.responses import JSONResponse

from edgeruntime.core.types import Message
from edgeruntime.testing import EdgeClient, LoadedFunction, execution_context, load_function
from tests.examples.conftest import REPO, close_worker_clients
from tests.fakes import FakePostHog, FakeSupabase
from tests.helpers import KEYS, free_port, write_function

GUIDE = REPO / "docs" / "porting.md"
MARKED = re.compile(r"<!-- tested: ([a-z0-9-]+) -->\n```python\n(.*?)```", re.S)
#: Every marked snippet, and the test that runs it.
TESTED = {
    "clients": "test_one_client_per_worker_is_closed_at_early_drop_only",
    "insert-select": "test_select_after_insert_sends_the_supabase_js_request",
    "update-minimal": "test_returning_minimal_gets_the_204_of_supabase_js",
    "error-ignored": "test_an_ignored_error_goes_on_like_the_typescript",
    "undefined": "test_undefined_keys_are_left_out_and_null_ones_kept",
    "stringify": "test_stringify_writes_the_bytes_of_json_stringify",
    "basic-pattern": "test_basic_pattern_answers_202_to_a_body_without_keys",
}
#: What the snippets may assume (the guide says so): everything else they import themselves.
PRELUDE = """
import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

logger = logging.getLogger(__name__)
"""
#: Makes a module of snippets servable (and loadable) when none of them is a handler.
SERVE = """
from edgeruntime import serve


async def handler(req: Request) -> JSONResponse:
    return JSONResponse({})


serve(handler)
"""


def snippet(name: str) -> str:
    found: dict[str, str] = dict(MARKED.findall(GUIDE.read_text(encoding="utf-8")))
    return found[name]


def module(*parts: str) -> str:
    return "\n\n".join([PRELUDE, *parts])


def env_for(rest: FakeSupabase, **extra: str) -> dict[str, str]:
    return {
        "SUPABASE_URL": rest.url,
        "SUPABASE_ANON_KEY": KEYS.anon_key,
        "SUPABASE_SERVICE_ROLE_KEY": KEYS.service_role_key,
        **extra,
    }


@asynccontextmanager
async def serving(functions_dir: Path, env: dict[str, str]) -> AsyncIterator[EdgeClient]:
    """EdgeClient over `functions_dir`; the module-level clients are closed once it has stopped."""
    modules = []
    async with EdgeClient(functions_dir, environ=env) as client:
        try:
            yield client
        finally:
            modules = [w.module for s in client.app.functions.values() for w in s.workers if w.module]
    await close_worker_clients(modules)


@asynccontextmanager
async def loaded(functions_dir: Path, env: dict[str, str], *parts: str) -> AsyncIterator[LoadedFunction]:
    """The `clients` snippet (and `parts`) loaded as a function module, as a worker would load it."""
    write_function(functions_dir, "guide", module(snippet("clients"), *parts, SERVE))
    fn = load_function(functions_dir / "guide", environ=env)
    try:
        yield fn
    finally:
        await fn.module.http.aclose()


async def run(fn: LoadedFunction, code: str, **given: Any) -> dict[str, Any]:
    """Run a snippet (top-level `await` allowed) in the namespace of `fn`'s module; returns the namespace."""
    namespace = {**vars(fn.module), **given}
    compiled = compile(code, "porting.md snippet", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    async with execution_context(fn):
        result = eval(compiled, namespace)
        if inspect.iscoroutine(result):
            await result
    return namespace


def json_request(payload: object) -> Request:
    body = json.dumps(payload).encode()

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"", "headers": []}
    return Request(scope, receive)


@pytest.fixture
def rest() -> Iterator[FakeSupabase]:
    with FakeSupabase(api_keys={KEYS.service_role_key}) as fake:
        yield fake


def test_every_marked_snippet_has_its_test() -> None:
    marked = [name for name, _ in MARKED.findall(GUIDE.read_text(encoding="utf-8"))]
    assert sorted(marked) == sorted(TESTED)  # each once
    tests = {name for name, _ in inspect.getmembers(__import__(__name__, fromlist=["_"]), inspect.isfunction)}
    assert set(TESTED.values()) <= tests


def test_the_guide_anchors_lead_to_its_headings() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)

    def slug(heading: str) -> str:  # GitHub's: lower case, punctuation dropped, spaces to hyphens
        return re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-")

    anchors = {slug(h) for h in headings}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links and links <= anchors, sorted(links - anchors)


# -- 1. One HTTP client per worker ---------------------------------------------------------

PER_CALL = """
import httpx
from edgeruntime import Deno, serve


async def handler(req: Request) -> JSONResponse:
    async with httpx.AsyncClient(timeout=10) as http:  # a client made in the call
        response = await http.post(Deno.env.get("POSTHOG_HOST") + "/capture", json={"api_key": "k", "event": "x"})
    return JSONResponse({"status": response.status_code})


serve(handler)
"""

SHARED = """
import asyncio

from edgeruntime import serve


async def handler(req: Request) -> JSONResponse:
    response = await http.post(Deno.env.get("POSTHOG_HOST") + "/capture", json={"api_key": "k", "event": "x"})
    return JSONResponse({"status": response.status_code})


async def later() -> None:
    await asyncio.sleep(0.3)
    event = {"api_key": "k", "event": "after the response"}
    await http.post(Deno.env.get("POSTHOG_HOST") + "/capture", json=event)


async def background(req: Request) -> JSONResponse:
    EdgeRuntime.wait_until(later())
    return JSONResponse({"accepted": True}, status_code=202)


serve(handler)
"""


async def test_one_client_per_worker_is_closed_at_early_drop_only(functions_dir: Path, rest: FakeSupabase) -> None:
    with FakePostHog() as posthog:
        write_function(functions_dir, "shared", module(snippet("clients"), SHARED))
        async with serving(functions_dir, env_for(rest, POSTHOG_HOST=posthog.url)) as client:
            assert (await client.invoke("shared")).json() == {"status": 200}
            first = client.module("shared")
            assert first.supabase.options.httpx_client is first.http  # supabase-py shares the pool
            client.app.reload({"shared"})  # retired with nothing in flight: early_drop
            for _ in range(500):  # the drop happens in the background: up to 10 s
                if first.http.is_closed:
                    break
                await asyncio.sleep(0.02)
            assert first.http.is_closed
            assert (await client.invoke("shared")).json() == {"status": 200}  # the next worker has its own
            second = client.module("shared")
            assert second.http is not first.http and not second.http.is_closed
    assert len(posthog.events()) == 2


async def test_termination_leaves_the_client_to_background_work(functions_dir: Path, rest: FakeSupabase) -> None:
    with FakePostHog() as posthog:
        source = module(snippet("clients"), SHARED.replace("serve(handler)", "serve(background)"))
        write_function(functions_dir, "shared", source)
        async with serving(functions_dir, env_for(rest, POSTHOG_HOST=posthog.url)) as client:
            assert (await client.invoke("shared")).status_code == 202
            [worker] = client.app.functions["shared"].workers
            module_http = client.module("shared").http
            # The server's shutdown: beforeunload("termination"), then up to 10 s for background
            # work, which still sends through the module's client.
            assert await client.app.shutdown(timeout=10) == []
            assert worker.state.beforeunload_fired == {"termination"} and not module_http.is_closed
        assert [e["event"] for e in posthog.events()] == ["after the response"]


async def test_one_client_per_worker_costs_a_fraction_of_the_cpu(functions_dir: Path, rest: FakeSupabase) -> None:
    """The figure in the guide: CPU charged to the worker per request, client per call vs per worker."""
    with FakePostHog() as posthog:
        write_function(functions_dir, "per-call", module(PER_CALL))
        write_function(functions_dir, "shared", module(snippet("clients"), SHARED))
        charged: dict[str, float] = {}
        async with serving(functions_dir, env_for(rest, POSTHOG_HOST=posthog.url)) as client:
            for name in ("per-call", "shared"):
                assert (await client.invoke(name)).json() == {"status": 200}  # boot, first connection
                [worker] = client.app.functions[name].workers
                before = worker.meter.used_ms
                for _ in range(10):
                    assert (await client.invoke(name)).json() == {"status": 200}
                charged[name] = (worker.meter.used_ms - before) / 10
    print(f"CPU per request: client per call {charged['per-call']:.1f} ms, per worker {charged['shared']:.1f} ms")
    # Loading the CA bundle alone takes well over 5 ms of CPU; the shared client does not do it.
    assert charged["per-call"] - charged["shared"] > 5
    assert charged["shared"] < charged["per-call"] / 3


# -- 2. `.select()` after a write ----------------------------------------------------------


async def test_select_after_insert_sends_the_supabase_js_request(functions_dir: Path, rest: FakeSupabase) -> None:
    row = {"email": "ada@example.com", "message": "hi"}
    async with loaded(functions_dir, env_for(rest)) as fn:
        done = await run(fn, snippet("insert-select"), row=row)
        assert done["saved"] == {**row, "id": 1}
        [request] = rest.requests
        assert (request.method, request.path) == ("POST", "/rest/v1/contact_submissions")
        assert request.query == (("select", "*"),)
        assert request.header("prefer") == "return=representation"
        assert request.header("accept") == "application/vnd.pgrst.object+json"

        # Without .select(): the same row comes back, but the request has lost `?select=*`.
        done = await run(fn, snippet("insert-select").replace(".select()", ""), row=row)
        assert done["saved"] == {**row, "id": 2}
        assert rest.requests[-1].query == () and rest.requests[-1].header("prefer") == "return=representation"


# -- 3. `returning=ReturnMethod.minimal` ---------------------------------------------------


async def test_returning_minimal_gets_the_204_of_supabase_js(functions_dir: Path, rest: FakeSupabase) -> None:
    rest.seed("orders", [{"id": 7, "status": "new"}, {"id": 8, "status": "new"}])
    statuses: list[int] = []

    async def record(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    async with loaded(functions_dir, env_for(rest)) as fn:
        fn.module.http.event_hooks["response"] = [record]
        await run(fn, snippet("update-minimal"), order_id=7)
        assert statuses == [204]  # no body: as supabase-js's update without .select()
        assert rest.requests[-1].header("prefer") == "return=minimal"
        assert rest.rows("orders")[0] == {"id": 7, "status": "paid"}

        # supabase-py's default: 200 and the updated rows, where the TypeScript got 204.
        default = await fn.module.supabase.table("orders").update({"status": "paid"}).eq("id", 8).execute()
        assert statuses[-1] == 200 and default.data == [{"id": 8, "status": "paid"}]
        assert rest.requests[-1].header("prefer") == "return=representation"
        minimal = await (
            fn.module.supabase.table("orders")
            .update({"status": "shipped"}, returning=ReturnMethod.minimal)
            .eq("id", 8)
            .execute()
        )
        assert statuses[-1] == 204 and minimal.data == []


# -- 4. `{ data, error }` becomes an exception ---------------------------------------------

# The seed's "Best" handler (Designing for Limits), ported line by line around the guide's snippet.
LIMITS_HANDLER = """
from edgeruntime import serve


async def process_batch(items: list[Any]) -> None:
    pass


async def handler(req: Request) -> JSONResponse:
    items = (await req.json())["items"]
    EdgeRuntime.wait_until(process_batch(items[:100]))
    if len(items) > 100:
        await queue_remaining_items(items[100:])
    return JSONResponse({"accepted": True})


serve(handler)
"""

# The same port without the try/except: what the exception does to it.
WITHOUT_TRY = """
from postgrest import ReturnMethod


async def queue_remaining_items(items: list[Any]) -> None:
    await supabase.table("job_queue").insert(
        {"type": "process_items", "payload": items, "status": "pending"}, returning=ReturnMethod.minimal
    ).execute()
"""


async def test_an_ignored_error_goes_on_like_the_typescript(
    functions_dir: Path, rest: FakeSupabase, caplog: pytest.LogCaptureFixture
) -> None:
    write_function(functions_dir, "limits", module(snippet("clients"), snippet("error-ignored"), LIMITS_HANDLER))
    write_function(functions_dir, "naive", module(snippet("clients"), WITHOUT_TRY, LIMITS_HANDLER))
    items = {"items": list(range(150))}
    async with serving(functions_dir, env_for(rest)) as client:
        r = await client.invoke("limits", json=items)
        assert (r.status_code, r.json()) == (200, {"accepted": True})
        assert rest.rows("job_queue")[0]["payload"] == list(range(100, 150))

        rest.fail("job_queue", "POST")  # PostgREST answers 500: supabase-py raises APIError
        r = await client.invoke("limits", json=items)
        assert (r.status_code, r.json()) == (200, {"accepted": True})  # as the TypeScript, which never reads `error`
        assert "queueing 50 items failed" in caplog.text and "injected failure" in caplog.text
        assert (await client.invoke("naive", json=items)).status_code == 500  # the port without try/except
        await client.drain()

    # A failed fetch is `error` too in supabase-js; supabase-py raises httpx.ConnectError.
    closed = f"http://127.0.0.1:{free_port()}"
    caplog.clear()
    async with serving(functions_dir, env_for(rest, SUPABASE_URL=closed)) as client:
        r = await client.invoke("limits", json=items)
        assert (r.status_code, r.json()) == (200, {"accepted": True})
        assert "ConnectError" in caplog.text or "All connection attempts failed" in caplog.text
        assert (await client.invoke("naive", json=items)).status_code == 500
        await client.drain()


# -- 5. `undefined` --------------------------------------------------------------------------

# Each body, and what JSON.stringify({ email, name, message }) writes for it (Node 20 / V8, as Deno).
UNDEFINED_CASES = [
    (
        {"email": "josé@example.com", "message": "Grüße – “quoted” </script> \u2028 tab\there"},
        '{"email":"josé@example.com","message":"Grüße – “quoted” </script> \u2028 tab\\there"}',
    ),
    ({"email": "a@example.com", "name": None, "message": "hi"}, '{"email":"a@example.com","name":null,"message":"hi"}'),
    ({}, "{}"),
]


@pytest.mark.parametrize(("body", "stringified"), UNDEFINED_CASES)
async def test_undefined_keys_are_left_out_and_null_ones_kept(
    functions_dir: Path, rest: FakeSupabase, body: dict[str, Any], stringified: str
) -> None:
    async with loaded(functions_dir, env_for(rest)) as fn:
        done = await run(fn, snippet("undefined") + "\n" + snippet("stringify"), req=json_request(body))
        assert done["row"] == body
        assert done["stringify"](done["row"]) == stringified
        # supabase-py writes the row as JSON.stringify would: a missing name is not sent at all.
        await fn.module.supabase.table("contact_submissions").insert(done["row"]).execute()
        assert rest.requests[-1].body == stringified.encode()


async def test_basic_pattern_answers_202_to_a_body_without_keys(functions_dir: Path) -> None:
    steps = """
CALLS: list[tuple[str, Any]] = []


async def send_analytics(user_id: Any, action: Any) -> None:
    CALLS.append(("send_analytics", (user_id, action)))


async def update_aggregates(user_id: Any) -> None:
    CALLS.append(("update_aggregates", user_id))


async def notify_admins(action: Any) -> None:
    CALLS.append(("notify_admins", action))
"""
    write_function(functions_dir, "basic", module(snippet("basic-pattern"), steps))
    keyed = snippet("basic-pattern").replace('body.get("userId"), body.get("action")', 'body["userId"], body["action"]')
    assert keyed != snippet("basic-pattern")
    write_function(functions_dir, "keyed", module(keyed, steps))
    async with EdgeClient(functions_dir) as client:
        r = await client.invoke("basic", json={})
        assert (r.status_code, r.json()) == (202, {"accepted": True})  # as `const { userId, action }` on {}
        await client.drain()
        assert client.module("basic").CALLS == [
            ("send_analytics", (None, None)),
            ("update_aggregates", None),
            ("notify_admins", None),
        ]
        assert (await client.invoke("keyed", json={})).status_code == 500  # KeyError: 'userId'
        # What the guide says .get does not cover: a body that is not an object.
        assert (await client.invoke("basic", json=["userId"])).status_code == 500


# -- 6. `json.dumps` is not `JSON.stringify` -------------------------------------------------

VALUE = {"n": 3, "ok": True, "none": None, "list": [1, "two", {"x": "ÿ"}], "nested": {"k": "v"}, "name": "José"}
#: JSON.stringify(VALUE), from Node 20 (V8, as Deno).
STRINGIFIED = '{"n":3,"ok":true,"none":null,"list":[1,"two",{"x":"ÿ"}],"nested":{"k":"v"},"name":"José"}'


async def test_stringify_writes_the_bytes_of_json_stringify(functions_dir: Path, rest: FakeSupabase) -> None:
    async with loaded(functions_dir, env_for(rest)) as fn:
        stringify = (await run(fn, snippet("stringify")))["stringify"]
    assert stringify(VALUE) == STRINGIFIED
    assert json.dumps(VALUE) != STRINGIFIED  # spaces, and "Jos\u00e9"
    assert json.dumps({"name": "José"}) == '{"name": "Jos\\u00e9"}'
    # Starlette's JSONResponse and httpx's json= already write these bytes.
    assert JSONResponse(VALUE).body == STRINGIFIED.encode()
    assert httpx.Request("POST", "http://127.0.0.1/", json=VALUE).content == STRINGIFIED.encode()
    # What still differs (JavaScript writes {"a":1}, {"b":null} and {"1":3,"2":2,"b":1}).
    assert stringify({"a": 1.0}) == '{"a":1.0}'
    assert stringify({"b": float("nan")}) == '{"b":NaN}'
    assert stringify({"b": 1, "2": 2, "1": 3}) == '{"b":1,"2":2,"1":3}'
