"""WebSockets through the gateway, in process (EdgeClient.websocket): upgrade_websocket, the
gateway's rules on the upgrade request, refusals, closes, limits of a message, records."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from starlette.websockets import WebSocketDisconnect

from edgeruntime.core.types import Message, Receive, Scope, Send
from edgeruntime.exceptions import WebSocketDenied
from edgeruntime.testing import EdgeClient
from tests.helpers import KEYS, forged_token, write_function
from tests.unit.asgi import gateway_scope

ECHO = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import EdgeRuntime, serve, upgrade_websocket

SEEN = []

async def remember(text: str) -> None:
    SEEN.append(text)

@serve
async def handler(req: Request):
    if req.headers.get("upgrade", "").lower() != "websocket":
        return JSONResponse({"error": "request isn't trying to upgrade to WebSocket."}, status_code=400)
    protocols = [p.strip() for p in req.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    ws = await upgrade_websocket(req, protocol=protocols[0] if protocols else None, headers={"X-Hello": "there"})
    async for text in ws.iter_text():
        if text == "close":
            await ws.close(4001, "bye")
            return None
        if text == "leave":
            return None  # the runtime closes the socket (1000)
        if text == "raise":
            raise ValueError("handler failed mid-connection")
        EdgeRuntime.wait_until(remember(text))
        await ws.send_text(f"{req.url.path}:{text}")
    return None
"""


@pytest.fixture
def echo_dir(functions_dir: Path) -> Path:
    write_function(functions_dir, "echo", ECHO)
    return functions_dir


async def test_upgrade_websocket_accepts_and_the_functions_close_code_reaches_the_client(echo_dir: Path) -> None:
    async with EdgeClient(echo_dir) as client, client.websocket("echo", path="/room") as ws:
        assert ws.accept_headers == {"x-hello": "there"}
        await ws.send_text("hi")
        assert await ws.receive_text() == "/echo/room:hi"
        await ws.send_text("close")
        with pytest.raises(WebSocketDisconnect) as closed:
            await ws.receive_text()
        assert (closed.value.code, closed.value.reason) == (4001, "bye")


async def test_the_runtime_closes_a_socket_its_handler_returned_from_or_raised_in(
    echo_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with EdgeClient(echo_dir) as client:
        async with client.websocket("echo") as ws:
            await ws.send_text("leave")
            with pytest.raises(WebSocketDisconnect) as left:
                await ws.receive_text()
        assert left.value.code == 1000
        async with client.websocket("echo") as ws:
            await ws.send_text("raise")
            with pytest.raises(WebSocketDisconnect) as failed:
                await ws.receive_text()
        assert failed.value.code == 1011
    assert "ValueError: handler failed mid-connection" in caplog.text


async def test_a_subprotocol_offered_by_the_client_is_answered(echo_dir: Path) -> None:
    async with EdgeClient(echo_dir) as client, client.websocket("echo", subprotocols=["chat.v2", "chat.v1"]) as ws:
        assert ws.subprotocol == "chat.v2"


async def test_a_function_that_answers_with_a_response_refuses_the_upgrade(functions_dir: Path) -> None:
    write_function(
        functions_dir,
        "guarded",
        """
        from starlette.responses import JSONResponse
        from edgeruntime import serve

        @serve
        async def handler(req):
            return JSONResponse({"error": "Auth token not provided"}, status_code=403)
        """,
    )
    write_function(
        functions_dir,
        "plain",
        """
        from starlette.responses import PlainTextResponse
        from edgeruntime import serve

        @serve
        def handler(req):  # a sync handler can only answer it
            return PlainTextResponse("no websockets here")
        """,
    )
    async with EdgeClient(functions_dir) as client:
        with pytest.raises(WebSocketDenied) as guarded:
            async with client.websocket("guarded"):
                pass
        assert (guarded.value.status, guarded.value.body) == (403, b'{"error":"Auth token not provided"}')
        with pytest.raises(WebSocketDenied) as plain:
            async with client.websocket("plain"):
                pass
        assert (plain.value.status, plain.value.body) == (200, b"no websockets here")
        runs = [await client.request("GET", "/_edgeruntime/api/runs")]
        assert runs[0].status_code == 200


async def test_upgrade_websocket_refuses_a_request_that_is_no_upgrade(
    echo_dir: Path, functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_function(
        functions_dir,
        "eager",
        """
        from edgeruntime import serve, upgrade_websocket

        @serve
        async def handler(req):
            await upgrade_websocket(req)
        """,
    )
    async with EdgeClient(functions_dir) as client:
        r = await client.invoke("eager", method="GET")
        assert (r.status_code, r.text) == (500, "Internal Server Error")
        r = await client.invoke("echo", method="GET")
        assert (r.status_code, r.json()) == (400, {"error": "request isn't trying to upgrade to WebSocket."})
    assert "WebSocketUpgradeError: upgrade_websocket(): the request is not a WebSocket upgrade request" in caplog.text


async def test_a_protocol_the_client_did_not_offer_is_a_500(echo_dir: Path, functions_dir: Path) -> None:
    write_function(
        functions_dir,
        "picky",
        """
        from edgeruntime import serve, upgrade_websocket

        @serve
        async def handler(req):
            await upgrade_websocket(req, protocol="graphql-ws")
        """,
    )
    async with EdgeClient(functions_dir) as client:
        with pytest.raises(WebSocketDenied) as refused:
            async with client.websocket("picky", subprotocols=["chat"]):
                pass
    assert refused.value.status == 500


async def test_the_gateways_rules_apply_to_the_upgrade_request(echo_dir: Path) -> None:
    async with EdgeClient(echo_dir) as client:
        with pytest.raises(WebSocketDenied) as unauthorized:
            async with client.websocket("echo", auth=None):
                pass
        assert (unauthorized.value.status, unauthorized.value.body) == (
            401,
            b'{"msg":"Error: Missing authorization header"}',
        )
        assert unauthorized.value.headers["access-control-allow-origin"] == "*"
        with pytest.raises(WebSocketDenied) as unknown:
            async with client.websocket("nope"):
                pass
        assert (unknown.value.status, unknown.value.body) == (404, b"Function not found")
        twice = {"authorization": f"Bearer {KEYS.service_role_key}", "Authorization": "Bearer forged"}
        with pytest.raises(WebSocketDenied) as duplicate:
            async with client.websocket("echo", headers=twice):
                pass
        assert duplicate.value.status == 400
        # The publishable key stands for the anon key, as for any request.
        async with client.websocket("echo", auth=None, headers={"apikey": KEYS.publishable_key}) as ws:
            await ws.send_text("anon")
            assert await ws.receive_text() == "/echo:anon"
        for path in ("/_edgeruntime/", "/_edgeruntime/api/runs", "/_internal/health", "/_internal/metrics"):
            with pytest.raises(WebSocketDenied) as other:
                async with client.websocket(path):
                    pass
            assert other.value.status == 404, path


async def test_an_upgrade_with_words_after_its_token_or_a_control_character_in_its_path_is_refused(
    echo_dir: Path,
) -> None:
    async with EdgeClient(echo_dir) as client:
        trailing = {"authorization": f"Bearer {KEYS.anon_key} {forged_token()}"}
        with pytest.raises(WebSocketDenied) as unauthorized:
            async with client.websocket("echo", auth=None, headers=trailing):
                pass
        assert (unauthorized.value.status, unauthorized.value.body) == (401, b'{"msg":"Invalid JWT"}')
        with pytest.raises(WebSocketDenied) as malformed:
            async with client.websocket("echo", path="/%0d%0aforged"):
                pass
        assert (malformed.value.status, malformed.value.body) == (404, b"Function not found")


async def test_a_message_over_the_functions_limit_closes_the_connection_with_1009(
    echo_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with EdgeClient(echo_dir, limits={"max_websocket_message_mb": 0.001}) as client:  # 1,048 bytes
        async with client.websocket("echo") as ws:
            await ws.send_text("é" * 500)  # 1,000 bytes of UTF-8
            assert await ws.receive_text() == "/echo:" + "é" * 500
            await ws.send_text("é" * 600)  # 1,200 bytes
            with pytest.raises(WebSocketDisconnect) as closed:
                await ws.receive_text()
        assert (closed.value.code, closed.value.reason) == (1009, "message too big")
        async with client.websocket("echo") as ws:  # the next connection is served
            await ws.send_text("again")
            assert await ws.receive_text() == "/echo:again"
    assert "a WebSocket message of 1200 bytes to function echo is over its max_websocket_message_mb" in caplog.text


async def test_each_connection_is_one_run_with_its_background_work(echo_dir: Path) -> None:
    async with EdgeClient(echo_dir) as client:
        async with client.websocket("echo") as ws:
            for text in ("a", "b"):
                await ws.send_text(text)
                await ws.receive_text()
        await client.drain()
        assert client.module("echo").SEEN == ["a", "b"]
        assert {t.name for t in client.finished} == {"remember"}
        assert len({t.execution_id for t in client.finished}) == 1
        await client.jobs.history.flush()
        runs = (await client.request("GET", "/_edgeruntime/api/runs")).json()["runs"]
        assert [(r["trigger"], r["http_status"], r["status"], len(r["tasks"])) for r in runs] == [
            ("websocket", 101, "succeeded", 2)
        ]
        metrics = (await client.request("GET", "/_internal/metrics")).text
        assert 'edgeruntime_requests_total{function="echo",status="101",trigger="websocket"} 1.0' in metrics
        assert 'edgeruntime_request_duration_seconds_count{function="echo"}' not in metrics


STARLETTE_APP = """
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from edgeruntime import serve

async def chat(ws: WebSocket) -> None:
    await ws.accept()
    await ws.send_text(f"joined {ws.path_params['room']}")
    await ws.close()

serve(Starlette(routes=[WebSocketRoute("/app/{room}", chat)]))
"""


async def test_an_asgi_app_gets_the_websocket_scope_itself(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_function(functions_dir, "app", STARLETTE_APP)
    async with EdgeClient(functions_dir) as client:
        async with client.websocket("app", path="/lobby") as ws:
            assert await ws.receive_text() == "joined lobby"
        with pytest.raises(WebSocketDenied) as no_route:  # Starlette closes it: the server answers 403
            async with client.websocket("app", path="/nowhere/at/all"):
                pass
        assert no_route.value.status == 403
    records = [r for r in caplog.records if "did not accept the WebSocket upgrade request" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.INFO
    assert "closed it (the server answers 403)" in records[0].getMessage()


async def test_a_client_gone_mid_connection_ends_it_without_failing_the_run(
    echo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with EdgeClient(echo_dir) as client:
        gateway = client.app

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            async def gone(message: Message) -> None:
                if message["type"] == "websocket.send":
                    raise OSError("the client disconnected")  # as Uvicorn's send raises (ASGI 2.4)
                await send(message)

            await gateway(scope, receive, gone)

        monkeypatch.setattr(client, "app", app)
        async with client.websocket("echo") as ws:
            await ws.send_text("hi")  # its answer finds the client gone
            with pytest.raises(WebSocketDisconnect):
                await ws.receive_text()
        monkeypatch.undo()
        await client.drain()
        await client.jobs.history.flush()
        runs = (await client.request("GET", "/_edgeruntime/api/runs")).json()["runs"]
        assert [(r["trigger"], r["http_status"], r["status"], r["error"]) for r in runs] == [
            ("websocket", 101, "succeeded", None)
        ]


LATE_ACCEPT = """
from starlette.requests import Request
from edgeruntime import serve, upgrade_websocket


@serve
async def handler(req: Request):
    ws = await upgrade_websocket(req)  # the client has left by now
    await ws.send_text("hi")
"""


async def test_a_client_that_leaves_before_the_upgrade_is_accepted_is_no_function_error(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await check_client_gone_before_accept(functions_dir, caplog, "inline")  # process isolation: tests/test_process.py


async def check_client_gone_before_accept(
    functions_dir: Path, caplog: pytest.LogCaptureFixture, isolation: str
) -> None:
    """The server's accept fails (Uvicorn raises ClientDisconnected, an OSError): recorded as a
    disconnect (499), not logged as the function's error: any client could fill the log so."""
    write_function(functions_dir, "slow", LATE_ACCEPT)
    async with EdgeClient(functions_dir, isolation=isolation) as client:
        scope = gateway_scope("slow", client.headers_for("service_role"), "websocket")
        connected: list[Message] = [{"type": "websocket.connect"}]

        async def receive() -> Message:
            if connected:
                return connected.pop()
            return {"type": "websocket.disconnect", "code": 1006}

        async def send(message: Message) -> None:
            raise OSError("the client disconnected")  # what Uvicorn's ClientDisconnected is

        await client.app(scope, receive, send)
        await client.jobs.history.flush()
        runs = (await client.request("GET", "/_edgeruntime/api/runs")).json()["runs"]
        assert [(r["function"], r["http_status"]) for r in runs] == [("slow", 499)]
    assert "raised while handling" not in caplog.text
