"""Serving: the HTTP server, script mode, the command line and scaffolding."""
