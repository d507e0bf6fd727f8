"""CORS on the gateway's own responses, as the local stack's Kong `cors` plugin adds them; a
function's own responses untouched; CORS preflights the runtime itself would answer."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from edgeruntime.core.responses import CORS_ALLOW_HEADERS, CorsPolicy
from edgeruntime.testing import EdgeClient
from tests.helpers import SERVICE_ROLE, write_function

ORIGIN = "https://app.example.com"
ALLOW_HEADERS = CORS_ALLOW_HEADERS.decode()

FUNCTIONS = {
    "plain": """
        from starlette.responses import JSONResponse
        from edgeruntime import serve

        @serve
        async def handler(req):
            return JSONResponse({"ok": True})
    """,
    "own-cors": """
        from starlette.responses import JSONResponse, Response
        from edgeruntime import serve

        HEADERS = {"Access-Control-Allow-Origin": "https://mine.example", "Access-Control-Allow-Headers": "x-mine"}

        @serve
        async def handler(req):
            if req.method == "OPTIONS":
                return Response(None, status_code=204, headers=HEADERS)
            return JSONResponse({"ok": True}, status_code=418, headers=HEADERS)
    """,
    "raises": """
        from edgeruntime import serve

        @serve
        async def handler(req):
            await req.json()  # a ported function that forgot its OPTIONS branch: no body to parse
    """,
    "dicty": """
        from edgeruntime import serve

        @serve
        async def handler(req):
            return {"not": "a response"}
    """,
    "broken": "def handler(:\n",
    "crashes": "raise RuntimeError('at import')\n",
}


@pytest.fixture
def cors_dir(functions_dir: Path) -> Path:
    for name, source in FUNCTIONS.items():
        write_function(functions_dir, name, source)
    return functions_dir


def cors_of(headers: httpx.Headers) -> dict[str, str]:
    return {k: v for k, v in headers.multi_items() if k.startswith("access-control-") or k == "vary"}


ORIGIN_ONLY = [("Origin", ORIGIN)]
WITH_KEY = [*ORIGIN_ONLY, *SERVICE_ROLE.items()]
RUNTIME_RESPONSES = [
    # (function, method, request headers, status)
    ("nope", "POST", WITH_KEY, 404),
    ("plain", "TRACE", WITH_KEY, 405),
    ("plain", "POST", ORIGIN_ONLY, 401),
    ("plain", "POST", [*WITH_KEY, ("apikey", "a"), ("apikey", "b")], 400),
    ("broken", "POST", WITH_KEY, 503),
    ("crashes", "POST", WITH_KEY, 500),
    ("raises", "POST", WITH_KEY, 500),
    ("dicty", "POST", WITH_KEY, 502),
]


@pytest.mark.parametrize(("function", "method", "headers", "status"), RUNTIME_RESPONSES)
async def test_the_runtimes_own_responses_carry_cors_headers(
    cors_dir: Path, function: str, method: str, headers: list[tuple[str, str]], status: int
) -> None:
    async with EdgeClient(cors_dir) as client:
        r = await client.http.request(method, f"/functions/v1/{function}", headers=headers, content=b"{")
        assert r.status_code == status
        assert cors_of(r.headers) == {
            "access-control-allow-origin": "*",
            "access-control-allow-headers": ALLOW_HEADERS,
        }


async def test_a_413_carries_them_too(cors_dir: Path) -> None:
    async with EdgeClient(cors_dir, limits={"max_request_body_mb": 0.001}) as client:
        r = await client.invoke("plain", content=b"x" * 5000, headers={"Origin": ORIGIN})
        assert r.status_code == 413
        assert cors_of(r.headers)["access-control-allow-origin"] == "*"


async def test_a_functions_own_responses_are_never_touched(cors_dir: Path) -> None:
    async with EdgeClient(cors_dir) as client:
        r = await client.invoke("own-cors", headers={"Origin": ORIGIN})
        assert r.status_code == 418
        assert cors_of(r.headers) == {
            "access-control-allow-origin": "https://mine.example",
            "access-control-allow-headers": "x-mine",
        }
        r = await client.invoke("plain", headers={"Origin": ORIGIN})
        assert r.status_code == 200
        assert cors_of(r.headers) == {}  # the function sets none: none are added (as on the platform)


def preflight(requested: str = "authorization, x-client-info, apikey, content-type") -> dict[str, str]:
    return {"Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": requested}


async def test_a_preflight_goes_to_the_function_which_answers_it(cors_dir: Path) -> None:
    async with EdgeClient(cors_dir) as client:
        r = await client.invoke("own-cors", method="OPTIONS", headers=preflight(), auth=None)
        assert r.status_code == 204
        assert cors_of(r.headers)["access-control-allow-origin"] == "https://mine.example"


@pytest.mark.parametrize("function", ["nope", "broken", "crashes", "raises", "dicty"])
async def test_a_preflight_the_runtime_would_answer_gets_the_preflight_answer(cors_dir: Path, function: str) -> None:
    """So that the browser makes the actual request, and reads its error (supabase-js: FunctionsHttpError)."""
    async with EdgeClient(cors_dir) as client:
        r = await client.invoke(function, method="OPTIONS", headers=preflight("authorization, x-custom"), auth=None)
        assert (r.status_code, r.content) == (200, b"")
        assert cors_of(r.headers) == {
            "access-control-allow-origin": "*",
            "access-control-allow-headers": "authorization, x-custom",
            "access-control-allow-methods": "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS",
        }
        # Without Access-Control-Request-Method it is no preflight: the runtime's answer, with CORS headers.
        r = await client.invoke(function, method="OPTIONS", headers={"Origin": ORIGIN}, auth=None)
        assert r.status_code >= 400
        assert cors_of(r.headers)["access-control-allow-origin"] == "*"


async def test_a_preflight_answered_for_a_failing_function_is_still_recorded_as_its_failure(cors_dir: Path) -> None:
    async with EdgeClient(cors_dir) as client:
        await client.invoke("raises", method="OPTIONS", headers=preflight(), auth=None)
        await client.jobs.history.flush()
        runs = (await client.request("GET", "/_edgeruntime/api/runs")).json()["runs"]
        assert [(r["function"], r["http_status"], r["status"]) for r in runs] == [("raises", 200, "failed")]
        assert "JSONDecodeError" in runs[0]["error"]


def config(functions_dir: Path, origins: str) -> None:
    (functions_dir.parent / "config.toml").write_text(f"[edge_runtime]\ncors_origins = {origins}\n", encoding="utf-8")


async def test_configured_origins_are_echoed_and_others_get_no_cors_headers(cors_dir: Path) -> None:
    config(cors_dir, '["https://app.example.com", "http://localhost:3000"]')
    async with EdgeClient(cors_dir) as client:
        r = await client.invoke("nope", headers={"Origin": "http://localhost:3000"})
        assert cors_of(r.headers) == {
            "vary": "Origin",
            "access-control-allow-origin": "http://localhost:3000",
            "access-control-allow-headers": ALLOW_HEADERS,
        }
        r = await client.invoke("nope", headers={"Origin": "https://evil.example"})
        assert (r.status_code, cors_of(r.headers)) == (404, {"vary": "Origin"})
        r = await client.invoke("nope", method="OPTIONS", headers={**preflight(), "Origin": "https://evil.example"})
        assert (r.status_code, cors_of(r.headers)) == (200, {"vary": "Origin"})


async def test_no_origins_no_cors_headers(cors_dir: Path) -> None:
    config(cors_dir, "[]")
    async with EdgeClient(cors_dir) as client:
        r = await client.invoke("nope", headers={"Origin": ORIGIN})
        assert (r.status_code, cors_of(r.headers)) == (404, {})


def test_the_policy_normalizes_what_browsers_send() -> None:
    policy = CorsPolicy(("https://app.example.com",))
    assert (b"access-control-allow-origin", b"https://app.example.com") in policy.headers(
        b"HTTPS://App.Example.com:443"
    )
    assert not any(k == b"access-control-allow-origin" for k, _ in policy.headers(b"https://app.example.com.evil"))
    assert not any(k == b"access-control-allow-origin" for k, _ in policy.headers(b"null"))
    assert not any(k == b"access-control-allow-origin" for k, _ in policy.headers(None))
    assert policy.for_scope({"path": "/_internal/health", "headers": [(b"origin", b"https://app.example.com")]}) == []
