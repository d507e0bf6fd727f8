"""hello: the smallest edge function.

curl http://127.0.0.1:54321/functions/v1/hello -H "Authorization: Bearer $(edgeruntime keys --anon)"
"""

from starlette.requests import Request
from starlette.responses import JSONResponse

from edgeruntime import serve


@serve
async def handler(req: Request) -> JSONResponse:
    return JSONResponse({"message": "Hello from edgeruntime!", "path": req.url.path})
