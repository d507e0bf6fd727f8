"""Finding functions: every ``functions/<name>/index.py`` whose name is a valid function name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgeruntime.exceptions import UsageError
from edgeruntime.functions.slug import is_valid_slug

__all__ = ["ENTRYPOINT", "PACKAGE", "SHARED", "FunctionSpec", "check_functions_dir", "discover", "function_for_path"]

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
    """Every `<functions_dir>/<name>/index.py` whose name is a valid slug, by name."""
    root = functions_dir.resolve()
    found: dict[str, FunctionSpec] = {}
    # scandir knows which entries are directories and symlinks: one stat per function (its
    # index.py), not the seven of is_dir, is_file and resolving every path component.
    with os.scandir(root) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        if entry.is_dir() and is_valid_slug(entry.name) and os.path.isfile(os.path.join(entry.path, ENTRYPOINT)):
            directory = Path(entry.path)
            found[entry.name] = FunctionSpec(entry.name, directory.resolve() if entry.is_symlink() else directory)
    return found


def function_for_path(functions_dir: Path, changed: Path) -> str | None:
    """The function a changed file belongs to (`_shared` for shared code), or None."""
    try:
        relative = changed.resolve().relative_to(functions_dir)
    except ValueError:
        return None
    return relative.parts[0] if len(relative.parts) > 1 else None
