"""Function workers: the inline worker, its lifecycle and request limits, the supervisor of each
function; `process/` runs a function worker in its own worker process.

Imports `config` and below (see docs/architecture.md).
"""
