"""Functions on disk: the name rule, finding functions, loading a function's module, hot reload.

Imports `core` and below (see docs/architecture.md).
"""
