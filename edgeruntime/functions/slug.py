"""The function name rule: which directory names are servable functions."""

from __future__ import annotations

import re

__all__ = ["MAX_SLUG_LENGTH", "SLUG_PATTERN", "is_valid_slug"]

#: The function name rule of the Supabase CLI.
SLUG_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
#: Names longer than this are refused before any lookup.
MAX_SLUG_LENGTH = 128


def is_valid_slug(name: str) -> bool:
    """True if `name` is a servable function name (`_x` and `.x` never are)."""
    return len(name) <= MAX_SLUG_LENGTH and SLUG_PATTERN.match(name) is not None
