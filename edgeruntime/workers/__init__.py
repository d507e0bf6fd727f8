"""Function workers: the inline worker, its lifecycle and request limits, the supervisor."""
