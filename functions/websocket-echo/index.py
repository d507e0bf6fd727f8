"""websocket-echo: a WebSocket server with the token check of the Supabase guide "Handling WebSockets".

A browser cannot put an Authorization header on a WebSocket, so this function is served with
``verify_jwt = false`` (config.toml) and checks the token itself, with the server's keys: from the
``jwt`` query parameter (``ws://…/functions/v1/websocket-echo?jwt=<token>``), or from a
``jwt-<token>`` entry of ``Sec-WebSocket-Protocol``, answered with that protocol (a browser drops
a connection whose server picks none of the protocols it offered). A request that is no upgrade
gets 400, a missing or invalid token 403. Once accepted, every message comes back as it came
(the guide answers each with the date; an echo shows the round trip).

TypeScript original (the guide's "Authentication", using query params; docs/websockets.md has it
all beside the Python)::

    export default {
      fetch: async (req) => {
        const upgrade = req.headers.get('upgrade') || ''
        if (upgrade.toLowerCase() != 'websocket') {
          return Response.json({ error: "request isn't trying to upgrade to WebSocket." }, { status: 400 })
        }
        const url = new URL(req.url)
        const jwt = url.searchParams.get('jwt')
        if (!jwt) {
          return Response.json({ error: 'Auth token not provided' }, { status: 403 })
        }
        const { error, data } = await supabase.auth.getUser(jwt)
        if (error) {
          return Response.json({ error: 'Invalid token provided' }, { status: 403 })
        }
        const { socket, response } = Deno.upgradeWebSocket(req)
        socket.onmessage = (e) => socket.send(new Date().toString())
        return response
      },
    }

    websocat "ws://127.0.0.1:54321/functions/v1/websocket-echo?jwt=$(edgeruntime keys --anon)"
"""

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse

from edgeruntime import InvalidJWT, serve, upgrade_websocket, verify_jwt

logger = logging.getLogger(__name__)


def token_of(req: Request) -> tuple[str | None, str | None]:
    """The token the client sent and, when it came as a `jwt-<token>` protocol, that protocol."""
    token = req.query_params.get("jwt")
    if token:
        return token, None
    # Sec-WebSocket-Protocol may carry several values: `jwt-TOKEN, value1, value2`.
    offered = [p.strip() for p in req.headers.get("sec-websocket-protocol", "").split(",")]
    protocol = next((p for p in offered if p.startswith("jwt-")), None)
    return (protocol.removeprefix("jwt-"), protocol) if protocol else (None, None)


@serve
async def handler(req: Request) -> JSONResponse | None:
    if req.headers.get("upgrade", "").lower() != "websocket":
        return JSONResponse({"error": "request isn't trying to upgrade to WebSocket."}, status_code=400)

    token, protocol = token_of(req)
    if not token:
        logger.error("Auth token not provided")
        return JSONResponse({"error": "Auth token not provided"}, status_code=403)
    try:
        claims = verify_jwt(token)
    except InvalidJWT as exc:
        logger.error("invalid token: %s (%s)", exc, exc.code)
        return JSONResponse({"error": "Invalid token provided"}, status_code=403)

    ws = await upgrade_websocket(req, protocol=protocol)
    logger.info("socket opened (role %s)", claims.get("role"))
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            break
        if message.get("text") is not None:
            await ws.send_text(message["text"])
        else:
            await ws.send_bytes(message["bytes"])
    logger.info("socket closed")
    return None
