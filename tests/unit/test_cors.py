"""edgeruntime.cors: the corsHeaders pattern, through the gateway (OPTIONS needs no key)."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edgeruntime.cors import CORS_HEADERS, add_cors_headers, preflight, with_cors
from edgeruntime.testing import EdgeClient
from tests.helpers import write_function

PATTERN = """
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from edgeruntime import serve
from edgeruntime.cors import CORS_HEADERS, preflight

async def handler(req: Request) -> Response:
    if (answer := preflight(req)) is not None:
        return answer
    return JSONResponse({"ok": True}, headers=CORS_HEADERS)

serve(handler)
"""

WRAPPED = """
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from edgeruntime import serve
from edgeruntime.cors import with_cors

def handler(req: Request) -> PlainTextResponse:
    return PlainTextResponse("sync " + req.method, headers={"Access-Control-Allow-Origin": "https://app.example"})

serve(with_cors(handler))
"""

BROKEN = """
from starlette.requests import Request
from edgeruntime import serve
from edgeruntime.cors import with_cors

async def handler(req: Request) -> dict[str, str]:
    return {"oops": "dict"}

serve(with_cors(handler))  # type: ignore[arg-type]
"""


def request(method: str) -> Request:
    return Request({"type": "http", "method": method, "path": "/f", "headers": [], "query_string": b""})


def test_cors_headers_are_the_seeds() -> None:
    assert dict(CORS_HEADERS) == {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Allow-Headers": "authorization, x-client-info, apikey, content-type",
    }


def test_preflight_only_answers_options() -> None:
    assert preflight(request("POST")) is None
    answer = preflight(request("OPTIONS"))
    assert answer is not None
    assert answer.status_code == 200
    assert answer.body == b""
    assert "content-type" not in answer.headers  # like new Response(null, { headers: corsHeaders })
    assert answer.headers["access-control-allow-origin"] == "*"
    custom = preflight(request("OPTIONS"), {"Access-Control-Allow-Origin": "https://a.example"})
    assert custom is not None and custom.headers["access-control-allow-origin"] == "https://a.example"


def test_add_cors_headers_keeps_what_the_response_sets() -> None:
    response = add_cors_headers(JSONResponse({}, headers={"Access-Control-Allow-Origin": "https://a.example"}))
    assert response.headers["access-control-allow-origin"] == "https://a.example"
    assert response.headers["access-control-allow-headers"] == CORS_HEADERS["Access-Control-Allow-Headers"]


@pytest.mark.parametrize("source", [PATTERN, WRAPPED], ids=["pattern", "with_cors"])
async def test_preflight_through_the_gateway_needs_no_key(functions_dir: Path, source: str) -> None:
    write_function(functions_dir, "cors", source)
    async with EdgeClient(functions_dir) as client:
        r = await client.invoke(
            "cors",
            method="OPTIONS",
            auth=None,
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert r.status_code == 200
        assert r.content == b""
        assert r.headers["access-control-allow-headers"] == "authorization, x-client-info, apikey, content-type"
        # Other methods still need a key, and carry the CORS headers once they have one.
        assert (await client.invoke("cors", auth=None)).status_code == 401
        r = await client.invoke("cors", auth="anon")
        assert r.status_code == 200
        assert "access-control-allow-origin" in r.headers


async def test_with_cors_runs_sync_handlers_and_keeps_their_headers(functions_dir: Path) -> None:
    write_function(functions_dir, "cors", WRAPPED)
    async with EdgeClient(functions_dir) as client:
        r = await client.invoke("cors", method="PUT", content=b"body")
        assert r.text == "sync PUT"
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert r.headers["access-control-allow-headers"] == CORS_HEADERS["Access-Control-Allow-Headers"]


async def test_with_cors_leaves_a_non_response_to_the_gateway(functions_dir: Path) -> None:
    write_function(functions_dir, "broken", BROKEN)
    async with EdgeClient(functions_dir) as client:
        r = await client.invoke("broken")
        assert (r.status_code, r.text) == (502, "Bad Gateway")


async def test_with_cors_keeps_the_handler_name() -> None:
    async def handler(req: Request) -> Response:
        return Response("x")

    wrapped = with_cors(handler)
    assert wrapped.__name__ == "handler"
    response = await wrapped(request("GET"))
    assert response.headers["access-control-allow-origin"] == "*"
