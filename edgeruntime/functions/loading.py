"""Loading a function: importing its ``index.py`` afresh as its own module, under its worker."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

from edgeruntime.core.descriptors import exhaustion
from edgeruntime.core.types import Handler
from edgeruntime.core.worker_state import HANDLER_ATTRIBUTE, WorkerState, booting
from edgeruntime.exceptions import BootError, ResourceExhausted, WorkerCrashed
from edgeruntime.functions.discovery import PACKAGE, FunctionSpec

__all__ = ["ensure_on_path", "load_function_module", "purge_modules"]


def purge_modules(prefix: str) -> None:
    """Forget `prefix` and its submodules so the next import reads the files again."""
    # A copy first: another thread may import meanwhile (inline workers boot in threads of their own).
    for key in [k for k in list(sys.modules) if k == prefix or k.startswith(prefix + ".")]:
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
    runtime tells boot errors from uncaught top-level exceptions; ResourceExhausted (503
    RESOURCE_EXHAUSTED) when loading failed for want of file descriptors.
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
    except Exception as exc:
        purge_modules(spec.package)
        if exhaustion(exc) is not None:  # not the function's fault: reading index.py, or its own open()
            raise ResourceExhausted(spec.name, f"loading function {spec.name}") from exc
        if isinstance(exc, SyntaxError | ImportError):
            raise BootError(spec.name, f"function {spec.name} failed to boot: {type(exc).__name__}: {exc}") from exc
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
