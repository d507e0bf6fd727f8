"""The bundled functions in functions/, through the edge_client fixture (the repo's functions dir)."""

from __future__ import annotations

import time

import pytest

from edgeruntime.testing import EdgeClient


async def test_hello(edge_client: EdgeClient) -> None:
    r = await edge_client.invoke("hello", method="GET")
    assert r.status_code == 200
    assert r.json() == {"message": "Hello from edgeruntime!", "path": "/hello"}


async def test_basic_pattern_answers_202_then_processes(edge_client: EdgeClient) -> None:
    """The seed's Basic Pattern: 202 {"accepted": true} at once, the work after the response."""
    r = await edge_client.invoke("basic-background", json={"userId": "u-1", "action": "signup"})
    assert r.status_code == 202
    assert r.json() == {"accepted": True}
    module = edge_client.module("basic-background")
    assert {"userId": "u-1", "action": "signup"} not in module.PROCESSED
    await edge_client.drain()
    assert {"userId": "u-1", "action": "signup"} in module.PROCESSED


async def test_basic_pattern_response_does_not_wait(edge_client: EdgeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    await edge_client.invoke("basic-background", json={"userId": "warm", "action": "up"})
    await edge_client.drain()
    monkeypatch.setattr(edge_client.module("basic-background"), "STEP_SECONDS", 0.4)
    started = time.perf_counter()
    r = await edge_client.invoke("basic-background", json={"userId": "u-2", "action": "slow"})
    assert r.status_code == 202
    assert time.perf_counter() - started < 0.3  # three 0.4 s steps run after the response
    assert len(edge_client.pending()) == 1
    await edge_client.drain()


async def test_bundled_functions_take_their_clients_from_shared(edge_client: EdgeClient) -> None:
    """One definition of the per-worker clients (functions/_shared/clients.py), not a copy per function."""
    import httpx

    from tests.examples.conftest import REPO

    copies = [
        path.parent.name
        for path in sorted((REPO / "functions").glob("*/index.py"))
        if "httpx.AsyncClient(" in path.read_text() or "AsyncClientOptions(" in path.read_text()
    ]
    assert copies == []
    # Each worker still gets its own pool: two functions' modules hold two clients.
    await edge_client.invoke("retry", json={})
    await edge_client.invoke("tracked-job", json={})
    retry, tracked = edge_client.module("retry").http, edge_client.module("tracked-job").http
    assert isinstance(retry, httpx.AsyncClient) and isinstance(tracked, httpx.AsyncClient)
    assert retry is not tracked
