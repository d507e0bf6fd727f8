"""Finding functions (``functions/<name>/index.py``) and loading each one as its own module."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

from edgeruntime.core.context import WorkerState, booting
from edgeruntime.core.types import Handler
from edgeruntime.exceptions import BootError, UsageError, WorkerCrashed
from edgeruntime.runtime import HANDLER_ATTRIBUTE

__all__ = ["ENTRYPOINT", "FunctionSpec", "discover", "is_valid_slug", "load_function_module"]

#: The function name rule of the Supabase CLI.
SLUG_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
#: Names longer than this are refused before any lookup.
MAX_SLUG_LENGTH = 128
ENTRYPOINT = "index.py"
#: Every function module lives below this synthetic package, one sub-package per function,
#: so two functions may define the same names and use relative imports (`from .db import x`).
PACKAGE = "_edgeruntime_functions"
#: The shared-code directory, importable as `_shared` while functions load.
SHARED = "_shared"


def is_valid_slug(name: str) -> bool:
    """True if `name` is a servable function name (`_x` and `.x` never are)."""
    return len(name) <= MAX_SLUG_LENGTH and SLUG_PATTERN.match(name) is not None


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


def purge_modules(prefix: str) -> None:
    """Forget `prefix` and its submodules so the next import reads the files again."""
    for key in [k for k in sys.modules if k == prefix or k.startswith(prefix + ".")]:
        del sys.modules[key]


def ensure_on_path(functions_dir: Path) -> None:
    """Put the functions directory on the import path so `_shared` imports work."""
    entry = str(functions_dir)
    if entry not in sys.path:
        sys.path.insert(0, entry)


def load_function_module(spec: FunctionSpec, state: WorkerState) -> tuple[types.ModuleType, Handler]:
    """Import `spec`'s index.py afresh and return the module and the handler it served.

    Raises BootError for a syntax or import error or a missing `serve()` call (503 BOOT_ERROR),
    and WorkerCrashed for any other exception at module level (500 WORKER_ERROR), as the edge
    runtime tells boot errors from uncaught top-level exceptions.
    """
    ensure_on_path(spec.directory.parent)
    purge_modules(spec.package)
    if PACKAGE not in sys.modules:
        root = types.ModuleType(PACKAGE)
        root.__path__ = []
        sys.modules[PACKAGE] = root
    package = types.ModuleType(spec.package)
    package.__path__ = [str(spec.directory)]
    package.__package__ = spec.package
    sys.modules[spec.package] = package

    module_name = f"{spec.package}.index"
    import_spec = importlib.util.spec_from_file_location(module_name, spec.entrypoint)
    if import_spec is None or import_spec.loader is None:  # pragma: no cover - a file we found
        raise BootError(spec.name, f"{spec.entrypoint}: cannot be loaded")
    module = importlib.util.module_from_spec(import_spec)
    sys.modules[module_name] = module
    token = booting.set(state)
    try:
        import_spec.loader.exec_module(module)
    except (SyntaxError, ImportError) as exc:
        purge_modules(spec.package)
        raise BootError(spec.name, f"function {spec.name} failed to boot: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        purge_modules(spec.package)
        raise WorkerCrashed(
            spec.name, f"function {spec.name} raised while loading: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        booting.reset(token)
    handler = state.handlers[-1] if state.handlers else getattr(module, HANDLER_ATTRIBUTE, None)
    if handler is None:
        purge_modules(spec.package)
        raise BootError(spec.name, f"function {spec.name} did not call serve(handler) in {spec.entrypoint}")
    return module, handler
