"""The architecture as docs/architecture.md describes it: what importing a layer loads."""

from __future__ import annotations

import subprocess
import sys


def loaded_after(code: str, candidates: tuple[str, ...]) -> list[str]:
    """Which of `candidates` (top-level packages) a fresh interpreter has loaded after running `code`."""
    probe = f"{code}\nimport sys\nprint(','.join(sorted(m for m in {candidates!r} if m in sys.modules)))\n"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return [name for name in done.stdout.strip().split(",") if name]


def test_reading_config_does_not_load_starlette() -> None:
    """`edgeruntime keys`, `list` and the jobs CLI read config.toml without loading the web stack."""
    code = "import edgeruntime.config.project, edgeruntime.config.settings, edgeruntime.config.env"
    assert loaded_after(code, ("starlette", "httpx", "anyio")) == []


def test_serving_imports_what_the_first_request_needs_only() -> None:
    # What `edgeruntime serve --server uvicorn` imports before its socket accepts (inline
    # isolation, no cron): prometheus_client waits for the first scrape, h11 for a server without
    # httptools, ctypes for a worker process, cronsim and zoneinfo for a cron, difflib for a
    # "did you mean" in a warning about config.toml.
    code = (
        "import edgeruntime.serving.cli, edgeruntime.serving.build, edgeruntime.serving.server\n"
        "from edgeruntime.serving.uvicorn_http import head_limited_protocol\n"
        "head_limited_protocol()"
    )
    unneeded = ("prometheus_client", "h11", "ctypes", "cronsim", "zoneinfo", "difflib")
    assert loaded_after(code, unneeded) == []
