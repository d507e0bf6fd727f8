"""Checking a function's source without running it: every ``.py`` file of its directory compiled.

Importing a module runs its code, which must happen only when a worker boots; compiling it runs
nothing and finds every syntax error (``SyntaxError``, ``IndentationError``, a ``return`` outside a
function ...), with its file and line. Errors that only importing finds (a missing module, an
exception at module level) are found when the function boots, as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgeruntime.functions.discovery import FunctionSpec

__all__ = ["SourceError", "check_source"]

#: Directories of a function that hold no source of its own.
_SKIPPED_DIRS = frozenset({"__pycache__", "node_modules", ".git", ".venv", "venv"})
#: A function directory with more Python files than this is checked only this far.
MAX_FILES = 500


@dataclass(frozen=True)
class SourceError:
    """A syntax error in a function's files."""

    path: Path
    line: int | None
    #: The error as Python says it: "SyntaxError: invalid syntax".
    message: str

    def __str__(self) -> str:
        where = f"{self.path}, line {self.line}" if self.line is not None else str(self.path)
        return f"{self.message} ({where})"


def _sources(directory: Path) -> list[Path]:
    """The `.py` files of `directory` and its subdirectories, index.py first, in a stable order."""
    found: list[Path] = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS and not d.startswith("."))
        found.extend(Path(root, name) for name in sorted(files) if name.endswith(".py"))
        if len(found) >= MAX_FILES:
            break
    entry = directory / "index.py"
    return sorted(found[:MAX_FILES], key=lambda path: (path != entry, str(path)))


def check_source(spec: FunctionSpec) -> SourceError | None:
    """Compile every `.py` file of `spec`'s directory (index.py first); the first syntax error, or None.

    A file that cannot be read is not reported here: booting the function reports it.
    """
    for path in _sources(spec.directory):
        try:
            source = path.read_bytes()
        except OSError:
            continue
        try:
            compile(source, str(path), "exec", dont_inherit=True)
        except SyntaxError as exc:
            return SourceError(path, exc.lineno, f"{type(exc).__name__}: {exc.msg}")
        except ValueError as exc:  # a NUL byte in the source
            return SourceError(path, None, f"{type(exc).__name__}: {exc}")
    return None
