"""Tools the deployment tests take from the machine: skip without them locally, fail in CI."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import pytest

REQUIRE = "EDGERUNTIME_REQUIRE_TOOLS"


def missing(reason: str) -> NoReturn:
    """Skip with `reason`; fail instead when EDGERUNTIME_REQUIRE_TOOLS=1 (.ci/run sets it)."""
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{reason} ({REQUIRE}=1)")
    pytest.skip(reason)


def tool_or_skip(name: str, install: str) -> str:
    """The path of the executable `name`, or skip/fail saying how to install it.

    Looked up beside this Python first (a tool installed by pip into the virtualenv that runs
    pytest, whose bin/ need not be on PATH), then on PATH and in the sbin directories.
    """
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    # Debian keeps nginx in /usr/sbin, which a non-root PATH may lack.
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"]))
    if found is None:
        missing(f"{name} is not installed ({install})")
    return found
