"""The gateway: the ASGI app in front of every function, and JWT verification."""
