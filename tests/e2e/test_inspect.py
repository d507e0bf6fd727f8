"""`edgeruntime serve --inspect`: a debugger attached over the Debug Adapter Protocol stops in a handler."""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeruntime.exceptions import UsageError
from edgeruntime.serving.inspector import InspectorAddress, parse_inspect, start_inspector
from tests.helpers import ServerProcess, free_port, run_cli, write_function

pytestmark = pytest.mark.e2e

HANDLER = """
from starlette.responses import JSONResponse
from edgeruntime import serve

async def handler(req):
    greeting = "hello"
    return JSONResponse({"greeting": greeting})

serve(handler)
"""
#: The line of `return JSONResponse(...)` in HANDLER as written to disk.
BREAKPOINT_LINE = 6


class DapClient:
    """A minimal Debug Adapter Protocol client: requests, responses and events over one socket."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.timeout = timeout
        self.seq = 0
        self.buffer = b""
        self.events: list[dict[str, Any]] = []
        #: Responses read while waiting for something else, by request seq.
        self.responses: dict[int, dict[str, Any]] = {}

    def close(self) -> None:
        self.sock.close()

    def send(self, command: str, **arguments: Any) -> int:
        self.seq += 1
        body = json.dumps({"seq": self.seq, "type": "request", "command": command, "arguments": arguments}).encode()
        self.sock.sendall(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        return self.seq

    def _read(self) -> dict[str, Any]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = int(
            next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        )
        while len(rest) < length:
            self.buffer = head + b"\r\n\r\n" + rest
            self._fill()
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
        self.buffer = rest[length:]
        message: dict[str, Any] = json.loads(rest[:length])
        return message

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the debugger closed the connection")
        self.buffer += chunk

    def _keep(self, message: dict[str, Any]) -> None:
        if message["type"] == "event":
            self.events.append(message)
        elif message["type"] == "response":
            self.responses[message["request_seq"]] = message

    def response(self, seq: int) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while seq not in self.responses and time.monotonic() < deadline:
            self._keep(self._read())
        message = self.responses.pop(seq)
        assert message["success"], message
        return message

    def request(self, command: str, **arguments: Any) -> dict[str, Any]:
        return self.response(self.send(command, **arguments))

    def event(self, name: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for i, event in enumerate(self.events):
                if event["event"] == name:
                    return self.events.pop(i)
            self._keep(self._read())
        raise TimeoutError(f"no {name} event")


def test_a_breakpoint_in_a_handler_stops_there_and_the_request_completes_after_continue(functions_dir: Path) -> None:
    pytest.importorskip("debugpy")
    index = write_function(functions_dir, "greet", HANDLER).resolve()
    inspector = free_port()
    server = ServerProcess(functions_dir, f"--inspect=127.0.0.1:{inspector}", "--inspect-wait", "--no-verify-jwt")
    dap: DapClient | None = None
    try:
        dap = DapClient(inspector)
        dap.request(
            "initialize",
            adapterID="debugpy",
            clientID="edgeruntime-test",
            pathFormat="path",
            linesStartAt1=True,
            columnsStartAt1=True,
        )
        attached = dap.send("attach", justMyCode=False)
        dap.event("initialized")
        breakpoints = dap.request(
            "setBreakpoints", source={"path": str(index)}, breakpoints=[{"line": BREAKPOINT_LINE}]
        )
        assert breakpoints["body"]["breakpoints"][0]["verified"] is True
        dap.request("configurationDone")
        dap.response(attached)
        # --inspect-wait: the server listens only now that the debugger has attached.
        server.wait_ready()
        result: dict[str, httpx.Response] = {}
        caller = threading.Thread(target=lambda: result.update(r=httpx.get(server.url("greet"), timeout=60)))
        caller.start()
        stopped = dap.event("stopped")
        assert stopped["body"]["reason"] == "breakpoint"
        frames = dap.request("stackTrace", threadId=stopped["body"]["threadId"], levels=1)["body"]["stackFrames"]
        assert (frames[0]["source"]["path"], frames[0]["line"], frames[0]["name"]) == (
            str(index),
            BREAKPOINT_LINE,
            "handler",
        )
        assert caller.is_alive()  # held at the breakpoint
        dap.request("continue", threadId=stopped["body"]["threadId"])
        caller.join(timeout=30)
        assert not caller.is_alive()
        assert (result["r"].status_code, result["r"].json()) == (200, {"greeting": "hello"})
        dap.request("disconnect", terminateDebuggee=False)
    finally:
        if dap is not None:
            dap.close()
        server.stop()
    assert f"Debugger listening on 127.0.0.1:{inspector}" in server.output


def test_inspect_is_refused_under_process_isolation_with_a_clear_line(functions_dir: Path) -> None:
    write_function(functions_dir, "greet", HANDLER)
    r = run_cli("serve", str(functions_dir), "--port", str(free_port()), "--inspect", "--isolation", "process")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "edgeruntime: error: --inspect: functions run in worker processes under isolation process, where the "
        "debugger cannot stop them; serve with --isolation inline while debugging"
    )
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("workers", ["2", "auto"])
def test_inspect_is_refused_with_several_serving_processes(functions_dir: Path, workers: str) -> None:
    write_function(functions_dir, "greet", HANDLER)
    r = run_cli("serve", str(functions_dir), "--port", str(free_port()), "--inspect", "--workers", workers)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "edgeruntime: error: --inspect: the debugger stops one serving process; serve with --workers 1 while debugging"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [("127.0.0.1:99999", "'99999' is not a TCP port"), ("[::1", "expected HOST:PORT")],
)
def test_a_bad_inspect_address_is_one_line(functions_dir: Path, value: str, message: str) -> None:
    write_function(functions_dir, "greet", HANDLER)
    r = run_cli("serve", str(functions_dir), "--port", str(free_port()), f"--inspect={value}")
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


class _FakeDebugpy:
    """Stands in for debugpy: records `listen`, which must not be reached with a bad address
    (the real one waits for ever when its thread cannot bind)."""

    def __init__(self) -> None:
        self.listened: list[tuple[str, int]] = []

    def listen(self, address: tuple[str, int], **kwargs: object) -> None:
        self.listened.append(address)


@pytest.fixture
def fake_debugpy(monkeypatch: pytest.MonkeyPatch) -> _FakeDebugpy:
    fake = _FakeDebugpy()
    monkeypatch.setitem(sys.modules, "debugpy", fake)
    return fake


def test_a_port_in_use_is_refused_naming_the_address_before_debugpy_listens(fake_debugpy: _FakeDebugpy) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UsageError) as raised:
            start_inspector(InspectorAddress("127.0.0.1", port), wait=False, isolation="inline")
    assert str(raised.value) == f"--inspect: cannot listen on 127.0.0.1:{port}: port {port} is already in use"
    assert fake_debugpy.listened == []


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("nonexistent.invalid:9333", "cannot resolve 'nonexistent.invalid'"),
        ("nonexistent.invalid", "cannot resolve 'nonexistent.invalid'"),
        ("[::1]:9333", "debugpy takes IPv4 addresses, e.g. 127.0.0.1:9333"),
    ],
)
def test_an_address_debugpy_cannot_bind_is_refused_naming_it(
    fake_debugpy: _FakeDebugpy, value: str, reason: str
) -> None:
    address = parse_inspect(value)
    with pytest.raises(UsageError, match=re.escape(f"--inspect: cannot listen on {address}: {reason}")):
        start_inspector(address, wait=False, isolation="inline")
    assert fake_debugpy.listened == []


def test_a_free_loopback_port_reaches_debugpy(fake_debugpy: _FakeDebugpy) -> None:
    port = free_port()
    start_inspector(InspectorAddress("127.0.0.1", port), wait=False, isolation="inline")
    assert fake_debugpy.listened == [("127.0.0.1", port)]


@pytest.mark.parametrize("taken", [True, False])
def test_serve_inspect_on_an_address_it_cannot_bind_exits_2_with_one_line_instead_of_hanging(
    functions_dir: Path, taken: bool
) -> None:
    pytest.importorskip("debugpy")
    write_function(functions_dir, "greet", HANDLER)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        inspect = f"127.0.0.1:{busy.getsockname()[1]}" if taken else "nonexistent.invalid:9333"
        args = ("serve", str(functions_dir), "--port", str(free_port()), "--no-watch", "--isolation", "inline")
        r = run_cli(*args, "--inspect", inspect, timeout=30)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"edgeruntime: error: --inspect: cannot listen on {inspect}: ")
