"""The core every layer builds on: types, events and stop reasons, execution contexts, worker state,
background work, CPU metering, handlers, logs, the runtime's own responses, batched writes, the clock.

Imports only `edgeruntime.limits` and `edgeruntime.exceptions` (see docs/architecture.md).
"""
