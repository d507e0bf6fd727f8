"""The real `supabase` Python client calling functions on a live `edgeruntime serve` (verify_jwt on)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from supabase import AsyncClient, Client, acreate_client, create_client
from supabase_functions.errors import FunctionsHttpError

from edgeruntime.config.keys import PUBLISHABLE_KEY, SECRET_KEY
from tests.helpers import KEYS, ServerProcess, write_function

# supabase-py passes its own deprecated arguments to its sub-clients (supabase 2.x).
SUPABASE_PY_DEPRECATIONS = "ignore:The '(timeout|verify)' parameter is deprecated:DeprecationWarning"
pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings(SUPABASE_PY_DEPRECATIONS)]

ECHO_ROLE = """
import jwt
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve

async def handler(req: Request) -> JSONResponse:
    auth = req.headers.get("authorization", "")
    role = jwt.decode(auth[7:], options={"verify_signature": False}).get("role")
    body = await req.json() if await req.body() else None
    return JSONResponse({"role": role, "body": body, "client": req.headers.get("x-client-info")})

serve(handler)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    functions_dir = tmp_path_factory.mktemp("project") / "functions"
    write_function(functions_dir, "hello", ECHO_ROLE)
    with ServerProcess(functions_dir, "--no-watch") as process:
        yield process


@pytest.fixture
def connect() -> Iterator[Callable[[str, str], Client]]:
    """create_client, with the clients' HTTP connections closed after the test."""
    made: list[Client] = []

    def make(url: str, key: str) -> Client:
        made.append(create_client(url, key))
        return made[-1]

    yield make
    for client in made:
        client.functions._client.close()


def test_invoke_with_the_anon_key(server: ServerProcess, connect: Callable[[str, str], Client]) -> None:
    client = connect(server.base_url, KEYS.anon_key)
    result = client.functions.invoke("hello", {"body": {"name": "Functions"}, "responseType": "json"})
    assert isinstance(result, dict)
    assert result["role"] == "anon"
    assert result["body"] == {"name": "Functions"}
    assert result["client"].startswith("supabase-py/")


def test_invoke_with_the_service_role_key(server: ServerProcess, connect: Callable[[str, str], Client]) -> None:
    client = connect(server.base_url, KEYS.service_role_key)
    raw = client.functions.invoke("hello", {"body": {"n": 1}})
    assert isinstance(raw, bytes)
    assert json.loads(raw)["role"] == "service_role"


@pytest.mark.parametrize(("key", "role"), [(PUBLISHABLE_KEY, "anon"), (SECRET_KEY, "service_role")])
def test_invoke_with_the_new_api_keys(
    server: ServerProcess, connect: Callable[[str, str], Client], key: str, role: str
) -> None:
    client = connect(server.base_url, key)
    result = client.functions.invoke("hello", {"responseType": "json"})
    assert isinstance(result, dict)
    assert result["role"] == role  # the gateway mapped the key to its JWT, as the local stack does


def test_a_bad_key_is_refused_with_401(server: ServerProcess, connect: Callable[[str, str], Client]) -> None:
    forged = KEYS.anon_key[:-6] + "forged"
    client = connect(server.base_url, forged)
    with pytest.raises(FunctionsHttpError) as info:
        client.functions.invoke("hello", {"body": {}})
    assert info.value.status == 401  # the gateway's {"msg":"Invalid JWT"}, surfaced by the client


async def test_async_client(server: ServerProcess) -> None:
    client: AsyncClient = await acreate_client(server.base_url, KEYS.anon_key)
    try:
        result = await client.functions.invoke("hello", {"body": {"a": [1, 2]}, "responseType": "json"})
    finally:
        await client.functions._client.aclose()
    assert isinstance(result, dict)
    assert result == {"role": "anon", "body": {"a": [1, 2]}, "client": result["client"]}


def test_unknown_function(server: ServerProcess, connect: Callable[[str, str], Client]) -> None:
    client = connect(server.base_url, KEYS.anon_key)
    with pytest.raises(FunctionsHttpError) as info:
        client.functions.invoke("nope")
    assert info.value.status == 404


def test_server_log_has_an_access_line(server: ServerProcess, connect: Callable[[str, str], Client]) -> None:
    client = connect(server.base_url, KEYS.anon_key)
    client.functions.invoke("hello", {"headers": {"x-trace": "log-check"}})
    assert "POST /functions/v1/hello 200" in server.output
