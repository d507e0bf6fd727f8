"""`edgeruntime new NAME`: the files of a new function."""

from __future__ import annotations

from pathlib import Path

from edgeruntime.discovery import ENTRYPOINT, is_valid_slug
from edgeruntime.exceptions import UsageError

__all__ = ["TEMPLATES", "create_function"]

BASIC = '''\
"""{name}: an edge function. Serve it with `edgeruntime serve`, then:

    curl -i http://127.0.0.1:54321/functions/v1/{name} \\
      -H "Authorization: Bearer $(edgeruntime keys --anon)" -d '{{"name": "Functions"}}'
"""

from starlette.requests import Request
from starlette.responses import JSONResponse

from edgeruntime import serve


async def handler(req: Request) -> JSONResponse:
    body = await req.json() if await req.body() else {{}}
    name = body.get("name", "world")
    return JSONResponse({{"message": f"Hello {{name}}!"}})


serve(handler)
'''

TEMPLATES: dict[str, str] = {"basic": BASIC}


def create_function(functions_dir: Path, name: str, template: str = "basic") -> Path:
    """Write `<functions_dir>/<name>/index.py` from `template`; refuses to overwrite."""
    if not is_valid_slug(name):
        raise UsageError(f"invalid function name {name!r}: use a letter followed by letters, digits, '-' or '_'")
    if template not in TEMPLATES:
        raise UsageError(f"unknown template {template!r}: expected one of {', '.join(sorted(TEMPLATES))}")
    target = functions_dir / name / ENTRYPOINT
    if target.exists():
        raise UsageError(f"{target} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(TEMPLATES[template].format(name=name), encoding="utf-8")
    return target
