from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from edgeruntime import serve


@serve
async def handler(req: Request) -> JSONResponse:
    return JSONResponse({"ok": True})
