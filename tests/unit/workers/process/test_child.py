"""The worker process's side of the channel, in-process: frames in, frames out, no socket.

(A booted worker process configures logging and limits its address space: those tests run it
in a process of its own, in tests/test_process.py.)"""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path

from edgeruntime.functions.discovery import FunctionSpec
from edgeruntime.limits import Limits
from edgeruntime.workers.process.channel import framed
from edgeruntime.workers.process.child import WorkerProcess
from edgeruntime.workers.process.frames import Cancel, Done, Ended, Frame, Request, read_frame
from edgeruntime.workers.worker import InlineWorker
from tests.helpers import write_function
from tests.unit.asgi import http_scope, settle


class Wire(asyncio.Transport):
    """The server's end: keeps the frames the worker process writes."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False

    def frames(self) -> list[Frame]:
        found: list[Frame] = []
        while len(self.data) >= 4:
            size = int.from_bytes(self.data[:4], "big")
            found += [read_frame(fields) for fields in pickle.loads(bytes(self.data[4 : 4 + size]))]
            del self.data[: 4 + size]
        return found


def request(rid: int) -> Request:
    return Request(rid, http_scope(), {"type": "http.request", "body": b"", "more_body": False}, f"id-{rid}", "http")


async def test_a_request_before_the_function_booted_is_answered_with_an_error() -> None:
    process = WorkerProcess(asyncio.get_running_loop().create_future())
    wire = Wire()
    process.channel.connection_made(wire)
    process.channel.data_received(framed(request(5)))
    await settle()
    assert wire.frames() == [Done(5, Ended("error", "the function has not booted"), None)]


HELLO = """
from starlette.responses import PlainTextResponse
from edgeruntime import serve


async def handler(req):
    return PlainTextResponse("ok")

serve(handler)
"""


async def test_a_request_cancelled_in_the_read_that_brought_it_is_forgotten(tmp_path: Path) -> None:
    """A worker busy with CPU reads a Request and its Cancel (the server's idle timeout, say) at
    once: the request's task is cancelled before its first step, and must not stay behind with
    its body (up to a megabyte each, counted against the worker's memory limit)."""
    write_function(tmp_path, "hello", HELLO)
    worker = InlineWorker(FunctionSpec("hello", tmp_path / "hello"), {}, Limits())
    worker.boot()
    process = WorkerProcess(asyncio.get_running_loop().create_future())
    process.worker = worker
    wire = Wire()
    process.channel.connection_made(wire)
    body = {"type": "http.request", "body": b"x" * 100_000, "more_body": False}
    first = Request(1, http_scope(method="POST"), body, "id-1", "http")
    process.channel.data_received(framed(first) + framed(Cancel(1)))
    await settle()
    assert process.requests == {}
    process.channel.data_received(framed(request(2)))  # the next one is served as ever
    await settle()
    assert process.requests == {}
    assert [type(frame).__name__ for frame in wire.frames()] == ["Answered"]
