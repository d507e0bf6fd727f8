"""Who may see the dashboard: on loopback, loopback names (else 403); elsewhere the service-role key (else 401)."""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
from starlette.routing import Route

from edgeruntime.config.keys import demo_keys, sign_demo_key
from edgeruntime.config.project import DEFAULT_JWT_SECRET
from edgeruntime.core.types import Message
from edgeruntime.dashboard.access import RefusalLog, host_allowed, is_loopback
from edgeruntime.testing import EdgeClient
from tests.helpers import KEYS, SERVICE_ROLE

#: A project's own keys (its JWT secret in config.toml, its secret key in the env), not the public demo ones.
OWN_SECRET = "our-own-jwt-secret-nobody-else-knows-0123456789"
OWN = dataclasses.replace(demo_keys(OWN_SECRET), secret_key="sb_secret_ours_0123456789abcdefghij")
OWN_SERVICE_ROLE = {"Authorization": f"Bearer {OWN.service_role_key}"}
OWN_ANON = {"Authorization": f"Bearer {OWN.anon_key}"}

#: Every endpoint of the dashboard, its API and the metrics: (method, path).
ENDPOINTS = [
    ("GET", "/_edgeruntime/"),
    ("GET", "/_edgeruntime/static/dashboard.js"),
    ("GET", "/_edgeruntime/api/functions"),
    ("GET", "/_edgeruntime/api/cron"),
    ("POST", "/_edgeruntime/api/cron/nope/run"),
    ("POST", "/_edgeruntime/api/cron/nope/pause"),
    ("POST", "/_edgeruntime/api/cron/nope/resume"),
    ("GET", "/_edgeruntime/api/runs"),
    ("GET", "/_edgeruntime/api/queue"),
    ("GET", "/_edgeruntime/api/failed"),
    ("POST", "/_edgeruntime/api/failed/retry-all"),
    ("POST", "/_edgeruntime/api/failed/1/retry"),
    ("DELETE", "/_edgeruntime/api/failed/1"),
    ("GET", "/_internal/metrics"),
]


def own_keys(hello_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Give the project of `hello_dir` the keys `OWN`."""
    (hello_dir.parent / "config.toml").write_text(f'[auth]\njwt_secret = "{OWN_SECRET}"\n')
    monkeypatch.setenv("SUPABASE_SECRET_KEYS", f'{{"default":"{OWN.secret_key}"}}')


@pytest.fixture
async def public(hello_dir: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[EdgeClient]:
    """A server bound to every interface (never actually bound here: the rule reads the host), with its own keys."""
    own_keys(hello_dir, monkeypatch)
    async with EdgeClient(hello_dir, host="0.0.0.0") as client:
        yield client


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_non_loopback_host_needs_the_service_role_key(public: EdgeClient, method: str, path: str) -> None:
    for headers in ({}, OWN_ANON, {"apikey": OWN.publishable_key}, {"Authorization": "Bearer nonsense"}):
        r = await public.request(method, path, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.json() == {"msg": "the dashboard needs the service role key on a non-loopback host"}
        assert r.headers["www-authenticate"].startswith('Basic realm="edgeruntime dashboard"')
    r = await public.request(method, path, headers=OWN_SERVICE_ROLE)
    assert r.status_code != 401 and r.status_code < 500, r.text


@pytest.mark.parametrize(
    "headers",
    [
        OWN_SERVICE_ROLE,
        {"apikey": OWN.secret_key},
        {"apikey": OWN.service_role_key},
        {"Authorization": f"Bearer {OWN.secret_key}"},
        {"Authorization": "Basic " + base64.b64encode(f"admin:{OWN.secret_key}".encode()).decode()},
        {"Authorization": "Basic " + base64.b64encode(f":{OWN.service_role_key}".encode()).decode()},
        {"Authorization": f"Bearer {sign_demo_key('service_role', OWN_SECRET)}"},
    ],
)
async def test_service_role_key_forms(public: EdgeClient, headers: dict[str, str]) -> None:
    r = await public.request("GET", "/_edgeruntime/api/functions", headers=headers)
    assert r.status_code == 200 and [f["name"] for f in r.json()["functions"]] == ["hello"]


async def test_wrong_secret_and_garbage_are_refused(public: EdgeClient) -> None:
    forged = sign_demo_key("service_role", "another-secret-that-is-at-least-32-characters")
    for headers in (
        {"Authorization": f"Bearer {forged}"},
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Basic " + base64.b64encode(b"admin:wrong").decode()},
        {"apikey": "sb_secret_wrong"},
    ):
        assert (await public.request("GET", "/_edgeruntime/api/runs", headers=headers)).status_code == 401


async def test_functions_and_health_keep_their_own_rules(public: EdgeClient) -> None:
    assert (await public.request("GET", "/_internal/health")).status_code == 200
    assert (await public.invoke("hello", auth="anon")).status_code == 200


async def test_loopback_host_is_open(hello_dir: Path) -> None:
    async with EdgeClient(hello_dir) as client:  # 127.0.0.1, the default
        for method, path in ENDPOINTS:
            r = await client.request(method, path)
            assert r.status_code != 401 and r.status_code < 500, (path, r.text)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.53", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.internal", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


async def test_state_changing_requests_from_other_sites_are_refused(hello_dir: Path) -> None:
    async with EdgeClient(hello_dir) as client:
        for headers in ({"origin": "https://evil.example"}, {"sec-fetch-site": "cross-site"}):
            r = await client.request("POST", "/_edgeruntime/api/failed/retry-all", headers=headers)
            assert (r.status_code, r.json()) == (403, {"error": "cross-origin request refused"})
        # Reading is harmless (the browser keeps the answer from the other site); the page itself is same-origin.
        assert (
            await client.request("GET", "/_edgeruntime/api/runs", headers={"origin": "https://evil.example"})
        ).is_success
        same = {"origin": "http://127.0.0.1:54321", "sec-fetch-site": "same-origin"}
        assert (await client.request("POST", "/_edgeruntime/api/failed/retry-all", headers=same)).status_code == 200
        assert (await client.request("POST", "/_edgeruntime/api/failed/retry-all")).status_code == 200  # curl


# -- DNS rebinding: only loopback names (and allowed_hosts) on a dashboard open on loopback ------------

REBINDING = {"host": "rebind.evil.example:54321", "origin": "http://rebind.evil.example:54321"}
HOST_REFUSED = {
    "error": "Host not allowed: the dashboard on a loopback address is served to loopback names only "
    "(localhost, 127.0.0.1, [::1]) and to [dashboard] allowed_hosts"
}


def every_route(client: EdgeClient) -> list[tuple[str, str]]:
    """(method, path) of every route of the dashboard app as the code defines it, params filled in."""
    found: list[tuple[str, str]] = []
    for route in client.dashboard.asgi.routes:
        assert isinstance(route, Route)
        path = re.sub(r"\{(\w+)(:int)?\}", lambda m: "1" if m.group(2) else "nope", route.path)
        found.extend((method, path) for method in sorted(route.methods or ()))
    return found


async def test_every_route_refuses_a_rebinding_host(hello_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with EdgeClient(hello_dir) as client:
        routes = every_route(client)
        # The table at the top (and any route added later) is in there.
        assert {(m, p.replace("dashboard.js", "nope")) for m, p in ENDPOINTS} <= set(routes)
        extra = [("GET", "/_edgeruntime/api/nope"), ("GET", "/_edgeruntime/static/nope.js"), ("PUT", "/_edgeruntime/")]
        for method, path in routes + extra:
            for host in (
                "rebind.evil.example:54321",
                "rebind.evil.example",
                "127.0.0.1.nip.io",
                "localhost.evil.example",
            ):
                headers = {**REBINDING, "host": host, "origin": f"http://{host}"}
                r = await client.request(method, path, headers=headers)
                assert r.status_code == 403, (method, path, host)
                assert method == "HEAD" or r.json() == HOST_REFUSED
            r = await client.request(method, path, headers={"host": "127.0.0.1:54321"})
            assert r.status_code not in (401, 403) and r.status_code < 500, (method, path, r.text)
    refusals = [rec for rec in caplog.records if "not a loopback name (DNS rebinding?)" in rec.getMessage()]
    assert len(refusals) == 1  # and not one per request
    assert "Host 'rebind.evil.example:54321'" in refusals[0].getMessage()
    assert refusals[0].levelname == "WARNING"


async def test_a_rebinding_host_cannot_act(hello_dir: Path) -> None:
    (hello_dir.parent / "config.toml").write_text('[cron.tick]\nfunction = "hello"\nschedule = "@daily"\n')
    async with EdgeClient(hello_dir) as client:
        for action in ("pause", "run"):
            r = await client.request("POST", f"/_edgeruntime/api/cron/tick/{action}", headers=REBINDING)
            assert r.status_code == 403
        cron = (await client.request("GET", "/_edgeruntime/api/cron")).json()["cron"]
        assert cron[0]["paused"] is False and cron[0]["ticks"] == []


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:54321",
        "127.0.0.1",
        "127.9.8.7:80",
        "localhost",
        "LOCALHOST:54321",
        "localhost.:54321",
        "app.localhost:3000",
        "[::1]",
        "[::1]:54321",
        "[::ffff:127.0.0.1]:54321",
    ],
)
async def test_loopback_hosts_are_served_and_names_built_on_them_are_not(hello_dir: Path, host: str) -> None:
    lookalike = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    async with EdgeClient(hello_dir) as client:
        r = await client.request(
            "GET", "/_edgeruntime/api/functions", headers={"host": host, "origin": f"http://{host}"}
        )
        assert r.status_code == 200, r.text
        r = await client.request("GET", "/_internal/metrics", headers={"host": host})
        assert r.status_code == 200
        r = await client.request("GET", "/_internal/metrics", headers={"host": f"{lookalike}.evil.example:54321"})
        assert r.status_code == 403


async def test_the_service_role_key_is_served_under_any_host(hello_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own_keys(hello_dir, monkeypatch)
    async with EdgeClient(hello_dir) as client:
        for key in (OWN_SERVICE_ROLE, {"apikey": OWN.secret_key}):
            r = await client.request("GET", "/_edgeruntime/api/runs", headers={**REBINDING, **key})
            assert r.status_code == 200
        r = await client.request("GET", "/_edgeruntime/api/runs", headers={**REBINDING, **OWN_ANON})
        assert r.status_code == 403


# The local stack's secret key and its demo JWT secret are printed in Supabase's docs: a page that
# rebinds its name to 127.0.0.1 is same-origin with itself, so it may send them in any header.
PUBLIC_KEYS = [
    {"apikey": KEYS.secret_key},
    SERVICE_ROLE,
    {"apikey": KEYS.service_role_key},
    {"Authorization": f"Bearer {KEYS.secret_key}"},
    {"Authorization": "Basic " + base64.b64encode(f"x:{KEYS.secret_key}".encode()).decode()},
    {"Authorization": "Bearer " + jwt.encode({"role": "service_role"}, DEFAULT_JWT_SECRET, algorithm="HS256")},
    {"apikey": jwt.encode({"role": "service_role", "aud": "authenticated"}, DEFAULT_JWT_SECRET, algorithm="HS256")},
]


@pytest.mark.parametrize("key", PUBLIC_KEYS)
async def test_a_rebinding_page_cannot_pass_with_the_public_demo_keys(hello_dir: Path, key: dict[str, str]) -> None:
    (hello_dir.parent / "config.toml").write_text('[cron.tick]\nfunction = "hello"\nschedule = "@daily"\n')
    async with EdgeClient(hello_dir) as client:
        for method, path in (("POST", "/_edgeruntime/api/cron/tick/pause"), ("GET", "/_edgeruntime/api/failed")):
            r = await client.request(method, path, headers={**REBINDING, **key})
            assert (r.status_code, r.json()) == (403, HOST_REFUSED)
        cron = (await client.request("GET", "/_edgeruntime/api/cron")).json()["cron"]
        assert cron[0]["paused"] is False


@pytest.mark.parametrize("key", PUBLIC_KEYS)
async def test_off_loopback_the_public_demo_keys_are_only_a_demo_servers_keys(
    hello_dir: Path, monkeypatch: pytest.MonkeyPatch, key: dict[str, str]
) -> None:
    """With the demo secret every key is public and they are the server's keys (as DESIGN.md has it:
    off loopback the dashboard needs the service-role key; `serve` warns about the secret at start).
    A project with its own JWT secret has keys of its own: the demo ones are refused, saying why."""
    async with EdgeClient(hello_dir, host="0.0.0.0") as client:
        for path in ("/_edgeruntime/api/failed", "/_internal/metrics"):
            assert (await client.request("GET", path, headers=key)).status_code == 200, path
    refused = {
        "msg": "the dashboard needs the service role key on a non-loopback host: the local demo keys are public, "
        "and not this server's ('edgeruntime keys' prints them)"
    }
    (hello_dir.parent / "config.toml").write_text(f'[auth]\njwt_secret = "{OWN_SECRET}"\n')
    async with EdgeClient(hello_dir, host="0.0.0.0") as client:
        for path in ("/_edgeruntime/api/failed", "/_internal/metrics"):
            r = await client.request("GET", path, headers=key)
            assert (r.status_code, r.json()) == (401, refused), path
        r = await client.request("GET", "/_internal/metrics", headers={"apikey": client.settings.keys.secret_key})
        assert r.status_code == 200


async def test_allowed_hosts_serve_a_proxied_dashboard(hello_dir: Path) -> None:
    (hello_dir.parent / "config.toml").write_text(
        '[dashboard]\nallowed_hosts = ["dash.example.com", "*.corp.example:8443"]\n'
    )
    async with EdgeClient(hello_dir) as client:
        for host, served in [
            ("dash.example.com", True),
            ("DASH.example.com:9999", True),
            ("a.corp.example:8443", True),
            ("a.b.corp.example:8443", True),
            ("a.corp.example:8444", False),
            ("a.corp.example", False),
            ("corp.example:8443", False),
            ("dash.example.com.evil.example", False),
            ("evildash.example.com", False),
        ]:
            r = await client.request("GET", "/_internal/metrics", headers={"host": host})
            assert (r.status_code == 200) is served, (host, r.status_code)


async def test_a_request_without_host_is_refused(hello_dir: Path) -> None:
    async with EdgeClient(hello_dir) as client:
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/_internal/metrics", "raw_path": b"/_internal/metrics"}
        await client.app.handle_http({**scope, "headers": [], "query_string": b""}, receive, send)
        assert sent[0]["status"] == 403


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        ("localhost:54321", True),
        ("127.0.0.1:1", True),
        ("[::1]:8080", True),
        ("foo.localhost", True),
        (None, False),
        ("", False),
        (":54321", False),
        ("127.0.0.1:", False),
        ("127.0.0.1:abc", False),
        ("127.0.0.1:123456", False),
        ("127.0.0.1:٥٥", False),  # digits, but not ASCII ones
        ("[::1", False),
        ("[::1]x", False),
        ("[evil.example]", False),
        ("::1", False),
        ("2130706433", False),
        ("evil@127.0.0.1", False),
        ("127.0.0.1 evil.example", False),
        ("localhost.evil.example", False),
        ("0.0.0.0", False),
        ("[::]", False),
    ],
)
def test_host_allowed(value: str | None, allowed: bool) -> None:
    assert host_allowed(value) is allowed


def test_refusals_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    log = RefusalLog(interval_sec=10, clock=lambda: now[0])
    for _ in range(1000):
        log.refused("evil.example")
    now[0] += 10
    log.refused("x\nFAKE LOG LINE " + "y" * 1000)
    lines = [rec.getMessage() for rec in caplog.records if "DNS rebinding" in rec.getMessage()]
    assert len(lines) == 2
    assert "Host 'evil.example'" in lines[0] and "more refused" not in lines[0]
    assert "(999 more refused since the last such line)" in lines[1]
    assert "\n" not in lines[1] and "\\nFAKE LOG LINE" in lines[1] and "y" * 300 not in lines[1]


async def test_repeated_access_headers_are_400(public: EdgeClient, hello_dir: Path) -> None:
    for headers in (
        [("authorization", f"Bearer {OWN.service_role_key}"), ("authorization", "Bearer nonsense")],
        [("apikey", OWN.secret_key), ("apikey", "nonsense")],
        [("host", "127.0.0.1:54321"), ("host", "rebind.evil.example")],
    ):
        r = await public.request("GET", "/_edgeruntime/api/runs", headers=headers)
        assert r.status_code == 400
        assert r.json()["error"].startswith("the request has more than one ")


# -- attacks that hold, kept so ------------------------------------------------------------------


async def test_a_key_in_the_query_string_or_a_cookie_or_expired_is_refused(public: EdgeClient) -> None:
    expired = jwt.encode({"role": "service_role", "exp": 1}, OWN_SECRET, algorithm="HS256")
    unsigned = jwt.encode({"role": "service_role"}, "", algorithm="none")
    for params, headers in (
        ({"apikey": OWN.secret_key}, {}),
        ({"access_token": OWN.service_role_key}, {}),
        ({}, {"cookie": f"apikey={OWN.secret_key}; sb-access-token={OWN.service_role_key}"}),
        ({}, {"Authorization": f"Bearer {expired}"}),
        ({}, {"Authorization": f"Bearer {unsigned}"}),
    ):
        r = await public.request("GET", "/_edgeruntime/api/failed", params=params, headers=headers)
        assert r.status_code == 401, (params, headers)


async def test_a_browser_holding_the_key_cannot_be_driven_by_another_site(public: EdgeClient) -> None:
    basic = {"Authorization": "Basic " + base64.b64encode(f"admin:{OWN.secret_key}".encode()).decode()}
    # A form or no-cors fetch of another site, a sandboxed frame or file:// page (Origin: null).
    for origin in ("https://evil.example", "null", "http://localhost:3000"):
        r = await public.request(
            "POST", "/_edgeruntime/api/failed/retry-all", headers={**basic, "host": "10.0.0.5:54321", "origin": origin}
        )
        assert (r.status_code, r.json()) == (403, {"error": "cross-origin request refused"}), origin
    same = {**basic, "host": "10.0.0.5:54321", "origin": "http://10.0.0.5:54321"}
    assert (await public.request("POST", "/_edgeruntime/api/failed/retry-all", headers=same)).status_code == 200


async def test_other_sites_get_no_cors_headers_from_the_dashboard(hello_dir: Path) -> None:
    evil = {"origin": "https://evil.example"}
    async with EdgeClient(hello_dir) as client:
        for method, path, headers in (
            ("GET", "/_edgeruntime/api/failed", evil),
            ("GET", "/_internal/metrics", evil),
            ("OPTIONS", "/_edgeruntime/api/failed/retry-all", {**evil, "access-control-request-method": "POST"}),
        ):
            r = await client.request(method, path, headers=headers)
            assert not [h for h in r.headers if h.startswith("access-control-")], (method, path, r.headers)
