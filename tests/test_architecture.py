"""The architecture as docs/architecture.md describes it: what importing a layer loads."""

from __future__ import annotations

import subprocess
import sys


def test_reading_config_does_not_load_starlette() -> None:
    """`edgeruntime keys`, `list` and the jobs CLI read config.toml without loading the web stack."""
    code = (
        "import sys\n"
        "import edgeruntime.config.project, edgeruntime.config.settings, edgeruntime.config.env\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'httpx', 'anyio'))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == ""
