"""supabase-js in headless Chromium, from a page of ANOTHER origin, against a live `edgeruntime serve`.

The page is served by a second local server on another port (so every call is cross-origin, as
from a web app) and loads supabase-js's UMD bundle from it: `npm ci` installs the version pinned in
tests/browser/supabase-js/ once per test session (the npm registry, never a CDN at run time).
Without npm (or the registry) the test is skipped, and fails instead with
EDGERUNTIME_REQUIRE_BROWSER=1 (CI).
"""

from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from edgeruntime.config.project import DEFAULT_JWT_SECRET
from tests.browser.chromium import chromium_page, missing
from tests.helpers import KEYS, ServerProcess, write_function

pytestmark = pytest.mark.e2e

FIXTURE = Path(__file__).parent / "supabase-js"
BUNDLE = Path("node_modules/@supabase/supabase-js/dist/umd/supabase.js")

# A function that answers CORS itself, as the guide's functions do (OPTIONS included).
HELLO = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve
from edgeruntime.cors import with_cors

@serve
@with_cors
async def handler(req: Request) -> JSONResponse:
    body = await req.json()
    return JSONResponse({"message": f"Hello {body['name']}!"})
"""

ECHO = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import InvalidJWT, serve, upgrade_websocket, verify_jwt

@serve
async def handler(req: Request):
    try:
        verify_jwt(req.query_params.get("jwt"))
    except InvalidJWT:
        return JSONResponse({"error": "Invalid token provided"}, status_code=403)
    ws = await upgrade_websocket(req)
    async for message in ws.iter_text():
        await ws.send_text(message)
    return None
"""

CONFIG = """
[functions.echo]
verify_jwt = false
"""

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>supabase-js against edgeruntime</title>
<script src="/supabase.js"></script></head>
<body><p>cross-origin client</p>
<script>
async function invoke(url, anonKey, name, token) {
  const client = supabase.createClient(url, anonKey);
  const { data, error } = await client.functions.invoke(name, {
    body: { name: "browser" },
    headers: { Authorization: `Bearer ${token}` },
  });
  if (!error) return { data };
  const status = error.context && typeof error.context.status === "number" ? error.context.status : null;
  return { error: error.name, status, message: error.message };
}

function echo(wsUrl, message) {
  return new Promise((resolve) => {
    const socket = new WebSocket(wsUrl);
    socket.onopen = () => socket.send(message);
    socket.onmessage = (event) => { resolve({ echoed: event.data }); socket.close(); };
    socket.onerror = () => resolve({ error: "websocket error" });
  });
}
</script></body></html>
"""


@pytest.fixture(scope="session")
def supabase_js(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """supabase-js's UMD bundle, installed with `npm ci` from the pinned fixture."""
    npm = shutil.which("npm")
    if npm is None:
        missing("the supabase-js browser test needs npm (Debian: apt-get install npm)")
    assert npm is not None
    target = tmp_path_factory.mktemp("supabase-js")
    for name in ("package.json", "package-lock.json"):
        shutil.copy(FIXTURE / name, target / name)
    try:
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=target,
            check=True,
            capture_output=True,
            timeout=300,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        output = getattr(exc, "stderr", b"") or b""
        missing(f"npm ci could not install supabase-js: {output.decode(errors='replace')[-500:]}")
    return target / BUNDLE


@pytest.fixture
def page_origin(tmp_path: Path, supabase_js: Path) -> Iterator[str]:
    """The page's own origin: a second local server, on another port than `edgeruntime serve`."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(PAGE, encoding="utf-8")
    shutil.copy(supabase_js, site / "supabase.js")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def test_supabase_js_from_another_origin_reads_the_gateways_errors_and_opens_a_websocket(
    functions_dir: Path, page_origin: str
) -> None:
    write_function(functions_dir, "hello", HELLO)
    write_function(functions_dir, "echo", ECHO)
    (functions_dir.parent / "config.toml").write_text(CONFIG, encoding="utf-8")
    expired = jwt.encode(
        {"iss": "supabase-demo", "role": "anon", "exp": int(time.time()) - 60}, DEFAULT_JWT_SECRET, algorithm="HS256"
    )
    errors: list[str] = []
    with ServerProcess(functions_dir, "--no-watch") as server, chromium_page() as page:
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{page_origin}/index.html")
        assert page.evaluate("typeof supabase.createClient") == "function"
        url, anon = server.base_url, KEYS.anon_key

        def invoke(name: str, token: str) -> dict[str, Any]:
            result: dict[str, Any] = page.evaluate(
                "([url, anon, name, token]) => invoke(url, anon, name, token)", [url, anon, name, token]
            )
            return result

        # (a) a valid token: the function's data.
        assert invoke("hello", anon) == {"data": {"message": "Hello browser!"}}
        # (b) an expired token: the gateway's 401, readable: FunctionsHttpError, not a fetch error.
        assert invoke("hello", expired) == {
            "error": "FunctionsHttpError",
            "status": 401,
            "message": "Edge Function returned a non-2xx status code",
        }
        # (c) an unknown function: the gateway's 404 (its preflight answered by the gateway).
        assert invoke("nope", anon) == {
            "error": "FunctionsHttpError",
            "status": 404,
            "message": "Edge Function returned a non-2xx status code",
        }
        # (d) a WebSocket to the echo function with the token in the query string.
        ws_url = f"ws://127.0.0.1:{server.port}/functions/v1/echo?jwt={anon}"
        assert page.evaluate("([u, m]) => echo(u, m)", [ws_url, "hello over a websocket"]) == {
            "echoed": "hello over a websocket"
        }
    assert errors == []
