"""Who may see the dashboard: open on loopback, the service-role key elsewhere (else 401)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgeruntime.config.keys import sign_demo_key
from edgeruntime.config.project import DEFAULT_JWT_SECRET
from edgeruntime.dashboard.access import is_loopback
from edgeruntime.testing import EdgeClient
from tests.helpers import ANON, KEYS, SERVICE_ROLE

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


@pytest.fixture
async def public(hello_dir: Path) -> AsyncIterator[EdgeClient]:
    """A server bound to every interface (never actually bound here: the rule reads the host)."""
    async with EdgeClient(hello_dir, host="0.0.0.0") as client:
        yield client


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_non_loopback_host_needs_the_service_role_key(public: EdgeClient, method: str, path: str) -> None:
    for headers in ({}, ANON, {"apikey": KEYS.publishable_key}, {"Authorization": "Bearer nonsense"}):
        r = await public.request(method, path, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.json() == {"msg": "the dashboard needs the service role key on a non-loopback host"}
        assert r.headers["www-authenticate"].startswith('Basic realm="edgeruntime dashboard"')
    r = await public.request(method, path, headers=SERVICE_ROLE)
    assert r.status_code != 401 and r.status_code < 500, r.text


@pytest.mark.parametrize(
    "headers",
    [
        SERVICE_ROLE,
        {"apikey": KEYS.secret_key},
        {"apikey": KEYS.service_role_key},
        {"Authorization": f"Bearer {KEYS.secret_key}"},
        {"Authorization": "Basic " + base64.b64encode(f"admin:{KEYS.secret_key}".encode()).decode()},
        {"Authorization": "Basic " + base64.b64encode(f":{KEYS.service_role_key}".encode()).decode()},
    ],
)
async def test_service_role_key_forms(public: EdgeClient, headers: dict[str, str]) -> None:
    r = await public.request("GET", "/_edgeruntime/api/functions", headers=headers)
    assert r.status_code == 200 and [f["name"] for f in r.json()["functions"]] == ["hello"]


async def test_wrong_secret_and_garbage_are_refused(public: EdgeClient) -> None:
    forged = sign_demo_key("service_role", "another-secret-that-is-at-least-32-characters")
    assert sign_demo_key("service_role", DEFAULT_JWT_SECRET) == KEYS.service_role_key
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
