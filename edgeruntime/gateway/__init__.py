"""The gateway: the ASGI app in front of every function, JWT verification, the extension interface.

Imports `workers` and below (see docs/architecture.md).
"""
