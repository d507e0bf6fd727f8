"""The core every layer builds on: types, execution contexts, background work, metering, handlers, logs, responses."""
