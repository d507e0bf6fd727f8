"""Process isolation: a function worker in its own worker process (parent side, child side, channel)."""
