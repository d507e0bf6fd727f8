"""Running edgeruntime bound by file modes, as every user but root is.

The tests run as root, and root writes to a file of mode 0444 all the same: CAP_DAC_OVERRIDE
lets it. A child started with `drop_mode_override` as its preexec_fn has that capability (and
CAP_DAC_READ_SEARCH) removed from its bounding set, so once it execs it is root without them: the
kernel applies the file's mode bits to it as to its owner. (SQLite's `?mode=ro` or `immutable=1`
would only make SQLite itself refuse, which is not what a user with a read-only file meets.)
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Sequence

import pytest

__all__ = ["run_bound_by_file_modes"]

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2


def drop_mode_override() -> None:
    """preexec_fn: drop the capabilities that let root ignore file modes (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_bound_by_file_modes(args: Sequence[str], *, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`python -m edgeruntime ARGS` with file modes binding it; skips where that cannot be arranged."""
    preexec = drop_mode_override if os.geteuid() == 0 else None
    try:
        return subprocess.run(
            [sys.executable, "-m", "edgeruntime", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
            preexec_fn=preexec,
        )
    except subprocess.SubprocessError as exc:
        if isinstance(exc, subprocess.TimeoutExpired):
            raise
        pytest.skip(f"cannot run a child without CAP_DAC_OVERRIDE here: {exc}")
