"""The window of one forwarded request's messages, at each end of the worker channel."""

from __future__ import annotations

import asyncio

from edgeruntime.workers.process.child import RequestBody, _raises_when_gone
from edgeruntime.workers.process.frames import ACK_BATCH, WINDOW, Consumed, Frame
from edgeruntime.workers.process.parent import _Call
from tests.unit.asgi import settle


class FakeChannel:
    """A channel end that keeps what was sent."""

    def __init__(self) -> None:
        self.sent: list[Frame] = []
        self.closed = False

    def send(self, frame: Frame) -> None:
        self.sent.append(frame)


async def test_the_worker_acknowledges_what_the_function_read_in_batches() -> None:
    channel = FakeChannel()
    body = RequestBody(7, {"type": "websocket.connect"}, channel)  # type: ignore[arg-type]
    for n in range(2 * ACK_BATCH + 1):
        body.push({"type": "websocket.receive", "text": str(n)})
    assert (await body.receive())["type"] == "websocket.connect"  # it came with the request: outside the window
    for _ in range(2 * ACK_BATCH + 1):
        await body.receive()
    assert channel.sent == [Consumed(7, ACK_BATCH), Consumed(7, ACK_BATCH)]


async def test_a_function_that_sends_a_window_ahead_of_its_client_waits() -> None:
    channel = FakeChannel()
    body = RequestBody(7, {"type": "websocket.connect"}, channel)  # type: ignore[arg-type]
    sent = 0

    async def flood() -> None:
        nonlocal sent
        for _ in range(3 * WINDOW):
            await body.sent()
            sent += 1

    task = asyncio.get_running_loop().create_task(flood())
    await settle()
    assert sent == WINDOW - 1  # the next send waits for the server to hand some to the client
    body.delivered(ACK_BATCH)
    await settle()
    assert sent == WINDOW - 1 + ACK_BATCH
    channel.closed = True  # the server is gone: nothing will be acknowledged, nobody waits for it
    body.delivered(0)
    await settle()
    assert task.done() and sent == 3 * WINDOW


async def test_the_server_sends_a_window_of_messages_ahead_of_the_function() -> None:
    call = _Call(asyncio.get_running_loop())
    forwarded = 0

    async def pump() -> None:
        nonlocal forwarded
        for _ in range(3 * WINDOW):
            await call.wait_for_room()
            call.unacked += 1
            forwarded += 1

    task = asyncio.get_running_loop().create_task(pump())
    await settle()
    assert forwarded == WINDOW
    call.consumed(ACK_BATCH)
    await settle()
    assert forwarded == WINDOW + ACK_BATCH
    call.consumed(10**6)  # a worker claiming more than it was sent frees a window, no more
    await settle()
    assert forwarded == 2 * WINDOW + ACK_BATCH
    task.cancel()


def test_a_send_to_a_client_that_left_raises_only_where_the_server_would() -> None:
    assert _raises_when_gone({"asgi": {"version": "3.0", "spec_version": "2.4"}})  # Uvicorn's WebSockets
    assert not _raises_when_gone({"asgi": {"version": "3.0", "spec_version": "2.3"}})  # Hypercorn, Uvicorn's HTTP
    assert not _raises_when_gone({"asgi": {"version": "3.0"}})
    assert not _raises_when_gone({})
