"""`edgeruntime serve` as a user runs it: a real process on a real loopback socket."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import HELLO, SERVICE_ROLE, ServerProcess, free_port, reap, wait_until, write_function

pytestmark = pytest.mark.e2e

BACKGROUND = """
import asyncio
from starlette.responses import JSONResponse
from edgeruntime import EdgeRuntime, serve

async def work(marker, seconds):
    await asyncio.sleep(seconds)
    with open(marker, "w") as f:
        f.write("done")
    print("background work finished")

@serve
async def handler(req):
    body = await req.json()
    EdgeRuntime.wait_until(work(body["marker"], body["seconds"]))
    return JSONResponse({"accepted": True}, status_code=202)
"""


# `--server auto` is Uvicorn here: Hypercorn, still supported, is checked by name.
@pytest.mark.parametrize("server_kind", ["auto", "hypercorn"])
def test_runtime_responses_on_a_real_socket(hello_dir: Path, server_kind: str) -> None:
    write_function(hello_dir, "broken", "def handler(:\n")
    write_function(
        hello_dir, "raises", "from edgeruntime import serve\nasync def h(r):\n    raise ValueError()\nserve(h)\n"
    )
    write_function(hello_dir, "dicty", "from edgeruntime import serve\nasync def h(r):\n    return {}\nserve(h)\n")
    with ServerProcess(hello_dir, "--no-watch", "--server", server_kind) as server:
        r = httpx.get(server.url("hello", "/x"), headers=SERVICE_ROLE)
        assert r.status_code == 200 and r.json() == {"message": "hello", "path": "/hello/x"}
        assert "x-edgeruntime-execution-id" in r.headers
        r = httpx.get(server.url("nope"), headers=SERVICE_ROLE)
        assert (r.status_code, r.text, r.headers["sb-error-code"]) == (404, "Function not found", "NOT_FOUND")
        r = httpx.get(server.url("hello"))
        assert (r.status_code, r.json()) == (401, {"msg": "Error: Missing authorization header"})
        r = httpx.get(server.url("broken"), headers=SERVICE_ROLE)
        assert (r.status_code, r.json()["code"]) == (503, "BOOT_ERROR")
        r = httpx.get(server.url("raises"), headers=SERVICE_ROLE)
        assert (r.status_code, r.text) == (500, "Internal Server Error")
        r = httpx.get(server.url("dicty"), headers=SERVICE_ROLE)
        assert (r.status_code, r.text) == (502, "Bad Gateway")
        assert httpx.get(f"{server.base_url}/_internal/health").json() == {"message": "ok"}
        assert httpx.get(server.url("hello"), headers=SERVICE_ROLE).status_code == 200
    out = server.output
    assert "Serving functions on http://127.0.0.1:" in out and f" - {server.url('hello')}" in out
    assert "GET /functions/v1/hello 200" in out
    expected = "uvicorn" if server_kind == "auto" else server_kind
    assert f"(server {expected}, 1 serving process, policy per_worker, isolation inline)" in out


@pytest.mark.parametrize("server_kind", ["hypercorn", "uvicorn"])
def test_sigterm_waits_for_background_work_then_exits_0(hello_dir: Path, tmp_path: Path, server_kind: str) -> None:
    write_function(hello_dir, "bg", BACKGROUND)
    marker = tmp_path / "marker.txt"
    with ServerProcess(hello_dir, "--no-watch", "--server", server_kind) as server:
        started = time.monotonic()
        r = httpx.post(server.url("bg"), headers=SERVICE_ROLE, json={"marker": str(marker), "seconds": 2})
        assert r.status_code == 202
        assert time.monotonic() - started < 1.5
        assert not marker.exists()
        status = server.terminate(timeout=30)
    assert status == 0, server.output
    assert marker.read_text() == "done"
    assert "background work finished" in server.output


@pytest.mark.parametrize("server_kind", ["uvicorn", "hypercorn"])
def test_shutdown_cuts_work_past_the_graceful_exit_timeout(hello_dir: Path, tmp_path: Path, server_kind: str) -> None:
    write_function(hello_dir, "bg", BACKGROUND)
    marker = tmp_path / "marker.txt"
    with ServerProcess(hello_dir, "--no-watch", "--graceful-exit-timeout", "0.5", "--server", server_kind) as server:
        r = httpx.post(server.url("bg"), headers=SERVICE_ROLE, json={"marker": str(marker), "seconds": 30})
        assert r.status_code == 202
        status = server.terminate(timeout=30)
    assert status == 0
    assert not marker.exists()
    assert "cut" in server.output and "work (function bg, execution" in server.output


def test_hot_reload_reloads_only_the_changed_function(hello_dir: Path) -> None:
    counter = """
import time
from starlette.responses import JSONResponse
from edgeruntime import serve

BOOTED_AT = time.time()
VERSION = "v1"

@serve
async def handler(req):
    return JSONResponse({"version": VERSION, "booted_at": BOOTED_AT})
"""
    target = write_function(hello_dir, "changing", counter)
    write_function(hello_dir, "stable", counter)
    with ServerProcess(hello_dir) as server:
        first = httpx.get(server.url("changing"), headers=SERVICE_ROLE).json()
        stable_before = httpx.get(server.url("stable"), headers=SERVICE_ROLE).json()
        assert first["version"] == "v1"
        time.sleep(0.3)  # let the watcher settle before the edit
        target.write_text(target.read_text().replace('"v1"', '"v2"'))
        edited = time.monotonic()
        seen = None
        while time.monotonic() - edited < 2.0:
            seen = httpx.get(server.url("changing"), headers=SERVICE_ROLE).json()
            if seen["version"] == "v2":
                break
            time.sleep(0.05)
        assert seen is not None and seen["version"] == "v2", server.output
        assert httpx.get(server.url("stable"), headers=SERVICE_ROLE).json() == stable_before
    assert "File change detected:" in server.output


def test_hot_reload_survives_a_symlink_loop_appearing_while_serving(hello_dir: Path) -> None:
    with ServerProcess(hello_dir) as server:
        time.sleep(0.3)  # let the watcher settle before the change
        (hello_dir / "loop1").symlink_to("loop1")  # `ln -s loop1 functions/loop1`
        warning = f"skipping function directory {hello_dir.resolve() / 'loop1'}: cannot be read"
        deadline = time.monotonic() + 5
        while warning not in server.output and time.monotonic() < deadline:
            time.sleep(0.05)
        assert warning in server.output, server.output
        write_function(hello_dir, "later", HELLO)  # the watcher still watches: served without a restart
        seen = 404
        while seen == 404 and time.monotonic() < deadline + 5:
            seen = httpx.get(server.url("later"), headers=SERVICE_ROLE).status_code
            time.sleep(0.05)
        assert seen == 200, server.output
        assert httpx.get(server.url("hello"), headers=SERVICE_ROLE).status_code == 200
    assert "Traceback" not in server.output and server.output.count(warning) == 1, server.output


def test_json_logs_carry_the_execution_id(hello_dir: Path) -> None:
    write_function(
        hello_dir,
        "talk",
        """
        import logging
        from starlette.responses import PlainTextResponse
        from edgeruntime import serve

        log = logging.getLogger(__name__)

        @serve
        async def handler(req):
            print("printed by the function")
            log.warning("logged by the function")
            return PlainTextResponse("ok")
    """,
    )
    with ServerProcess(hello_dir, "--no-watch", "--log-format", "json") as server:
        r = httpx.get(server.url("talk"), headers=SERVICE_ROLE)
        exec_id = r.headers["x-edgeruntime-execution-id"]
        time.sleep(0.2)
    records = [json.loads(line) for line in server.output.splitlines() if line.startswith("{")]
    mine = [rec for rec in records if rec.get("execution_id") == exec_id]
    messages = {rec["message"] for rec in mine}
    assert "printed by the function" in messages
    assert "logged by the function" in messages
    assert all(rec["function"] == "talk" for rec in mine)
    access = [rec for rec in mine if rec.get("status") == 200]
    assert access and access[0]["method"] == "GET" and access[0]["path"] == "/functions/v1/talk"


def test_text_logs_prefix_function_output(hello_dir: Path) -> None:
    write_function(
        hello_dir,
        "talk",
        """
        from starlette.responses import PlainTextResponse
        from edgeruntime import serve

        @serve
        async def handler(req):
            print("hello from inside")
            return PlainTextResponse("ok")
    """,
    )
    with ServerProcess(hello_dir, "--no-watch") as server:
        exec_id = httpx.get(server.url("talk"), headers=SERVICE_ROLE).headers["x-edgeruntime-execution-id"]
        time.sleep(0.2)
    line = next(ln for ln in server.output.splitlines() if "hello from inside" in ln)
    assert "[talk]" in line and exec_id in line


def test_module_run_as_a_script_serves_itself(tmp_path: Path) -> None:
    script = write_function(tmp_path, "hello", HELLO)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env={**os.environ, "PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/anything")
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None, "script server did not start"
                time.sleep(0.05)
        assert r.status_code == 200
        assert r.json() == {"message": "hello", "path": "/anything"}
        assert r.headers["server"] == "uvicorn"  # the default server of `edgeruntime serve` (--server auto)
        proc.terminate()
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.parametrize("port", ["abc", "70000", "-1", "0", "in use"])
def test_a_script_on_a_bad_port_is_one_line_naming_it_and_exit_2(tmp_path: Path, port: str) -> None:
    script = write_function(tmp_path, "hello", HELLO)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if port == "in use":
            port = str(taken.getsockname()[1])
            line = f"edgeruntime: error: port {port} on 127.0.0.1 is already in use\n"
        else:
            line = f"edgeruntime: error: PORT={port!r}: expected a TCP port, 1 to 65535\n"
        r = subprocess.run(
            [sys.executable, str(script)], env={**os.environ, "PORT": port}, capture_output=True, text=True, timeout=30
        )
    assert (r.returncode, r.stdout, r.stderr) == (2, "", line)


@pytest.mark.parametrize("server_kind", ["hypercorn", "uvicorn"])
def test_sigterm_finishes_in_flight_requests(hello_dir: Path, server_kind: str) -> None:
    write_function(
        hello_dir,
        "slowpoke",
        """
        import asyncio
        from starlette.responses import PlainTextResponse
        from edgeruntime import serve

        @serve
        async def handler(req):
            await asyncio.sleep(1)
            return PlainTextResponse("finished")
    """,
    )
    import concurrent.futures

    with (
        ServerProcess(hello_dir, "--no-watch", "--server", server_kind) as server,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        future = pool.submit(httpx.get, server.url("slowpoke"), headers=SERVICE_ROLE, timeout=30)
        time.sleep(0.4)  # the request is in flight
        status = server.terminate(timeout=30)
        response = future.result(timeout=30)
    assert status == 0
    assert (response.status_code, response.text) == (200, "finished")


@pytest.mark.parametrize("server_kind", ["hypercorn", "uvicorn"])
def test_an_unauthenticated_websocket_upgrade_is_refused_and_never_reaches_the_function(
    hello_dir: Path, tmp_path: Path, server_kind: str
) -> None:
    import socket

    marker = tmp_path / "invoked"
    write_function(
        hello_dir,
        "touch",
        f"""
        from pathlib import Path
        from starlette.responses import PlainTextResponse
        from edgeruntime import serve

        @serve
        async def handler(req):
            Path({str(marker)!r}).write_text("yes")
            return PlainTextResponse("invoked")
    """,
    )
    with ServerProcess(hello_dir, "--no-watch", "--server", server_kind) as server:
        handshake = (
            f"GET /functions/v1/touch HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
            conn.sendall(handshake.encode())
            status_line = conn.recv(4096).split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1.1 401"), status_line
        assert httpx.get(server.url("hello"), headers=SERVICE_ROLE, timeout=10).status_code == 200
    assert not marker.exists()


@pytest.mark.parametrize("server_kind", ["hypercorn", "uvicorn"])
def test_process_isolation_under_each_server(hello_dir: Path, server_kind: str) -> None:
    with ServerProcess(hello_dir, "--no-watch", "--isolation", "process", "--server", server_kind) as server:
        r = httpx.get(server.url("hello", "/x"), headers=SERVICE_ROLE, timeout=30)
        assert (r.status_code, r.json()) == (200, {"message": "hello", "path": "/hello/x"})
        assert server.terminate(timeout=30) == 0


def test_ctrl_c_to_the_process_group_shuts_process_workers_down_cleanly(hello_dir: Path, tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches the whole foreground process group, worker processes included."""
    import signal

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgeruntime",
                "serve",
                str(hello_dir),
                "--port",
                str(port),
                "--no-watch",
                "--isolation",
                "process",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    r = httpx.get(f"http://127.0.0.1:{port}/functions/v1/hello", headers=SERVICE_ROLE, timeout=5)
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
                    time.sleep(0.05)
            assert r.status_code == 200
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    output = log.read_text()
    assert "exited unexpectedly" not in output, output
    assert "Traceback" not in output, output


def _read_responses(conn: socket.socket, count: int) -> list[tuple[bytes, bytes]]:
    """Read `count` HTTP/1.1 responses (content-length or chunked) off `conn`: (status line, body)."""
    data = b""
    out: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + 20
    while len(out) < count and time.monotonic() < deadline:
        head, sep, rest = data.partition(b"\r\n\r\n")
        complete = False
        if sep:
            lines = head.split(b"\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
            if b"content-length" in headers:
                size = int(headers[b"content-length"])
                if len(rest) >= size:
                    out.append((lines[0], rest[:size]))
                    data, complete = rest[size:], True
            elif rest.endswith(b"0\r\n\r\n") or b"\r\n0\r\n\r\n" in rest:
                body, _, data = rest.partition(b"\r\n0\r\n\r\n")
                chunks, pieces = body + b"\r\n", []
                while chunks:
                    size_line, _, chunks = chunks.partition(b"\r\n")
                    size = int(size_line, 16)
                    pieces.append(chunks[:size])
                    chunks = chunks[size + 2 :]
                out.append((lines[0], b"".join(pieces)))
                complete = True
        if not complete:
            more = conn.recv(1 << 16)
            if not more:
                break
            data += more
    return out


@pytest.mark.parametrize("server_kind", ["hypercorn", "uvicorn"])
def test_batched_writes_keep_pipelined_streamed_and_closing_responses_whole(hello_dir: Path, server_kind: str) -> None:
    """Responses are written once per loop iteration (see docs/performance.md)."""
    write_function(
        hello_dir,
        "stream",
        """
        from starlette.responses import StreamingResponse
        from edgeruntime import serve

        async def chunks():
            for i in range(64):
                yield bytes([65 + i % 26]) * 32768

        @serve
        async def handler(req):
            return StreamingResponse(chunks(), media_type="application/octet-stream")
    """,
    )
    with ServerProcess(hello_dir, "--no-watch", "--no-verify-jwt", "--server", server_kind) as server:
        host = f"Host: 127.0.0.1:{server.port}\r\n"
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as conn:
            conn.sendall(b"".join(f"GET /functions/v1/hello/{i} HTTP/1.1\r\n{host}\r\n".encode() for i in range(3)))
            replies = _read_responses(conn, 3)
            assert [status.split()[1] for status, _ in replies] == [b"200"] * 3
            assert [json.loads(body)["path"] for _, body in replies] == ["/hello/0", "/hello/1", "/hello/2"]
            conn.sendall(f"GET /functions/v1/stream HTTP/1.1\r\n{host}\r\n".encode())
            ((status, body),) = _read_responses(conn, 1)
            assert status.split()[1] == b"200"
            assert body == b"".join(bytes([65 + i % 26]) * 32768 for i in range(64))
            conn.sendall(f"GET /functions/v1/hello/last HTTP/1.1\r\n{host}Connection: close\r\n\r\n".encode())
            ((status, body),) = _read_responses(conn, 1)
            assert (status.split()[1], json.loads(body)["path"]) == (b"200", "/hello/last")
            assert conn.recv(1) == b""  # closed after the whole response


def test_module_run_as_a_script_without_port_serves_on_8000(tmp_path: Path) -> None:
    """DESIGN 2: run as a script it "starts a standalone server on `PORT` or 8000"."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 8000))
        except OSError:
            pytest.skip("port 8000 is taken on this machine")
    script = write_function(tmp_path, "hello", HELLO)
    env = {k: v for k, v in os.environ.items() if k != "PORT"}
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get("http://127.0.0.1:8000/x", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None, "script server did not start"
                time.sleep(0.05)
        assert (r.status_code, r.json()) == (200, {"message": "hello", "path": "/x"})
    finally:
        reap(proc)


IGNORES_ITS_BODY = """
from starlette.responses import JSONResponse
from edgeruntime import serve

async def handler(req):
    return JSONResponse({"accepted": True}, status_code=202)

serve(handler)
"""


def _read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """(status line, body) of one response with a content-length; (b"", b"") if the server closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return b"", b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head.split(b"\r\n", 1)[0], body


@pytest.mark.parametrize("server_kind", ["hypercorn", "uvicorn"])
def test_a_body_that_arrives_after_the_answer_keeps_the_connection_alive(hello_dir: Path, server_kind: str) -> None:
    """A keep-alive client whose body the function never reads, sent after the answer is ready
    (the headers, then the body, as HTTP clients write them): its next requests on the connection are
    answered, rather than finding the connection closed after a complete answer that did not say so."""
    write_function(hello_dir, "ignores", IGNORES_ITS_BODY)
    (hello_dir.parent / "config.toml").write_text("[functions.ignores]\nverify_jwt = false\n")
    with ServerProcess(hello_dir, "--no-watch", "--server", server_kind) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            for i in range(3):
                sock.sendall(b"POST /functions/v1/ignores HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n")
                time.sleep(0.2)  # the function has answered by now
                sock.sendall(b"x" * 10)
                status, body = _read_response(sock)
                assert (status.split(b" ")[1:2], body) == ([b"202"], b'{"accepted":true}'), (i, server.output)


def test_a_body_that_never_ends_still_gets_its_answer_under_hypercorn(hello_dir: Path) -> None:
    """The wait for the rest of an unread body is bounded: a client that stops sending halfway
    gets its answer about UNREAD_BODY_WAIT_SEC late, then the connection is closed (and the
    server serves on)."""
    write_function(hello_dir, "ignores", IGNORES_ITS_BODY)
    (hello_dir.parent / "config.toml").write_text("[functions.ignores]\nverify_jwt = false\n")
    with ServerProcess(hello_dir, "--no-watch", "--server", "hypercorn") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"POST /functions/v1/ignores HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nxx")
            started = time.monotonic()
            status, body = _read_response(sock)
            assert (status.split(b" ")[1:2], body) == ([b"202"], b'{"accepted":true}'), server.output
            assert 0.5 < time.monotonic() - started < 5
            assert sock.recv(100) == b""  # closed: the request never ended
        assert httpx.post(server.url("ignores"), content=b"x", timeout=10).status_code == 202
        wait_until(lambda: server.output.count("POST /functions/v1/ignores 202") == 2, 10, "both access lines")
