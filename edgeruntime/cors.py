"""CORS for browser callers: the ``corsHeaders`` pattern of Supabase edge functions, in Python.

The TypeScript functions this ports keep a ``corsHeaders`` object, answer the ``OPTIONS``
preflight with it and spread it into every response::

    from edgeruntime.cors import CORS_HEADERS, preflight

    async def handler(req: Request) -> Response:
        if (answer := preflight(req)) is not None:   # if (req.method === 'OPTIONS') ...
            return answer
        return JSONResponse({"ok": True}, headers=CORS_HEADERS)

or, for a whole handler at once, ``serve(with_cors(handler))``. The gateway never checks a JWT on
``OPTIONS`` (as the Supabase runtime), so the preflight reaches the function without a key.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import Response

from edgeruntime.core.metering import run_in_thread_metered

__all__ = ["CORS_HEADERS", "add_cors_headers", "preflight", "with_cors"]

#: The seeds' ``corsHeaders``: any origin, and the headers supabase-js sends.
CORS_HEADERS: Mapping[str, str] = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "authorization, x-client-info, apikey, content-type",
}

RequestHandler = Callable[[Request], Awaitable[Response] | Response]


def preflight(request: Request, headers: Mapping[str, str] = CORS_HEADERS) -> Response | None:
    """The answer to an ``OPTIONS`` preflight (200, no body, the CORS headers), or None for other methods.

    Like ``new Response(null, { headers: corsHeaders })``: no content type, an empty body.
    """
    if request.method != "OPTIONS":
        return None
    return Response(None, status_code=200, headers=dict(headers))


def add_cors_headers(response: Response, headers: Mapping[str, str] = CORS_HEADERS) -> Response:
    """Set the CORS headers on `response` (those it already sets are kept) and return it."""
    for name, value in headers.items():
        if name not in response.headers:
            response.headers[name] = value
    return response


def with_cors(
    handler: RequestHandler, headers: Mapping[str, str] = CORS_HEADERS
) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a request handler (``def`` or ``async def``, one request argument): answer preflights
    and add the CORS headers to every response."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        answer = preflight(request, headers)
        if answer is not None:
            return answer
        response: Any
        if inspect.iscoroutinefunction(handler):
            response = await handler(request)
        else:  # a plain `def` handler runs as `serve` runs it: its body read first, then in a thread,
            # one of the runtime's for sync handlers, its CPU counted against the function's limits
            await request.body()
            response = await run_in_thread_metered(handler, request)
            if inspect.isawaitable(response):
                response = await response
        if isinstance(response, Response):
            add_cors_headers(response, headers)
        # Anything else goes on as it is: the gateway answers a non-Response with its 502.
        return cast(Response, response)

    return wrapped
