"""Serving: the HTTP server, script mode, the command line, scaffolding, and the one place the app is
built (`build.py`).

Imports `dashboard` and below (see docs/architecture.md).
"""
