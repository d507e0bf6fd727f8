"""Writes batched per iteration of the event loop."""

from __future__ import annotations

import asyncio

import pytest

from edgeruntime.core.transport import WRITE_THROUGH_BYTES, BatchedTransport, WriteBatch
from tests.helpers import RecordingTransport


async def test_batched_writes_leave_once_per_loop_iteration_one_system_call_per_connection() -> None:
    batch = WriteBatch()
    first, second = RecordingTransport(), RecordingTransport()
    a = BatchedTransport(first, batch)
    b = BatchedTransport(second, batch)
    a.write(b"HTTP/1.1 200 OK\r\n\r\n")
    b.write(bytearray(b"HTTP/1.1 404 "))
    a.write(b"hello")
    b.writelines([b"Not Found\r\n\r\n", memoryview(b"no")])
    assert (first.writes, second.writes) == ([], [])
    assert a.get_write_buffer_size() == 7 + 24
    await asyncio.sleep(0)  # the end of this iteration
    assert first.writes == [b"HTTP/1.1 200 OK\r\n\r\nhello"]
    assert second.writes == [b"HTTP/1.1 404 Not Found\r\n\r\nno"]
    assert a.get_extra_info("peername") == ("127.0.0.1", 8000)
    a.write(b"again")
    await asyncio.sleep(0)
    assert first.writes[-1] == b"again"


async def test_a_large_body_is_written_at_once_so_flow_control_still_applies() -> None:
    transport = RecordingTransport()
    batched = BatchedTransport(transport, WriteBatch())
    batched.write(b"head")
    batched.write(b"x" * WRITE_THROUGH_BYTES)
    assert transport.writes == [b"head" + b"x" * WRITE_THROUGH_BYTES]
    await asyncio.sleep(0)
    assert len(transport.writes) == 1


async def test_close_writes_what_is_buffered_first_and_a_closed_connection_gets_nothing() -> None:
    batch = WriteBatch()
    transport = RecordingTransport()
    batched = BatchedTransport(transport, batch)
    batched.write(b"last response")
    batched.close()
    assert (transport.writes, transport.closed, batched.is_closing()) == ([b"last response"], True, True)
    batched.write(b"too late")
    await asyncio.sleep(0)
    assert transport.writes == [b"last response"]


async def test_one_failing_connection_does_not_hold_back_the_others(caplog: pytest.LogCaptureFixture) -> None:
    batch = WriteBatch()
    broken, fine = RecordingTransport(fail=True), RecordingTransport()
    BatchedTransport(broken, batch).write(b"lost")
    BatchedTransport(fine, batch).write(b"delivered")
    await asyncio.sleep(0)
    assert fine.writes == [b"delivered"]
    assert "writing to a connection failed" in caplog.text
