"""File descriptors on a real server: released when clients leave, and running out of them.

Each test counts the server process's open descriptors in `/proc/<pid>/fd`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import ServerProcess

pytestmark = pytest.mark.e2e

SERVERS = ["hypercorn", "uvicorn"]
CONNECTIONS = 400
#: How long after its clients leave the server may still hold their descriptors.
RELEASE_DEADLINE_SEC = 6.0
#: Descriptors the server may hold above its baseline once they are released (logs, workers, the store).
SLACK = 10


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


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
