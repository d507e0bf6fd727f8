"""Execution ids: UUIDv7, time-ordered, unique within a process and across a fork."""

from __future__ import annotations

import itertools
import os
import time
import uuid

from edgeruntime.core.context import new_execution_id


def test_execution_ids_are_uuid7_starting_with_the_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_execution_id() for _ in range(20_000)]
    after = time.time_ns() // 1_000_000
    for text in (ids[0], ids[-1]):
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 7, uuid.RFC_4122)
        assert before <= parsed.int >> 80 <= after
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # in the order they were made


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its ids and leave at once
        os.close(read)
        os.write(write, " ".join(new_execution_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    parent = {new_execution_id() for _ in range(100)}
    with os.fdopen(read, "rb") as pipe:
        child = set(pipe.read().decode().split())
    os.waitpid(pid, 0)
    assert len(child) == 100
    assert parent.isdisjoint(child)
    assert {c[14:23] for c in child}.isdisjoint({p[14:23] for p in parent})  # another random part


def test_an_id_is_the_millisecond_the_process_part_and_the_counter_across_its_boundaries() -> None:
    """Each id spells its millisecond, the process's random part and the counter's next value (to
    its 48 bits), whatever the counter's last bits: across a run of 256, of 4096, and its wrap."""
    from edgeruntime.core import context

    saved = context._ids
    try:
        for start in (0, 250, 4090, (1 << 48) - 300, (1 << 40) - 1):
            parts = context._ids = context._IdParts()
            parts.counter = itertools.count(start).__next__
            for n in range(start, start + 600):
                before = time.time_ns() // 1_000_000
                text = new_execution_id()
                after = time.time_ns() // 1_000_000
                ms = int(text[:8] + text[9:13], 16)
                assert before <= ms <= after
                expected = "%08x-%04x-7%s-%012x" % (ms >> 16, ms & 0xFFFF, parts.node, n & ((1 << 48) - 1))  # noqa: UP031
                assert text == expected
    finally:
        context._ids = saved
