"""Finding functions: every ``functions/<name>/index.py`` whose name is a valid function name."""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from edgeruntime.exceptions import UsageError
from edgeruntime.functions.slug import is_valid_slug

__all__ = ["ENTRYPOINT", "PACKAGE", "SHARED", "FunctionSpec", "check_functions_dir", "discover", "function_for_path"]

logger = logging.getLogger("edgeruntime")

ENTRYPOINT = "index.py"
#: Every function module lives below this synthetic package, one sub-package per function,
#: so two functions may define the same names and use relative imports (`from .db import x`).
PACKAGE = "_edgeruntime_functions"
#: The shared-code directory, importable as `_shared` while functions load.
SHARED = "_shared"


@dataclass(frozen=True)
class FunctionSpec:
    """A function found on disk."""

    name: str
    directory: Path

    @property
    def entrypoint(self) -> Path:
        return self.directory / ENTRYPOINT

    @property
    def package(self) -> str:
        return f"{PACKAGE}.{self.name}"


def check_functions_dir(path: Path) -> Path:
    """Resolve the functions directory or raise UsageError naming what is wrong."""
    if not path.exists():
        raise UsageError(f"functions directory {path} does not exist")
    if not path.is_dir():
        raise UsageError(f"{path} is a file, not a functions directory")
    return path.resolve()


def discover(functions_dir: Path) -> dict[str, FunctionSpec]:
    """Every `<functions_dir>/<name>/index.py` whose name is a valid slug, by name.

    A function directory that cannot be read (a symlink loop, no permission...) is skipped with a
    warning naming it, once while it stays unreadable: discovery runs again on every reload.
    """
    root = functions_dir.resolve()
    found: dict[str, FunctionSpec] = {}
    unreadable: dict[str, str] = {}
    # scandir knows which entries are directories and symlinks: one stat per function (its
    # index.py), not the seven of is_dir, is_file and resolving every path component.
    with os.scandir(root) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        if not is_valid_slug(entry.name):
            continue
        try:
            if not entry.is_dir() or not stat.S_ISREG(os.stat(os.path.join(entry.path, ENTRYPOINT)).st_mode):
                continue
            directory = Path(entry.path)
            found[entry.name] = FunctionSpec(entry.name, directory.resolve() if entry.is_symlink() else directory)
        except (OSError, RuntimeError) as exc:  # RuntimeError: Path.resolve's symlink loop before Python 3.13
            if not isinstance(exc, OSError) or exc.errno not in _NOT_THERE:
                unreadable[entry.path] = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    _warn_unreadable(root, unreadable)
    return found


#: What a directory without an index.py (or a dangling symlink) answers: not a function, nothing to say.
_NOT_THERE = frozenset({errno.ENOENT, errno.ENOTDIR})
#: The unreadable entries already warned about, by functions directory (said again once readable again).
_warned: dict[Path, set[str]] = {}


def _warn_unreadable(root: Path, unreadable: dict[str, str]) -> None:
    warned = _warned.setdefault(root, set())
    for path, reason in unreadable.items():
        if path not in warned:
            logger.warning("skipping function directory %s: cannot be read (%s)", path, reason)
    warned.intersection_update(unreadable)
    warned.update(unreadable)
    if not warned:
        del _warned[root]


def function_for_path(functions_dir: Path, changed: Path) -> str | None:
    """The function a changed file belongs to (`_shared` for shared code), or None."""
    try:
        # realpath, not Path.resolve: a symlink loop is a path like any other here (resolve raises).
        relative = Path(os.path.realpath(changed)).relative_to(functions_dir)
    except ValueError:
        return None
    return relative.parts[0] if len(relative.parts) > 1 else None
