"""functions/hello: the smallest function, and the gateway's JWT check in front of it."""

from __future__ import annotations

from edgeruntime.testing import EdgeClient


async def test_hello(client: EdgeClient) -> None:
    r = await client.invoke("hello", method="GET", auth="anon")
    assert r.status_code == 200
    assert r.json() == {"message": "Hello from edgeruntime!", "path": "/hello"}


async def test_hello_needs_a_key(client: EdgeClient) -> None:
    r = await client.invoke("hello", method="GET", auth=None)
    assert r.status_code == 401
