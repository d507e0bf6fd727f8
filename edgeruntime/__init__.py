"""Run Supabase-style edge functions written in Python, with the edge runtime's semantics."""

from __future__ import annotations

from edgeruntime.exceptions import EdgeRuntimeError
from edgeruntime.limits import Limits
from edgeruntime.runtime import Deno, EdgeRuntime, serve

__version__ = "0.1.0"

__all__ = ["Deno", "EdgeRuntime", "EdgeRuntimeError", "Limits", "__version__", "serve"]
