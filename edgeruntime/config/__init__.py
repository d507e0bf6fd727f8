"""Configuration: config.toml, the functions' env, the keys a server hands out, the resolved settings.

Imports `functions` and below; never Starlette (see docs/architecture.md).
"""
