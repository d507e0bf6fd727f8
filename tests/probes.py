"""A function that can be told to sleep, burn CPU, spin, hog memory or crash, for the limit tests."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeruntime.workers.process.sandbox import CHILD_MODULE, TEMPLATE_MODULE
from tests.helpers import HELLO, write_function

#: The module a worker process the server spawns runs, as it appears in its argv.
CHILD = CHILD_MODULE.encode()
#: The module a function's template runs, as it appears in its argv and its forked workers'.
TEMPLATE = TEMPLATE_MODULE.encode()

PROBE = """
import asyncio
import ctypes
import os
import time
import uuid
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from edgeruntime import Deno, EdgeRuntime, serve

BOOT_ID = uuid.uuid4().hex
EVENTS = Path(Deno.env.get("EVENTS_FILE") or os.devnull)
HOG = []


def record(line):
    with EVENTS.open("a") as f:
        f.write(f"{BOOT_ID} {line}\\n")


# Under per_request the event names the request (its execution id).
EdgeRuntime.on("beforeunload", lambda ev: record(f"beforeunload {ev.reason}" + (
    f" {ev.execution_id}" if getattr(ev, "execution_id", None) else "")))


def burn_without_awaiting(ms):
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        pass


async def burn(ms):
    # In steps of 1 ms: the event loop's own work between two steps is not the function's (it is
    # not charged), so with much shorter steps a good part of `ms` would be the loop's.
    end = time.thread_time() + ms / 1000
    while (left := end - time.thread_time()) > 0:
        burn_without_awaiting(min(left * 1000, 1.0))
        await asyncio.sleep(0)


async def background(seconds):
    await asyncio.sleep(seconds)
    record("background done")


async def stream(seconds):
    yield b"started "
    await asyncio.sleep(seconds)
    yield b"finished"


async def handler(req: Request):
    q = req.query_params
    if "bg_sleep" in q:
        EdgeRuntime.wait_until(background(float(q["bg_sleep"])))
    if "sleep" in q:
        await asyncio.sleep(float(q["sleep"]))
    if "burn_ms" in q:
        await burn(float(q["burn_ms"]))
    if "burn_once_ms" in q:
        burn_without_awaiting(float(q["burn_once_ms"]))
    if "spin" in q:
        while True:
            pass
    if "hog" in q:  # fill memory to `hog` MB, pause, then grow until the memory limit stops it
        pause_at = float(q["hog"])
        for _ in range(4000):  # up to ~4 GB
            HOG.append(b"x" * 1_048_576)
            if len(HOG) == int(pause_at):
                await asyncio.sleep(0.5)
            time.sleep(0.001)
    if "exit" in q:
        os._exit(3)
    if "segfault" in q:
        ctypes.string_at(0)
    if "stream" in q:
        return StreamingResponse(stream(float(q["stream"])))
    size = len(await req.body()) if "echo" in q else None
    return JSONResponse({"boot": BOOT_ID, "pid": os.getpid(), "size": size,
                         "leaked": os.environ.get("LEAKED_SECRET")})


serve(handler)
"""

LEAKY = """
import os
from starlette.responses import JSONResponse
from edgeruntime import serve

os.environ["LEAKED_SECRET"] = "from-leaky"

async def handler(req):
    return JSONResponse({"pid": os.getpid(), "mine": os.environ.get("LEAKED_SECRET")})

serve(handler)
"""


def descendants(root: int) -> dict[int, list[bytes]]:
    """Every live descendant of process `root` (at most 8 generations down), with its argv."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            parents[int(entry)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
    found: dict[int, list[bytes]] = {}
    for pid in parents:
        ancestor, hops = parents.get(pid), 0
        while ancestor is not None and ancestor > 1 and ancestor != root and hops < 8:
            ancestor, hops = parents.get(ancestor), hops + 1
        if ancestor == root:
            try:
                found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
    return found


def parent_of(pid: int) -> int | None:
    """The parent of process `pid`; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[1])


def _function(argv: list[bytes], module: bytes) -> str:
    # python -P -m MODULE FD PARENT NAME [UID:GID]
    return argv[argv.index(module) + 3].decode()


def _python(argv: list[bytes], module: bytes) -> bool:
    """True for Python running `module` (not bubblewrap, whose argv holds the command it runs)."""
    return argv[0] == os.fsencode(sys.executable) and module in argv


def template_processes(server_pid: int) -> dict[str, int]:
    """The templates of the server `server_pid`, by function (under bwrap its great-grandchildren)."""
    found: dict[str, int] = {}
    processes = descendants(server_pid)
    for pid, argv in processes.items():
        if _python(argv, TEMPLATE) and not _python(processes.get(parent_of(pid) or 0, [b""]), TEMPLATE):
            found[_function(argv, TEMPLATE)] = pid
    return found


def worker_processes(server_pid: int) -> dict[str, int]:
    """The worker processes of the server `server_pid`, by function: those it started (under bwrap
    its great-grandchildren), and those forked from a template (its children, with its argv)."""
    found: dict[str, int] = {}
    processes = descendants(server_pid)
    for pid, argv in processes.items():
        if _python(argv, CHILD):
            found[_function(argv, CHILD)] = pid
        elif _python(argv, TEMPLATE) and _python(processes.get(parent_of(pid) or 0, [b""]), TEMPLATE):
            found[_function(argv, TEMPLATE)] = pid
    return found


def write_probe(functions_dir: Path) -> Path:
    """`probe` and `hello` in `functions_dir`; returns the events file the probe writes to."""
    write_function(functions_dir, "probe", PROBE)
    write_function(functions_dir, "hello", HELLO)
    return functions_dir.parent / "events.log"


def environ_for(events: Path) -> dict[str, str]:
    return {**os.environ, "EVENTS_FILE": str(events)}


def events_of(events: Path) -> list[str]:
    return events.read_text().splitlines() if events.exists() else []


async def eventually(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} not reached within {timeout} s")
