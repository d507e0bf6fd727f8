"""Streamed responses (server-sent events) on a real socket, under both isolations and both servers:
chunks reach the client as they are produced, and a client that leaves cancels the stream."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import ServerProcess, write_function

pytestmark = pytest.mark.e2e

TIMEOUT_SEC = 20.0

# Five events 200 ms apart; says in the log how the stream ended.
SSE = """
import asyncio
import logging
from starlette.responses import StreamingResponse
from edgeruntime import serve

logger = logging.getLogger("sse")

async def events():
    sent = 0
    try:
        for i in range(5):
            if i:
                await asyncio.sleep(0.2)
            yield f"data: {i}\\n\\n"
            sent += 1
        logger.warning("stream finished after %d events", sent)
    except BaseException:
        logger.warning("stream cancelled after %d events", sent)
        raise

@serve
async def handler(req):
    return StreamingResponse(events(), media_type="text/event-stream")
"""


async def _events(url: str, count: int) -> list[float]:
    """Read `count` events from `url`; the time each arrived. Leaves (closes the connection) after."""
    arrivals: list[float] = []
    async with (
        httpx.AsyncClient(timeout=TIMEOUT_SEC) as http,
        http.stream("GET", url, headers={"accept": "text/event-stream"}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        buffer = b""
        async for chunk in response.aiter_raw():
            buffer += chunk
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                assert event == f"data: {len(arrivals)}".encode()
                arrivals.append(time.monotonic())
            if len(arrivals) >= count:
                break
    return arrivals


async def _runs(server: ServerProcess) -> list[dict[str, object]]:
    async with httpx.AsyncClient(timeout=TIMEOUT_SEC) as http:
        runs: list[dict[str, object]] = (await http.get(f"{server.base_url}/_edgeruntime/api/runs")).json()["runs"]
    return runs


@pytest.mark.parametrize("isolation", ["inline", "process"])
@pytest.mark.parametrize("server_kind", ["hypercorn", "uvicorn"])
async def test_events_arrive_as_they_are_sent_and_a_client_that_leaves_cancels_the_stream(
    functions_dir: Path, server_kind: str, isolation: str
) -> None:
    write_function(functions_dir, "sse", SSE)
    args = ("--no-watch", "--no-verify-jwt", "--server", server_kind, "--isolation", isolation)
    with ServerProcess(functions_dir, *args) as server:
        arrivals = await _events(server.url("sse"), 5)
        gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
        assert min(gaps) >= 0.15, f"events were held back and sent together: gaps {gaps}"

        # Two events, then the client leaves: the generator is cancelled, and the run says why.
        await _events(server.url("sse"), 2)
        deadline = time.monotonic() + TIMEOUT_SEC
        while "stream cancelled" not in server.output:
            assert time.monotonic() < deadline, server.output
            await asyncio.sleep(0.05)
        while True:
            runs = await _runs(server)
            if len(runs) == 2:
                break
            assert time.monotonic() < deadline, runs
            await asyncio.sleep(0.1)
    output = server.output
    assert output.count("stream finished after 5 events") == 1
    assert "stream cancelled after 2 events" in output or "stream cancelled after 3 events" in output
    cut, whole = runs  # newest first
    assert (whole["http_status"], whole["status"], whole["error"]) == (200, "succeeded", None)
    left = "client disconnected during the response"
    assert (cut["http_status"], cut["status"], cut["error"]) == (200, "failed", left)
