"""The worker process's side of the channel, in-process: frames in, frames out, no socket.

(A booted worker process configures logging and limits its address space: those tests run it
in a process of its own, in tests/test_process.py.)"""

from __future__ import annotations

import asyncio
import pickle

from edgeruntime.workers.process.channel import framed
from edgeruntime.workers.process.child import WorkerProcess
from edgeruntime.workers.process.frames import Done, Ended, Frame, Request, read_frame
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
