"""Process isolation: hard CPU and memory limits, crashes, env isolation, background work parity."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest

from edgeruntime.core.context import ExecutionContext
from edgeruntime.core.events import StopReason
from edgeruntime.core.worker_state import default_worker
from edgeruntime.exceptions import WallClockLimitExceeded
from edgeruntime.functions.discovery import FunctionSpec
from edgeruntime.gateway.extensions import Extension
from edgeruntime.limits import Limits
from edgeruntime.testing import EdgeClient
from edgeruntime.workers.process import parent
from edgeruntime.workers.process.frames import Frame, Listen
from edgeruntime.workers.process.parent import ProcessWorker
from tests.helpers import ServerProcess, write_function
from tests.probes import (
    LEAKY,
    descendants,
    environ_for,
    events_of,
    eventually,
    parent_of,
    template_processes,
    worker_processes,
    write_probe,
)
from tests.unit.asgi import gateway_scope
from tests.unit.gateway.test_app import check_client_gone_mid_body, check_exhaustion_is_503
from tests.unit.gateway.test_websocket import check_client_gone_before_accept

WORKER_ERROR = {"code": "WORKER_ERROR", "message": "Function exited due to an error (please check logs)"}


async def pid_of(client: EdgeClient) -> int:
    """The pid of the worker process that answers (as the server sees it: under bwrap the
    function's own `os.getpid()` is its pid in its own PID namespace)."""
    r = await client.invoke("probe")
    assert r.status_code == 200, r.text
    worker = client.app.functions["probe"].worker
    assert isinstance(worker, ProcessWorker) and worker.pid is not None
    return worker.pid


async def test_runaway_loop_is_killed_while_other_functions_answer(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = write_probe(functions_dir)
    async with EdgeClient(
        functions_dir,
        isolation="process",
        environ=environ_for(events),
        limits={"cpu_soft_limit_ms": 100, "cpu_hard_limit_ms": 200},
    ) as client:
        first = await pid_of(client)
        assert (await client.invoke("hello")).status_code == 200
        runaway = asyncio.ensure_future(client.invoke("probe", params={"spin": 1}))
        answered = 0
        while not runaway.done():  # bounded: the CPU hard limit ends the spin
            r = await client.invoke("hello")
            assert r.status_code == 200
            answered += 1
            await asyncio.sleep(0.01)
        assert answered > 0
        r = await runaway
        assert r.status_code == 546
        assert StopReason.CPU in client.app.functions["probe"].shutdowns
        assert await pid_of(client) != first
    assert "CPU time hard limit reached: isolate:" in caplog.text
    assert os.getpid() != first


async def test_memory_limit_ends_worker_while_other_functions_answer(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = write_probe(functions_dir)
    # Sandbox none: the probe records beforeunload in a file of the test's.
    async with EdgeClient(
        functions_dir,
        isolation="process",
        sandbox="none",
        environ=environ_for(events),
        limits={"memory_limit_mb": 64},
    ) as client:
        first = (await client.invoke("probe")).json()["boot"]
        started = time.monotonic()
        hog = asyncio.ensure_future(client.invoke("probe", params={"hog": 60}))
        while not hog.done():
            assert (await client.invoke("hello")).status_code == 200
            await asyncio.sleep(0.01)
        r = await hog
        assert r.status_code == 546
        assert time.monotonic() - started < 15
        assert StopReason.MEMORY in client.app.functions["probe"].shutdowns
        assert f"{first} beforeunload memory" in events_of(events)
        r = await client.invoke("probe")
        assert r.status_code == 200
        assert r.json()["boot"] != first
    assert "memory limit reached for the worker: isolate:" in caplog.text
    assert "reason: Memory" in caplog.text


@pytest.mark.parametrize("how", ["exit", "segfault"])
async def test_crash_is_worker_error_and_next_request_gets_fresh_worker(
    functions_dir: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    events = write_probe(functions_dir)
    async with EdgeClient(functions_dir, isolation="process", environ=environ_for(events)) as client:
        first = await pid_of(client)
        r = await client.invoke("probe", params={how: 1})
        assert r.status_code == 500
        assert r.json() == WORKER_ERROR
        assert await pid_of(client) != first
        assert (await client.invoke("hello")).status_code == 200
    assert "exited unexpectedly" in caplog.text


async def test_env_of_a_function_is_visible_only_in_its_own_process(functions_dir: Path) -> None:
    events = write_probe(functions_dir)
    write_function(functions_dir, "leaky", LEAKY)
    async with EdgeClient(functions_dir, isolation="process", environ=environ_for(events)) as client:
        leaky = (await client.invoke("leaky")).json()
        probe = (await client.invoke("probe")).json()
        assert leaky["mine"] == "from-leaky"
        assert probe["leaked"] is None
        pids = [client.app.functions[name].worker.pid for name in ("leaky", "probe")]  # type: ignore[union-attr]
        assert len({*pids, os.getpid()}) == 3
    assert "LEAKED_SECRET" not in os.environ
    # Inline, every function shares the server's process: the same write is visible to all.
    async with EdgeClient(functions_dir, environ=environ_for(events)) as client:
        await client.invoke("leaky")
        assert (await client.invoke("probe")).json()["leaked"] == "from-leaky"
    os.environ.pop("LEAKED_SECRET", None)


async def test_wait_until_drain_and_errors_work_as_inline(functions_dir: Path) -> None:
    write_function(
        functions_dir,
        "bg",
        """
        import asyncio
        from starlette.responses import JSONResponse
        from edgeruntime import EdgeRuntime, serve

        async def ok():
            await asyncio.sleep(0.2)

        async def boom():
            await asyncio.sleep(0.1)
            raise ValueError("background boom")

        @serve
        async def handler(req):
            EdgeRuntime.wait_until(ok())
            EdgeRuntime.wait_until(boom())
            return JSONResponse({"accepted": True}, status_code=202)
        """,
    )
    async with EdgeClient(functions_dir, isolation="process") as client:
        r = await client.invoke("bg")
        assert r.status_code == 202
        assert sorted(t.name for t in client.pending()) == ["boom", "ok"]
        with pytest.raises(ExceptionGroup) as caught:
            await client.drain(timeout=10)
        assert [type(e) for e in caught.value.exceptions] == [ValueError]
        assert "background boom" in str(caught.value.exceptions[0])
        assert client.pending() == []
        assert {t.execution_id for t in client.finished} == {r.headers["x-edgeruntime-execution-id"]}


async def test_background_work_started_after_its_response_is_its_requests(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The server takes a worker's background task only for an execution it forwarded to that
    worker (a hostile worker naming another function's run is ended: tests/test_sandbox_attacks.py):
    a task a request's own code starts after its response, from a task of its own, is still its."""
    write_function(
        functions_dir,
        "late",
        """
        import asyncio
        from starlette.responses import JSONResponse
        from edgeruntime import EdgeRuntime, serve

        keep = set()

        async def later():
            await asyncio.sleep(0.2)  # the response went out meanwhile
            EdgeRuntime.wait_until(asyncio.sleep(0.05))

        @serve
        async def handler(req):
            task = asyncio.create_task(later())
            keep.add(task)
            task.add_done_callback(keep.discard)
            return JSONResponse({"ok": True})
        """,
    )
    async with EdgeClient(functions_dir, isolation="process") as client:
        first = await client.invoke("late")
        assert first.status_code == 200
        worker = client.app.functions["late"].worker
        await eventually(lambda: client.finished, what="the late background task")
        assert [t.execution_id for t in client.finished] == [first.headers["x-edgeruntime-execution-id"]]
        assert (await client.invoke("late")).status_code == 200
        assert client.app.functions["late"].worker is worker
    assert "exited unexpectedly" not in caplog.text
    assert "which it was not given" not in caplog.text


async def test_a_request_still_running_may_start_background_work_however_many_came_after(
    functions_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The executions a worker may name are bounded (the last GIVEN_EXECUTIONS forwarded), but one
    whose request is in flight, or whose background work is pending, never drops out: under load a
    slow request starting its `wait_until` late must not end the worker as a hostile one."""
    monkeypatch.setattr(parent, "GIVEN_EXECUTIONS", 2)
    write_function(
        functions_dir,
        "slow",
        """
        import asyncio
        from starlette.responses import JSONResponse
        from edgeruntime import EdgeRuntime, serve

        async def more():
            await asyncio.sleep(0.3)  # the other requests go by meanwhile
            EdgeRuntime.wait_until(asyncio.sleep(0.01))

        @serve
        async def handler(req):
            if req.query_params.get("late"):
                await asyncio.sleep(0.5)
                EdgeRuntime.wait_until(more())
            return JSONResponse({"ok": True})
        """,
    )
    async with EdgeClient(functions_dir, isolation="process") as client:
        assert (await client.invoke("slow")).status_code == 200
        worker = client.app.functions["slow"].worker
        late = asyncio.ensure_future(client.invoke("slow", params={"late": "1"}))
        for _ in range(5):  # more than GIVEN_EXECUTIONS while the late one runs
            assert (await client.invoke("slow")).status_code == 200
        r = await late
        assert r.status_code == 200
        for _ in range(5):  # and while its background work is pending
            assert (await client.invoke("slow")).status_code == 200
        execution = r.headers["x-edgeruntime-execution-id"]
        await eventually(lambda: sum(t.execution_id == execution for t in client.finished) == 2, what="its two tasks")
        assert client.app.functions["slow"].worker is worker
    assert "which it was not given" not in caplog.text
    assert "exited unexpectedly" not in caplog.text


async def test_boot_errors_in_a_process(functions_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_function(functions_dir, "broken", "def handler(:\n")
    write_function(functions_dir, "crash", "raise RuntimeError('boom at import')\n")
    async with EdgeClient(functions_dir, isolation="process") as client:
        r = await client.invoke("broken")
        assert r.status_code == 503
        assert r.json()["code"] == "BOOT_ERROR"
        r = await client.invoke("crash")
        assert r.status_code == 500
        assert r.json() == WORKER_ERROR
        for supervisor in client.app.functions.values():
            assert supervisor.workers == []
    assert "SyntaxError" in caplog.text
    assert "boom at import" in caplog.text
    assert "exited unexpectedly" not in caplog.text  # a boot error is not a crash


async def test_shutdown_reaps_worker_processes(functions_dir: Path) -> None:
    write_probe(functions_dir)
    async with EdgeClient(functions_dir, isolation="process") as client:
        await client.invoke("probe")
        worker = client.app.functions["probe"].worker
        assert isinstance(worker, ProcessWorker)
        assert worker.proc is not None
    assert worker.proc.poll() is not None


@pytest.mark.e2e
def test_real_server_process_isolation_survives_runaway(functions_dir: Path) -> None:
    write_probe(functions_dir)
    (functions_dir.parent / "config.toml").write_text(
        '[edge_runtime]\nisolation = "process"\n[functions.probe]\ncpu_soft_limit_ms = 100\ncpu_hard_limit_ms = 200\n'
    )
    import httpx

    from tests.helpers import SERVICE_ROLE

    with ServerProcess(functions_dir, "--no-watch") as server, httpx.Client(timeout=30, headers=SERVICE_ROLE) as http:
        assert http.get(server.url("hello")).status_code == 200
        first = http.get(server.url("probe")).json()["boot"]
        started = time.monotonic()
        assert http.get(server.url("probe"), params={"spin": 1}).status_code == 546
        assert time.monotonic() - started < 10
        assert http.get(server.url("hello")).status_code == 200
        assert http.get(server.url("probe")).json()["boot"] != first
        assert server.terminate() == 0
    assert "CPU time hard limit reached" in server.output
    assert "isolation process" in server.output


STREAMER = """
from pathlib import Path
from starlette.responses import StreamingResponse
from edgeruntime import Deno, serve

EVENTS = Path(Deno.env.get("EVENTS_FILE"))


async def chunks():
    for i in range(2000):  # 125 MB in all
        if i % 50 == 0:
            EVENTS.write_text(str(i))
        yield b"z" * 65536


@serve
async def handler(req):
    return StreamingResponse(chunks())
"""


async def test_streamed_response_is_flow_controlled_to_a_slow_client(functions_dir: Path) -> None:
    write_function(functions_dir, "streamer", STREAMER)
    events = functions_dir.parent / "produced.txt"
    # Sandbox none: the function reports its progress in a file of the test's.
    async with EdgeClient(
        functions_dir, isolation="process", sandbox="none", environ={**os.environ, "EVENTS_FILE": str(events)}
    ) as client:
        received: list[int] = []
        stalled = asyncio.Event()

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def slow_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.body":
                received.append(len(message.get("body", b"")))
                if len(received) == 16:  # a client that stops reading for a while
                    await asyncio.sleep(1.5)
                    stalled.set()

        scope = gateway_scope("streamer", client.headers_for("service_role"))
        serving = asyncio.ensure_future(client.app(scope, receive, slow_send))
        await asyncio.wait_for(stalled.wait(), timeout=20)
        produced_while_stalled = int(events.read_text())
        await asyncio.wait_for(serving, timeout=60)
    # Without flow control the function would have produced all 2000 chunks (125 MB) meanwhile.
    assert produced_while_stalled < 400, produced_while_stalled
    assert sum(received) == 2000 * 65536


async def test_shutdown_during_an_early_drop_still_reaps_the_process(functions_dir: Path) -> None:
    write_function(
        functions_dir,
        "lingering",
        """
        import asyncio
        from starlette.responses import PlainTextResponse
        from edgeruntime import EdgeRuntime, serve

        async def slow_goodbye(ev):
            await asyncio.sleep(3)

        EdgeRuntime.on("beforeunload", slow_goodbye)
        serve(lambda req: PlainTextResponse("ok"))
        """,
    )
    async with EdgeClient(functions_dir, isolation="process") as client:
        assert (await client.invoke("lingering")).status_code == 200
        worker = client.app.functions["lingering"].worker
        assert isinstance(worker, ProcessWorker) and worker.proc is not None
        client.app.reload({"lingering"})  # retires it: the early drop waits for beforeunload
        await asyncio.sleep(0.2)
        assert worker in client.app.functions["lingering"].ending
    assert worker.proc.poll() is not None


@pytest.mark.e2e
@pytest.mark.parametrize("isolation", ["inline", "process"])
def test_real_server_streams_to_a_stalled_client_without_buffering_it_all(functions_dir: Path, isolation: str) -> None:
    import socket

    write_function(functions_dir, "streamer", STREAMER)
    events = functions_dir.parent / "produced.txt"
    env = {"EVENTS_FILE": str(events)}
    sandbox = ("--sandbox", "none")  # the function reports its progress in a file of the test's
    with ServerProcess(
        functions_dir, "--no-watch", "--no-verify-jwt", "--isolation", isolation, *sandbox, env=env
    ) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            client.sendall(b"GET /functions/v1/streamer HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert client.recv(1024).startswith(b"HTTP/1.1 200")
            time.sleep(1.5)  # the client stalls; the function must wait rather than fill memory
            assert int(events.read_text()) < 400  # of 2000 chunks (125 MB)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.e2e
@pytest.mark.parametrize("sandbox", ["auto", "none"])
def test_worker_processes_die_with_a_killed_server(functions_dir: Path, sandbox: str) -> None:
    import threading

    import httpx

    write_probe(functions_dir)
    limits = ("--limit", "cpu_soft_limit_ms=60000", "--limit", "cpu_hard_limit_ms=60000")
    options = ("--no-watch", "--no-verify-jwt", "--isolation", "process", "--sandbox", sandbox, *limits)
    with ServerProcess(functions_dir, *options) as server:
        assert httpx.get(server.url("probe"), timeout=30).status_code == 200
        pid = worker_processes(server.proc.pid)["probe"]
        template = template_processes(server.proc.pid)["probe"]  # the worker was forked from it
        assert parent_of(pid) == template
        everything = descendants(server.proc.pid)  # under bwrap bubblewrap's processes too

        def spin() -> None:  # the worker never awaits again, so it cannot notice the socket closing
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(server.url("probe"), params={"spin": 1}, timeout=5)

        spinner = threading.Thread(target=spin)
        spinner.start()
        time.sleep(0.5)
        assert _alive(pid)
        server.proc.kill()  # no graceful shutdown at all
        spinner.join(10)
        server.proc.wait(10)
        deadline = time.monotonic() + 10
        while any(map(_alive, everything)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)
        assert not _alive(template)
        assert [p for p in everything if _alive(p)] == []


async def test_the_successor_is_booted_before_the_worker_retires_and_takes_over(functions_dir: Path) -> None:
    write_probe(functions_dir)
    client = EdgeClient(functions_dir, isolation="process", limits={"wall_clock_limit_sec": 2.0})
    supervisor = client.app.functions["probe"]
    prepared_at_retirement: list[bool] = []

    def retired(event: str, function: str, reason: str) -> None:
        if event == "retired":
            prepared_at_retirement.append(supervisor._successor is not None)

    observer = Extension()
    observer.observe_worker = retired
    client.app.add_extension(observer)
    async with client:
        first = await pid_of(client)
        # Prepared at 0.8 s (80 % of half the wall clock), retired at 1 s.
        await eventually(lambda: prepared_at_retirement, what="retirement")
        assert prepared_at_retirement == [True]
        assert supervisor._successor is not None
        successor = await asyncio.shield(supervisor._successor)
        assert isinstance(successor, ProcessWorker) and successor.proc is not None
        assert await pid_of(client) == successor.pid != first
        assert supervisor.boots == 2


async def test_an_unused_successor_is_ended_on_reload_and_at_shutdown(functions_dir: Path) -> None:
    write_probe(functions_dir)
    async with EdgeClient(functions_dir, isolation="process", limits={"wall_clock_limit_sec": 2.0}) as client:
        supervisor = client.app.functions["probe"]
        await pid_of(client)
        unwanted = await asyncio.shield(await eventually(lambda: supervisor._successor, what="a successor"))
        assert isinstance(unwanted, ProcessWorker) and unwanted.proc is not None
        client.app.reload({"probe"})  # the function's files changed: the successor has the old ones
        await eventually(lambda: unwanted.proc is not None and unwanted.proc.poll() is not None, what="its end")
        assert await pid_of(client) != unwanted.pid  # booted afresh
        spare = await asyncio.shield(await eventually(lambda: supervisor._successor, what="a successor"))
        assert isinstance(spare, ProcessWorker) and spare.proc is not None
    assert spare.proc.poll() is not None


async def test_a_worker_ended_by_a_limit_just_before_shutdown_is_still_logged_with_its_reason(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_probe(functions_dir)
    async with EdgeClient(functions_dir, isolation="process") as client:
        await pid_of(client)
        supervisor = client.app.functions["probe"]
        worker = supervisor.worker
        assert isinstance(worker, ProcessWorker) and worker.proc is not None
        supervisor._end(worker, StopReason.MEMORY)  # what the memory limit does; shutdown follows at once
    assert f"worker shutdown: isolate: {worker.id} reason: Memory" in caplog.text
    assert worker.proc.poll() is not None


async def test_a_request_the_wall_clock_ends_in_a_worker_process_raises_wall_clock_limit_exceeded(
    functions_dir: Path,
) -> None:
    """The gateway answers 546 to it; callers of the supervisor can tell a wall clock from other limits."""
    write_probe(functions_dir)
    async with EdgeClient(functions_dir, isolation="process", limits={"wall_clock_limit_sec": 1.0}) as client:
        await pid_of(client)
        scope: dict[str, Any] = {
            "type": "http",
            "method": "GET",
            "path": "/probe",
            "raw_path": b"/probe",
            "query_string": b"sleep=30",
            "headers": [],
        }
        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> MutableMapping[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        supervisor = client.app.functions["probe"]
        with pytest.raises(WallClockLimitExceeded) as raised:
            await asyncio.wait_for(
                supervisor.dispatch(scope, receive, send, ExecutionContext("probe", default_worker())), 20
            )
        assert raised.value.reason == "WallClockTime" and isinstance(raised.value, TimeoutError)
        assert sent == []


async def test_a_client_gone_mid_body_is_recorded_as_a_disconnect(
    hello_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await check_client_gone_mid_body(hello_dir, caplog, "process")


@pytest.mark.parametrize("where", ["boot", "handler"])
async def test_out_of_file_descriptors_is_503_not_a_boot_error_or_a_500_and_passes(
    functions_dir: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], where: str
) -> None:
    await check_exhaustion_is_503(functions_dir, caplog, capfd, "process", where)


SENDERS = """
import socket
from edgeruntime import serve


@serve
async def app(scope, receive, send):
    await receive()
    kind = scope["query_string"].decode().rstrip("=")
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
    if kind == "unpicklable":  # something that cannot travel to the server
        start["socket"] = socket.socket()
    await send(start)
    if kind == "reused":  # one dict for every chunk: what was sent is what the client gets
        message = {"type": "http.response.body", "more_body": True}
        for part in (b"a", b"b", b"c"):
            message["body"] = part
            await send(message)
        message["body"] = b""
        message["more_body"] = False
        await send(message)
    else:
        await send({"type": "http.response.body", "body": memoryview(b"viewed")})
"""


async def test_what_a_function_sends_is_what_it_sent_then(functions_dir: Path) -> None:
    """Messages are pickled at the end of the worker's turn, in a batch: each as it was when sent."""
    write_function(functions_dir, "senders", SENDERS)
    async with EdgeClient(functions_dir, isolation="process") as client:
        reused = await client.invoke("senders", params={"reused": ""})
        assert (reused.status_code, reused.text) == (200, "abc")
        viewed = await client.invoke("senders", params={"memoryview": ""})
        assert (viewed.status_code, viewed.text) == (200, "viewed")
        # A message that cannot be pickled fails its request alone; the worker goes on serving.
        broken = await client.invoke("senders", params={"unpicklable": ""})
        assert broken.status_code == 500
        again = await client.invoke("senders", params={"reused": ""})
        assert (again.status_code, again.text) == (200, "abc")


HOLDER = """
import asyncio
from edgeruntime import serve


@serve
async def app(scope, receive, send):
    await receive()
    when = scope["query_string"]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    if when == b"late":  # the body comes in a later turn: the start must not wait for it
        await asyncio.sleep(0.5)
    await send({"type": "http.response.body", "body": b"done"})
    if when == b"after":  # the function goes on after its response (a background task): it must not wait
        await asyncio.sleep(0.5)
"""


async def _timed(worker: ProcessWorker, when: bytes) -> tuple[dict[str, float], float]:
    """When each message of the response to `?when` reached the server's send, and when it was over."""
    seen: dict[str, float] = {}
    started = time.monotonic()

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        seen[message["type"]] = time.monotonic() - started

    scope = {"type": "http", "method": "GET", "path": "/", "query_string": when, "headers": []}
    ctx = ExecutionContext(function="holder", worker=default_worker(), execution_id=f"exec-{when!r}")
    await worker.handle(scope, receive, send, ctx)
    return seen, time.monotonic() - started


async def test_a_response_travels_with_its_end_only_when_both_come_in_one_turn(functions_dir: Path) -> None:
    write_function(functions_dir, "holder", HOLDER)
    worker = ProcessWorker(FunctionSpec("holder", functions_dir / "holder"), {}, Limits())
    await worker.start()
    assert worker.channel is not None
    kinds: list[str] = []
    on_frame = worker.channel.on_frame

    def spy(frame: Frame) -> None:
        kinds.append(type(frame).__name__)
        on_frame(frame)

    worker.channel.on_frame = spy
    try:
        await _timed(worker, b"")
        assert kinds == ["Answered"]  # start, body and end in one frame
        kinds.clear()
        seen, _ = await _timed(worker, b"late")
        assert kinds == ["Sent", "Sent", "Done"]
        assert seen["http.response.start"] < 0.4 <= seen["http.response.body"]
        kinds.clear()
        seen, over = await _timed(worker, b"after")
        assert kinds == ["Sent", "Sent", "Done"]
        assert seen["http.response.body"] < 0.4 <= over
    finally:
        await worker.end(StopReason.TERMINATION)


TASKS = """
import asyncio
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve

SEEN = set()


async def handler(req: Request):
    task = asyncio.current_task()
    async with asyncio.timeout(5):  # needs the task it runs in
        await asyncio.sleep(0)
    SEEN.add(task)
    return JSONResponse({"own_task": task is not None and task is asyncio.current_task(), "tasks": len(SEEN)})

serve(handler)
"""


async def test_each_request_runs_in_a_task_of_its_own_that_the_function_sees(functions_dir: Path) -> None:
    """The worker process makes each request's task itself (not through the loop's task factory):
    the function's code still finds it, and what needs it (`asyncio.timeout`) works."""
    write_function(functions_dir, "tasks", TASKS)
    async with EdgeClient(functions_dir, isolation="process") as client:
        answers = await asyncio.gather(*(client.invoke("tasks") for _ in range(3)))
        assert [r.status_code for r in answers] == [200, 200, 200], [r.text for r in answers]
        assert all(r.json()["own_task"] for r in answers)
        assert max(r.json()["tasks"] for r in answers) == 3


def test_a_worker_that_booted_before_the_server_listened_to_it_is_not_missed(
    functions_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load the server may not run between a worker's announcement and its Booted frame:
    uvloop then delivers that frame while the channel is being connected. The boot must not wait
    for a frame that already came (it waited BOOT_TIMEOUT_SEC, then answered 503)."""
    import uvloop

    from edgeruntime.workers.process import parent
    from edgeruntime.workers.process.forking import peer_pid as announced

    write_function(functions_dir, "fast", HOLDER)

    async def slow_server(sock: Any) -> int | None:
        pid = await announced(sock)
        await asyncio.sleep(0.5)  # the server is busy elsewhere: the worker boots and answers meanwhile
        return pid

    monkeypatch.setattr(parent, "peer_pid", slow_server)

    async def boot() -> float:
        worker = ProcessWorker(FunctionSpec("fast", functions_dir / "fast"), {}, Limits())
        started = time.monotonic()
        try:
            async with asyncio.timeout(10):
                await worker.start()
            return time.monotonic() - started
        finally:
            await worker.end(StopReason.TERMINATION)

    assert uvloop.run(boot()) < 5


ECHO = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve


async def handler(req: Request):
    body = await req.body()
    return JSONResponse({"method": req.method, "body": body.decode(), "size": len(body)})

serve(handler)
"""


async def test_a_request_body_reaches_a_worker_process_however_it_is_declared(functions_dir: Path) -> None:
    """A request that declares no body is forwarded with an empty one without asking the server
    for it; one with a content-length or a chunked body is read from the server as before."""
    write_function(functions_dir, "echo", ECHO)

    async def chunks() -> Any:
        for part in (b"chunked ", b"body"):
            yield part

    async with EdgeClient(functions_dir, isolation="process") as client:
        got = await client.invoke("echo", method="GET")
        assert got.json() == {"method": "GET", "body": "", "size": 0}
        got = await client.invoke("echo", method="DELETE")
        assert got.json() == {"method": "DELETE", "body": "", "size": 0}
        got = await client.invoke("echo", content=b"declared")
        assert got.json() == {"method": "POST", "body": "declared", "size": 8}
        got = await client.request(
            "POST", "/functions/v1/echo", content=chunks(), headers=client.headers_for("service_role")
        )
        assert got.json() == {"method": "POST", "body": "chunked body", "size": 12}


async def test_a_response_the_server_refuses_is_the_functions_error(functions_dir: Path) -> None:
    """The server refuses what the function sent (a body shorter than its content-length, a
    second start): as inline, the request fails with the function's error, not with an exception
    out of the app (the server's "Exception in ASGI application"), and the worker serves on."""
    write_function(functions_dir, "holder", HOLDER)
    worker = ProcessWorker(FunctionSpec("holder", functions_dir / "holder"), {}, Limits())
    await worker.start()

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def refusing(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body":
            raise RuntimeError("Response content shorter than Content-Length")

    try:
        scope = {"type": "http", "method": "GET", "path": "/", "query_string": b"", "headers": []}
        ctx = ExecutionContext(function="holder", worker=default_worker(), execution_id="exec-refused")
        await worker.handle(scope, receive, refusing, ctx)
        assert ctx.error is not None and "shorter than Content-Length" in ctx.error
        seen, _ = await _timed(worker, b"")
        assert set(seen) == {"http.response.start", "http.response.body"}
    finally:
        await worker.end(StopReason.TERMINATION)


WATCHER = """
import asyncio
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve


async def handler(req: Request):
    for _ in range(100):  # 5 s at most
        if await req.is_disconnected():
            return JSONResponse({"gone": True})
        await asyncio.sleep(0.05)
    return JSONResponse({"gone": False})

serve(handler)
"""


async def test_a_client_that_leaves_before_the_response_reaches_the_function(functions_dir: Path) -> None:
    """A GET (no body) whose client leaves while the function works: the function, asking
    `is_disconnected()`, learns it, as inline, and the request is recorded as 499."""
    write_function(functions_dir, "watcher", WATCHER)
    async with EdgeClient(functions_dir, isolation="process") as client:
        left = asyncio.Event()
        answers: list[bytes] = []
        server_messages = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> dict[str, object]:
            if server_messages:
                return server_messages.pop()
            await asyncio.sleep(0.3)  # the client leaves
            left.set()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.body":
                answers.append(message.get("body", b""))

        scope = gateway_scope("watcher", client.headers_for("service_role"))
        started = time.monotonic()
        await client.app.handle_http(scope, receive, send)
        assert left.is_set() and time.monotonic() - started < 4
        assert answers == [b'{"gone":true}']
        await client.jobs.history.flush()
        runs = (await client.request("GET", "/_edgeruntime/api/runs")).json()["runs"]
        assert (runs[0]["function"], runs[0]["http_status"]) == ("watcher", 499)


async def test_a_client_that_leaves_before_the_upgrade_is_accepted_is_no_function_error(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await check_client_gone_before_accept(functions_dir, caplog, "process")


async def test_a_worker_asking_to_listen_to_a_request_not_its_own_changes_nothing(functions_dir: Path) -> None:
    """A Listen frame names a request by its id: the server starts forwarding only for a request
    in flight on that worker; any other id (a hostile function's guess) is ignored."""
    write_function(functions_dir, "holder", HOLDER)
    worker = ProcessWorker(FunctionSpec("holder", functions_dir / "holder"), {}, Limits())
    await worker.start()
    try:
        assert worker.channel is not None
        for rid in (0, 10**9, -1):
            worker.channel.on_frame(Listen(rid))
        seen, _ = await _timed(worker, b"")
        assert set(seen) == {"http.response.start", "http.response.body"}
    finally:
        await worker.end(StopReason.TERMINATION)


EXITS_AFTER_BOOT = """
import os
import threading
import time
from pathlib import Path
from starlette.responses import JSONResponse
from edgeruntime import Deno, serve

FLAG = Path(Deno.env.get("EXIT_FLAG") or os.devnull)


def exit_soon():
    time.sleep(0.05)  # after the worker said it booted
    os._exit(0)


if FLAG.name == "exit-after-boot" and FLAG.exists():  # the first boot only
    FLAG.unlink()
    threading.Thread(target=exit_soon, daemon=True).start()


async def handler(req):
    return JSONResponse({"pid": os.getpid()})

serve(handler)
"""


async def test_a_worker_process_that_exits_right_after_booting_is_a_crash(
    functions_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker process gone by the time the server reads its Booted frame (the server was busy
    elsewhere): its request gets 500 WORKER_ERROR, the log says it exited and with what status,
    not that /proc cannot be read, and no dead worker is left to serve the next request."""
    from edgeruntime.workers.process import parent
    from edgeruntime.workers.process.forking import peer_pid as announced

    write_function(functions_dir, "brief", EXITS_AFTER_BOOT)
    flag = functions_dir.parent / "exit-after-boot"
    flag.touch()

    async def slow_server(sock: Any) -> int | None:
        pid = await announced(sock)
        await asyncio.sleep(0.5)  # the worker boots, answers and exits meanwhile
        return pid

    monkeypatch.setattr(parent, "peer_pid", slow_server)
    environ = {**os.environ, "EXIT_FLAG": str(flag)}
    async with EdgeClient(functions_dir, isolation="process", sandbox="none", environ=environ) as client:
        r = await client.invoke("brief")
        assert (r.status_code, r.json()) == (500, WORKER_ERROR)
        assert not flag.exists()
        assert client.app.functions["brief"].workers == []
        assert (await client.invoke("brief")).status_code == 200
    assert "cannot read /proc" not in caplog.text
    assert "function brief: worker process exited right after booting (exit status 0)" in caplog.text
