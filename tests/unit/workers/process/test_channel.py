"""The worker channel: length-prefixed batches of frames decoded in order, whatever the reads cut them into."""

from __future__ import annotations

import asyncio
import logging
import pickle

import pytest

from edgeruntime.workers.process.channel import Channel, framed
from edgeruntime.workers.process.frames import FROM_WORKER, Cancel, Done, Frame, Sent, TaskStarted, to_wire


def encode(*frames: Frame) -> bytes:
    return framed(*frames)


def batch(*entries: object) -> bytes:
    """A batch as a worker could write it: any list, any entries."""
    data = pickle.dumps(list(entries))
    return len(data).to_bytes(4, "big") + data


def test_frames_split_and_joined_arbitrarily_are_decoded_in_order() -> None:
    seen: list[Frame] = []
    channel = Channel(seen.append, lambda: None)
    frames: list[Frame] = [
        Sent(1, {"type": "http.response.start", "status": 200}),
        Done(1, None),
        TaskStarted(7, "x", "e"),
    ]
    stream = b"".join(encode(f) for f in frames) + encode(*frames)  # a batch of one frame each, then one of all
    for i in range(len(stream)):  # one byte at a time
        channel.data_received(stream[i : i + 1])
    channel.data_received(stream)  # all at once
    assert seen == frames * 4
    for cut in range(len(stream) + 1):  # in two reads, cut anywhere
        seen.clear()
        channel.data_received(stream[:cut])
        channel.data_received(stream[cut:])
        assert seen == frames * 2


def test_a_failing_frame_handler_does_not_stop_the_others() -> None:
    seen: list[Frame] = []

    def handle(frame: Frame) -> None:
        if isinstance(frame, Cancel):
            raise ValueError("bad frame")
        seen.append(frame)

    channel = Channel(handle, lambda: None)
    channel.data_received(encode(Cancel(1), Done(1, None)))
    assert seen == [Done(1, None)]


def test_an_unreadable_frame_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Frame] = []
    channel = Channel(seen.append, lambda: None)
    unknown = ("from", "elsewhere", 99)
    channel.data_received(batch(unknown, to_wire(Done(1, None))) + batch(to_wire(Done(2, None))))
    assert seen == [Done(1, None), Done(2, None)]
    [logged] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert logged.startswith("worker channel: a frame could not be read: not a worker channel frame")


def test_what_is_not_a_batch_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Frame] = []
    channel = Channel(seen.append, lambda: None, reader=FROM_WORKER)
    single = pickle.dumps(to_wire(Done(1, None)))  # a frame on its own is no batch
    channel.data_received(len(single).to_bytes(4, "big") + single + encode(Done(2, None)))
    assert seen == [Done(2, None)]
    assert "a batch could not be read: not a list of frames" in caplog.text


class _Transport(asyncio.Transport):
    """Records what the channel does to its transport."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False
        self.written: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted


class _Evil:
    def __reduce__(self) -> tuple[object, ...]:
        return (print, ("ran in the server",))


def test_the_server_end_closes_on_a_frame_that_holds_a_class(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """What function code in a worker writes is loaded as plain data: a class closes the channel."""
    seen: list[Frame] = []
    channel = Channel(seen.append, lambda: None, reader=FROM_WORKER, name="worker channel of evil")
    transport = _Transport()
    channel.connection_made(transport)
    evil = batch(to_wire(Done(4, None)), (1, _Evil(), 8))
    channel.data_received(encode(Done(1, None)) + evil + encode(Done(2, None)))
    assert seen == [Done(1, None)]  # nothing of the refused batch (unpickled whole before any frame is read), nor after
    assert transport.aborted and channel.closed
    assert "ran in the server" not in capsys.readouterr().out
    refused = "worker channel of evil: closed: the other end sent a batch that cannot be read"
    assert f"{refused}: a worker frame may not hold builtins.print" in caplog.text
    channel.data_received(encode(Done(3, None)))
    assert seen == [Done(1, None)]


def test_the_server_end_closes_on_a_frame_longer_than_it_allows(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Frame] = []
    channel = Channel(seen.append, lambda: None, reader=FROM_WORKER, max_frame_bytes=1024)
    transport = _Transport()
    channel.connection_made(transport)
    channel.data_received((2**32 - 1).to_bytes(4, "big") + b"x" * 10)  # not buffered up to 4 GB
    assert transport.aborted and seen == []
    assert "the other end sent a 4294967295-byte batch (at most 1024)" in caplog.text


def test_a_batch_of_many_frames_longer_than_allowed_closes_the_channel(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Frame] = []
    channel = Channel(seen.append, lambda: None, reader=FROM_WORKER, max_frame_bytes=1024)
    transport = _Transport()
    channel.connection_made(transport)
    channel.data_received(encode(*[Done(i, None) for i in range(1000)]))
    assert transport.aborted and channel.closed and seen == []
    assert "byte batch (at most 1024)" in caplog.text


@pytest.mark.parametrize(
    "data",
    [b"\x80\x05garbage", pickle.dumps([(1, None, None, 9)])[:-3], b""],
    ids=["garbage", "truncated", "empty"],
)
def test_the_server_end_closes_on_a_malformed_batch(data: bytes, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Frame] = []
    channel = Channel(seen.append, lambda: None, reader=FROM_WORKER, name="worker channel of hostile")
    transport = _Transport()
    channel.connection_made(transport)
    channel.data_received(len(data).to_bytes(4, "big") + data + encode(Done(2, None)))
    assert transport.aborted and channel.closed and seen == []
    assert "worker channel of hostile: closed: the other end sent a batch that cannot be read" in caplog.text


def _read_back(written: list[bytes]) -> list[Frame]:
    seen: list[Frame] = []
    Channel(seen.append, lambda: None, reader=FROM_WORKER).data_received(b"".join(written))
    return seen


async def test_the_frames_of_one_turn_are_written_as_one_batch_at_its_end() -> None:
    channel = Channel(lambda f: None, lambda: None)
    transport = _Transport()
    channel.connection_made(transport)
    frames: list[Frame] = [Sent(1, {"type": "http.response.start", "status": 200}), Done(1, None), Done(2, None)]
    for frame in frames:
        channel.send(frame)
    assert transport.written == []
    await asyncio.sleep(0)
    assert len(transport.written) == 1
    assert _read_back(transport.written) == frames


async def test_a_late_channel_writes_after_what_the_rest_of_the_turn_writes_at_its_end() -> None:
    """The server's end (`late`): the worker process its batch wakes runs on the server's core at
    once, so the responses the same turn made, written at its end too, must go first; and the
    frames of the next turn join the batch."""
    order: list[str] = []

    class Recording(_Transport):
        def write(self, data: bytes | bytearray | memoryview) -> None:
            order.append("channel")
            super().write(data)

    loop = asyncio.get_running_loop()
    channel = Channel(lambda f: None, lambda: None, late=True)
    transport = Recording()
    channel.connection_made(transport)
    channel.send(Done(1, None))
    loop.call_soon(order.append, "responses")  # what the turn's other writes do: flushed at its end
    await asyncio.sleep(0)
    assert order == ["responses"]
    channel.send(Done(2, None))  # the next turn's
    await asyncio.sleep(0)
    assert order == ["responses", "channel"]
    assert _read_back(transport.written) == [Done(1, None), Done(2, None)]


async def test_a_frame_that_cannot_be_pickled_is_replaced_and_the_rest_of_its_batch_goes() -> None:
    unsent: list[tuple[object, ...]] = []

    def on_unsent(fields: tuple[object, ...], error: Exception) -> Frame | None:
        unsent.append(fields)
        return Done(int(fields[0]), None, f"{type(error).__name__}")  # type: ignore[call-overload]

    channel = Channel(lambda f: None, lambda: None, on_unsent=on_unsent)
    transport = _Transport()
    channel.connection_made(transport)
    channel.send(Sent(1, {"type": "http.response.start", "status": 200}))
    channel.send(Sent(2, {"type": "http.response.start", "status": 200, "bad": lambda: None}))
    channel.send(Done(1, None))
    channel.flush()
    assert [fields[0] for fields in unsent] == [2]
    assert _read_back(transport.written) == [
        Sent(1, {"type": "http.response.start", "status": 200}),
        Done(2, None, "AttributeError"),
        Done(1, None),
    ]
