"""`edgeruntime.dashboard` itself: the page, API and metrics are built on their first request."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

LAZY = """
import asyncio, json, sys
from edgeruntime.testing import EdgeClient

LAZY_MODULES = ("edgeruntime.dashboard.api", "starlette.applications", "starlette.routing")

async def main() -> None:
    async with EdgeClient(sys.argv[1]) as client:
        before = [m for m in LAZY_MODULES if m in sys.modules]
        api = await client.http.get("/_edgeruntime/api/functions")
        missing = await client.http.get("/_edgeruntime/api/nope")
        page = await client.http.get("/_edgeruntime/")
        metrics = await client.http.get("/_internal/metrics")
        print(json.dumps({
            "before": before,
            "after": [m for m in LAZY_MODULES if m in sys.modules],
            "functions": [f["name"] for f in api.json()["functions"]],
            "missing": [missing.status_code, missing.json()],
            "page": page.status_code,
            "metrics": metrics.status_code,
        }))

asyncio.run(main())
"""


def test_routes_and_api_load_on_the_first_dashboard_request(hello_dir: Path) -> None:
    # A fresh interpreter: this test process has imported everything already.
    out = subprocess.run(
        [sys.executable, "-c", LAZY, str(hello_dir)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    seen = json.loads(out)
    assert seen["before"] == []
    assert seen["after"] == ["edgeruntime.dashboard.api", "starlette.applications", "starlette.routing"]
    assert seen["functions"] == ["hello"]
    assert seen["missing"][0] == 404 and "error" in seen["missing"][1]
    assert (seen["page"], seen["metrics"]) == (200, 200)


def test_the_page_inserts_values_as_text_only() -> None:
    # Names, payloads, errors and responses come from functions and their callers (XSS).
    from importlib import resources

    script = resources.files("edgeruntime.dashboard").joinpath("static", "dashboard.js").read_text()
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("//"))
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function(", "href"):
        assert sink not in code, sink
