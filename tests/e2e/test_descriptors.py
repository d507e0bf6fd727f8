"""File descriptors on a real server: released when clients leave, and running out of them.

Each test counts the server process's open descriptors in `/proc/<pid>/fd`.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import ServerProcess, write_function

pytestmark = pytest.mark.e2e

SERVERS = ["hypercorn", "uvicorn"]
CONNECTIONS = 400
#: How long after its clients leave the server may still hold their descriptors.
RELEASE_DEADLINE_SEC = 6.0
#: Descriptors the server may hold above its baseline once they are released (logs, workers, the store).
SLACK = 10

READS = """
import pathlib
from starlette.responses import JSONResponse
from edgeruntime import serve

DATA = pathlib.Path(__file__).with_name("data.txt")

@serve
async def handler(req):
    return JSONResponse({"data": DATA.read_text()})  # opens a file on every request
"""
SPIN = """
import time
from starlette.responses import JSONResponse
from edgeruntime import serve

@serve
async def handler(req):
    deadline = time.monotonic() + 60
    while req.query_params.get("spin") and time.monotonic() < deadline:  # until the CPU limit ends it
        pass
    return JSONResponse({"spun": False})
"""


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_sec(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settled_fds(pid: int, timeout: float = 10.0) -> int:
    """The server's descriptor count once it has stayed the same for half a second."""
    deadline = time.monotonic() + timeout
    count, since = open_fds(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = open_fds(pid)
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= 0.5:
            break
    return count


def wait_for_fds(pid: int, done: Callable[[int], bool], timeout: float) -> tuple[float, int]:
    """Poll until `done(count)` holds; returns (seconds waited, last count), the time past `timeout` if it never did."""
    started = time.monotonic()
    count = open_fds(pid)
    while not done(count):
        if time.monotonic() - started > timeout:
            return time.monotonic() - started, count
        time.sleep(0.05)
        count = open_fds(pid)
    return time.monotonic() - started, count


def request(path: str, *, close: bool = False) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + connection + b"\r\n"


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length: (status, headers, body); status 0 if the server closed first."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, {}, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True once the server has closed `sock` (EOF or reset) within `timeout`; False if it sent more."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def started(server: ServerProcess) -> int:
    """The server's pid, once it has answered (and so booted) `hello`."""
    with connect(server.port) as sock:
        sock.sendall(request("/functions/v1/hello", close=True))
        assert read_response(sock)[0] == 200
    return server.proc.pid


@pytest.mark.parametrize("server_kind", SERVERS)
def test_descriptors_are_released_within_seconds_of_their_clients_leaving(hello_dir: Path, server_kind: str) -> None:
    # A keep-alive timeout far longer than the deadline (as behind a proxy): what releases the
    # descriptors here is the clients leaving, not idle connections timing out.
    args = ["--no-watch", "--no-verify-jwt", "--server", server_kind, "--keep-alive-timeout", "60"]
    with ServerProcess(hello_dir, *args) as server:
        pid = started(server)
        baseline = settled_fds(pid)
        for kind in ("request and close", "connect and close", "half-close"):
            clients = [connect(server.port) for _ in range(CONNECTIONS)]
            try:
                if kind == "connect and close":
                    # Accepted by the server (or the test would prove nothing).
                    waited, count = wait_for_fds(pid, lambda n: n >= baseline + CONNECTIONS, timeout=20)
                    assert count >= baseline + CONNECTIONS, (kind, baseline, count)
                else:
                    for sock in clients:
                        sock.sendall(request("/functions/v1/hello"))
                        if kind == "half-close":
                            sock.shutdown(socket.SHUT_WR)  # FIN after the request: the response must still come
                    for sock in clients:
                        status, _, body = read_response(sock)
                        if kind == "request and close" or server_kind == "hypercorn":
                            assert (status, json.loads(body)["message"]) == (200, "hello"), (kind, status, body)
                        # else: Uvicorn closes a connection at its client's FIN, mostly before it answers.
                if kind == "half-close":
                    # The server closes its side once the response is written: the client reads EOF.
                    for sock in clients:
                        assert closed_by_server(sock, RELEASE_DEADLINE_SEC), kind
                else:
                    for sock in clients:
                        sock.close()
                waited, count = wait_for_fds(pid, lambda n: n <= baseline + SLACK, timeout=RELEASE_DEADLINE_SEC)
                assert count <= baseline + SLACK and waited <= RELEASE_DEADLINE_SEC, (
                    f"{kind}: {count} descriptors open {waited:.1f} s after {CONNECTIONS} clients left "
                    f"(baseline {baseline})"
                )
            finally:
                for sock in clients:
                    sock.close()


@pytest.mark.parametrize("server_kind", SERVERS)
def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(hello_dir: Path, server_kind: str) -> None:
    with ServerProcess(
        hello_dir, "--no-watch", "--no-verify-jwt", "--server", server_kind, "--keep-alive-timeout", "1.5"
    ) as server:
        with connect(server.port) as sock:
            sock.sendall(request("/functions/v1/hello"))
            assert read_response(sock)[0] == 200
            idle_since = time.monotonic()
            assert closed_by_server(sock, timeout=10)
            idle = time.monotonic() - idle_since
        assert 1.0 <= idle <= 5.0, idle


@contextmanager
def descriptor_limit(pid: int, soft: int) -> Iterator[None]:
    """Lower the server's soft RLIMIT_NOFILE to `soft` (its hard limit is left alone)."""
    old_soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield
    finally:
        try:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (old_soft, hard))
        except ProcessLookupError:
            pass


@pytest.mark.parametrize(
    ("server_kind", "isolation"), [("hypercorn", "inline"), ("uvicorn", "inline"), ("hypercorn", "process")]
)
def test_out_of_descriptors_answers_503_logs_once_a_second_and_recovers(
    hello_dir: Path, server_kind: str, isolation: str
) -> None:
    write_function(hello_dir, "reads", READS)
    (hello_dir / "reads" / "data.txt").write_text("from disk")
    write_function(hello_dir, "spin", SPIN)
    args = ["--no-watch", "--no-verify-jwt", "--server", server_kind, "--isolation", isolation]
    args += ["--keep-alive-timeout", "60", "--limit", "cpu_soft_limit_ms=400", "--limit", "cpu_hard_limit_ms=800"]
    with ServerProcess(hello_dir, *args) as server:
        pid = server.proc.pid
        probe = connect(server.port)  # a client connected before the descriptors run out
        fillers: list[socket.socket] = []
        try:
            for path in ("/functions/v1/reads", "/functions/v1/spin", "/_internal/health"):  # booted; hello is not
                probe.sendall(request(path))
                assert read_response(probe)[0] == 200, path
            baseline = settled_fds(pid)
            limit = baseline + 16
            with descriptor_limit(pid, limit):
                fillers = [connect(server.port) for _ in range(40)]  # more than the server can accept
                _, count = wait_for_fds(pid, lambda n: n >= limit, timeout=10)  # every slot below the limit taken
                assert count >= limit, (baseline, limit, count)
                exhausted_at, cpu_before = time.monotonic(), cpu_sec(pid)
                for _ in range(5):
                    probe.sendall(request("/functions/v1/hello"))  # its boot must open index.py
                    status, headers, body = read_response(probe)
                    assert status == 503, body
                    assert json.loads(body)["code"] == "RESOURCE_EXHAUSTED"
                    assert headers["sb-error-code"] == "RESOURCE_EXHAUSTED" and headers["retry-after"] == "1"
                    probe.sendall(request("/functions/v1/reads"))
                    status, _, body = read_response(probe)
                    if isolation == "inline":
                        assert (status, json.loads(body)["code"]) == (503, "RESOURCE_EXHAUSTED")
                    else:  # its worker process has descriptors of its own
                        assert (status, json.loads(body)) == (200, {"data": "from disk"})
                    probe.sendall(request("/_internal/health"))
                    assert read_response(probe)[0] == 200
                    time.sleep(0.4)
                exhausted_sec = time.monotonic() - exhausted_at
                # Waiting for descriptors is not spinning: the server stays mostly idle.
                assert cpu_sec(pid) - cpu_before < 0.5 * exhausted_sec, (cpu_sec(pid) - cpu_before, exhausted_sec)
                for sock in fillers:
                    sock.close()
                released_at = time.monotonic()
                recovered = None
                while recovered is None and time.monotonic() - released_at < 10:
                    try:
                        with connect(server.port) as sock:
                            sock.sendall(request("/functions/v1/hello", close=True))
                            if read_response(sock, timeout=2)[0] == 200:
                                recovered = time.monotonic() - released_at
                    except OSError:  # a connection shed while descriptors were still short
                        time.sleep(0.1)
                assert recovered is not None and recovered < 5.0, recovered
                probe.sendall(request("/functions/v1/reads"))
                assert read_response(probe)[0] == 200
                if isolation == "process":  # the worker's CPU was still watched: the hard limit ends the spin
                    probe.sendall(request("/functions/v1/spin?spin=1"))
                    status, _, body = read_response(probe, timeout=30)
                    assert (status, json.loads(body)["code"]) == (546, "WORKER_LIMIT")
        finally:
            probe.close()
            for sock in fillers:
                sock.close()
    log = server.output
    condition = [line for line in log.splitlines() if "out of file descriptors" in line]
    assert condition, log
    assert_at_most_one_a_second(condition)
    assert "Traceback" not in log
    other = [line for line in log.splitlines() if "too many open files" in line.lower() and line not in condition]
    assert not other, other


def assert_at_most_one_a_second(lines: list[str]) -> None:
    """The lines' timestamps (`HH:MM:SS.mmm ...`, the text log format) are a second apart or more."""
    stamps = []
    for line in lines:
        hours, minutes, seconds = line.split(" ", 1)[0].split(":")
        stamps.append(int(hours) * 3600 + int(minutes) * 60 + float(seconds))
    gaps = [later - earlier for earlier, later in zip(stamps, stamps[1:], strict=False) if later >= earlier]
    assert all(gap >= 0.95 for gap in gaps), "\n".join(lines)


VERSIONED = """
from starlette.responses import JSONResponse
from edgeruntime import serve

@serve
async def handler(req):
    return JSONResponse({"version": "v1"})
"""


def test_a_change_saved_while_out_of_descriptors_is_reloaded_once_they_are_free(hello_dir: Path) -> None:
    target = write_function(hello_dir, "changing", VERSIONED)
    with ServerProcess(hello_dir, "--no-verify-jwt", "--keep-alive-timeout", "60") as server:  # hot reload on
        pid = server.proc.pid
        probe = connect(server.port)
        fillers: list[socket.socket] = []
        try:
            probe.sendall(request("/functions/v1/changing"))
            assert json.loads(read_response(probe)[2]) == {"version": "v1"}
            time.sleep(0.3)  # let the watcher settle
            baseline = settled_fds(pid)
            limit = baseline + 16
            with descriptor_limit(pid, limit):
                fillers = [connect(server.port) for _ in range(40)]
                _, count = wait_for_fds(pid, lambda n: n >= limit, timeout=10)  # every slot below the limit taken
                assert count >= limit, (baseline, limit, count)
                target.write_text(VERSIONED.replace('"v1"', '"v2"'))
                deadline = time.monotonic() + 10
                while "reloading changed functions" not in server.output and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert "reloading changed functions" in server.output, server.output
                for sock in fillers:
                    sock.close()
                deadline = time.monotonic() + 5
                version = None
                while version != "v2" and time.monotonic() < deadline:  # no further edit needed
                    probe.sendall(request("/functions/v1/changing"))
                    version = json.loads(read_response(probe)[2])["version"]
                    time.sleep(0.1)
                assert version == "v2", server.output
        finally:
            probe.close()
            for sock in fillers:
                sock.close()
    assert "Traceback" not in server.output
    assert_at_most_one_a_second([line for line in server.output.splitlines() if "out of file descriptors" in line])
