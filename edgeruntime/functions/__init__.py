"""Functions on disk: the name rule, discovery, loading a function's module, hot reload."""
