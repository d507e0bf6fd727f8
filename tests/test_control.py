"""The control channel of a serving process (``--workers N``), driven in-process over a socket pair."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from edgeruntime.exceptions import SiblingsUnavailable
from edgeruntime.serving import control
from edgeruntime.serving.control import ControlChannel, decode, encode, inherited_socket


@dataclass
class Supervisor:
    """The supervisor's end, played by the test."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def read(self, *, heartbeats: bool = False) -> dict[str, Any]:
        """The next message (the heartbeats skipped, unless asked for)."""
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 10)
            message = decode(line)
            assert message is not None, line
            if heartbeats or message != {"type": "alive"}:
                return message

    def send(self, message: dict[str, Any] | bytes) -> None:
        self.writer.write(message if isinstance(message, bytes) else encode(message))


@dataclass
class Running:
    channel: ControlChannel
    supervisor: Supervisor
    stop: asyncio.Event
    task: asyncio.Task[None]


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    ours, theirs = socket.socketpair()

    def boom() -> Any:
        raise RuntimeError("no")

    channel = ControlChannel(theirs, {"metrics": lambda: [1, 2], "broken": boom})
    reader, writer = await asyncio.open_connection(sock=ours)
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(channel.run(stop))
    try:
        yield Running(channel, Supervisor(reader, writer), stop, task)
    finally:
        writer.close()
        await asyncio.wait_for(task, 10)


def test_messages_are_json_lines_and_anything_else_is_refused() -> None:
    assert encode({"type": "ready"}) == b'{"type":"ready"}\n'
    assert decode(b'{"type":"collect","id":3}\n') == {"type": "collect", "id": 3}
    for line in (b"", b"not json\n", b"[1, 2]\n", b'{"id": 1}\n', b'{"type": 7}\n', b"\x80\x81\n"):
        assert decode(line) is None, line


async def test_the_event_loop_says_alive_every_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "HEARTBEAT_SEC", 0.05)
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(ControlChannel(theirs).run(stop))
    supervisor = Supervisor(reader, writer)
    try:
        started = time.monotonic()
        for _ in range(3):
            assert await supervisor.read(heartbeats=True) == {"type": "alive"}
        assert time.monotonic() - started >= 0.1
    finally:
        writer.close()
        await asyncio.wait_for(task, 10)
    assert stop.is_set()  # the supervisor gone: the heartbeat ended with the channel


async def test_ready_is_sent_once_even_before_the_channel_is_read(running: Running) -> None:
    running.channel.ready()
    running.channel.ready()
    assert await running.supervisor.read() == {"type": "ready"}
    running.supervisor.send({"type": "collect", "id": 1, "what": "metrics"})
    # The next message is the answer: no second "ready".
    assert await running.supervisor.read() == {"type": "collected", "id": 1, "data": [1, 2]}


async def test_collect_answers_with_the_collectors_data_or_an_error(running: Running) -> None:
    running.supervisor.send({"type": "collect", "id": 7, "what": "metrics"})
    assert await running.supervisor.read() == {"type": "collected", "id": 7, "data": [1, 2]}
    running.supervisor.send({"type": "collect", "id": 8, "what": "secrets"})
    answer = await running.supervisor.read()
    assert answer["id"] == 8 and "nothing to collect as 'secrets'" in answer["error"]
    running.supervisor.send({"type": "collect", "id": 9, "what": "broken"})
    answer = await running.supervisor.read()
    assert answer["id"] == 9 and answer["error"] == "collecting broken failed: no"


async def test_malformed_messages_are_ignored_and_the_channel_goes_on(running: Running) -> None:
    for junk in (b"garbage\n", b'{"type":"collect"}\n', b'{"type":"collect","id":"x","what":"metrics"}\n'):
        running.supervisor.send(junk)
    running.supervisor.send({"type": "collect", "id": 2, "what": "metrics"})
    assert await running.supervisor.read() == {"type": "collected", "id": 2, "data": [1, 2]}
    assert not running.stop.is_set()


async def test_concurrent_gathers_ask_the_supervisor_once(running: Running) -> None:
    gathers = [asyncio.ensure_future(running.channel.gather("metrics")) for _ in range(20)]
    asked = await running.supervisor.read()
    assert (asked["type"], asked["what"]) == ("gather", "metrics")
    running.supervisor.send({"type": "gathered", "id": asked["id"], "data": [["a"], ["b"]]})
    assert await asyncio.gather(*gathers) == [[["a"], ["b"]]] * 20
    # Once answered, the next scrape asks again.
    later = asyncio.ensure_future(running.channel.gather("metrics"))
    again = await running.supervisor.read()
    assert again["id"] != asked["id"]
    running.supervisor.send({"type": "gathered", "id": again["id"], "data": []})
    assert await later == []


async def test_a_gather_the_supervisor_refuses_raises_siblings_unavailable(running: Running) -> None:
    gather = asyncio.ensure_future(running.channel.gather("metrics"))
    asked = await running.supervisor.read()
    running.supervisor.send({"type": "gathered", "id": asked["id"], "error": "serving process [12] did not answer"})
    with pytest.raises(SiblingsUnavailable, match=r"serving process \[12\] did not answer"):
        await gather


async def test_a_gather_nobody_answers_times_out(running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "GATHER_TIMEOUT_SEC", 0.2)
    with pytest.raises(SiblingsUnavailable, match="did not answer within 0.2 s"):
        await running.channel.gather("metrics")


async def test_the_supervisor_gone_stops_the_serving_process(running: Running) -> None:
    gather = asyncio.ensure_future(running.channel.gather("functions"))
    await running.supervisor.read()
    running.supervisor.writer.close()
    await asyncio.wait_for(running.stop.wait(), 10)
    with pytest.raises(SiblingsUnavailable, match="supervisor of the serving processes has gone"):
        await gather


async def test_an_answer_too_large_for_a_line_is_sent_as_an_error(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "MAX_MESSAGE_BYTES", 40)
    running.supervisor.send({"type": "collect", "id": 1, "what": "metrics"})
    assert await running.supervisor.read() == {"type": "collected", "id": 1, "error": "answer too large"}


def test_inherited_sockets_are_checked_and_kept_from_child_processes() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        os.set_inheritable(listener.fileno(), True)
        sock = inherited_socket(os.dup(listener.fileno()), listening=True)
        with sock:
            assert not os.get_inheritable(sock.fileno())
        with pytest.raises(ValueError, match="is not a connected Unix socket"):
            inherited_socket(listener.fileno(), listening=False)
        assert listener.fileno() >= 0  # a refused descriptor stays open: it is not ours
    ours, theirs = socket.socketpair()
    with ours, theirs:
        with pytest.raises(ValueError, match="is not a listening TCP socket"):
            inherited_socket(theirs.fileno(), listening=True)
        channel = inherited_socket(os.dup(theirs.fileno()), listening=False)
        channel.close()
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(ValueError, match="is not a socket"):
            inherited_socket(read_end, listening=True)
        os.fstat(read_end)  # still open
    finally:
        os.close(read_end)
        os.close(write_end)
    # JSON, never pickle: a message is plain data whatever it holds.
    assert json.loads(encode({"type": "final", "data": {"__reduce__": "os.system"}}))["data"] == {
        "__reduce__": "os.system"
    }
