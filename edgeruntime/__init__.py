"""Run Supabase-style edge functions written in Python, with the edge runtime's semantics."""

from __future__ import annotations

import importlib
import typing

if typing.TYPE_CHECKING:
    from edgeruntime.exceptions import EdgeRuntimeError, InvalidJWT
    from edgeruntime.limits import Limits
    from edgeruntime.runtime import Deno, EdgeRuntime, serve, upgrade_websocket, verify_jwt

__version__ = "0.1.0"

__all__ = [
    "Deno",
    "EdgeRuntime",
    "EdgeRuntimeError",
    "InvalidJWT",
    "Limits",
    "__version__",
    "serve",
    "upgrade_websocket",
    "verify_jwt",
]

# The public names are imported on first use: `python -m edgeruntime` imports this package before
# it runs, and `edgeruntime.__main__` pauses the garbage collector before the heavy imports
# (asyncio, Starlette), which it can only do if importing the package itself is cheap.
_EXPORTS = {
    "Deno": "edgeruntime.runtime",
    "EdgeRuntime": "edgeruntime.runtime",
    "serve": "edgeruntime.runtime",
    "upgrade_websocket": "edgeruntime.runtime",
    "verify_jwt": "edgeruntime.runtime",
    "EdgeRuntimeError": "edgeruntime.exceptions",
    "InvalidJWT": "edgeruntime.exceptions",
    "Limits": "edgeruntime.limits",
}


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
