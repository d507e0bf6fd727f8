"""websocket-relay: a WebSocket relay to the OpenAI Realtime API, as the Supabase guide's relay example.

The browser talks to this function; the function holds the upstream connection (with the API
key, which never reaches the browser) and relays JSON events both ways: what the browser sends
goes to OpenAI, what OpenAI sends comes back. When either side closes, the other is closed.
Served with ``verify_jwt = false`` (a browser cannot send an Authorization header on a WebSocket),
it checks the user's token from the ``jwt`` query parameter itself: an open relay would spend the
API key for anyone who finds it.

Env: ``OPENAI_API_KEY``; ``RELAY_UPSTREAM_URL`` (default: OpenAI's Realtime endpoint; the tests
point it at a local WebSocket server). The upstream client is the `websockets` package
(``pip install 'edgeruntime[examples]'``).

TypeScript original (the guide's relay, abridged; docs/websockets.md has it beside the Python)::

    wss.on("connection", async (ws) => {
      const client = new RealtimeClient({ apiKey: OPENAI_API_KEY });
      // Relay: OpenAI Realtime API Event -> Browser Event
      client.realtime.on("server.*", (event) => ws.send(JSON.stringify(event)));
      client.realtime.on("close", () => ws.close());
      // Relay: Browser Event -> OpenAI Realtime API Event
      ws.on("message", (data) => {
        const event = JSON.parse(data);
        client.realtime.send(event.type, event);
      });
      ws.on("close", () => client.disconnect());
      await client.connect();
    });
"""

import asyncio
import json
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from edgeruntime import Deno, InvalidJWT, serve, upgrade_websocket, verify_jwt

logger = logging.getLogger(__name__)

DEFAULT_UPSTREAM = "wss://api.openai.com/v1/realtime?model=gpt-4o-realtime-preview"


async def to_openai(ws: WebSocket, upstream: ClientConnection) -> None:
    """Browser event -> OpenAI Realtime API event."""
    async for data in ws.iter_text():
        try:
            event = json.loads(data)
            event_type = event["type"]
        except (ValueError, KeyError, TypeError) as exc:
            logger.error("Error parsing event from client: %s (%s)", data[:200], exc)
            continue
        logger.info('Relaying "%s" to OpenAI', event_type)
        await upstream.send(json.dumps(event))


async def to_client(ws: WebSocket, upstream: ClientConnection) -> None:
    """OpenAI Realtime API event -> browser event."""
    async for data in upstream:
        event = json.loads(data)
        logger.info('Relaying "%s" to Client', event.get("type"))
        await ws.send_text(json.dumps(event))


@serve
async def handler(req: Request) -> JSONResponse | None:
    if req.headers.get("upgrade", "").lower() != "websocket":
        return JSONResponse({"error": "request isn't trying to upgrade to WebSocket."}, status_code=400)
    try:
        verify_jwt(req.query_params.get("jwt"))
    except InvalidJWT as exc:
        logger.error("refused: %s", exc)
        return JSONResponse({"error": "Invalid token provided"}, status_code=403)
    api_key = Deno.env.get("OPENAI_API_KEY")
    if not api_key:
        logger.error("OPENAI_API_KEY is not set")
        return JSONResponse({"error": "OPENAI_API_KEY is not set"}, status_code=500)

    ws = await upgrade_websocket(req)
    logger.info('Connecting with key "%s..."', api_key[:3])
    url = Deno.env.get("RELAY_UPSTREAM_URL") or DEFAULT_UPSTREAM
    try:
        upstream = await connect(
            url, additional_headers={"Authorization": f"Bearer {api_key}", "OpenAI-Beta": "realtime=v1"}
        )
    except (OSError, ConnectionClosed, TimeoutError) as exc:
        logger.error("Error connecting to OpenAI: %s", exc)
        await ws.close(1011, "upstream unavailable")
        return None
    logger.info("Connected to OpenAI successfully!")
    async with upstream:
        # The first side to finish ends the relay; the other is cancelled and closed.
        relays = [
            asyncio.ensure_future(to_openai(ws, upstream)),
            asyncio.ensure_future(to_client(ws, upstream)),
        ]
        try:
            done, pending = await asyncio.wait(relays, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in relays:
                task.cancel()
        for task in done:
            error = task.exception()
            if error is not None and not isinstance(error, (ConnectionClosed, WebSocketDisconnect)):
                raise error
    return None
