"""Code the bundled functions share: `from _shared.supabase_admin import supabase_admin`.

A directory starting with `_` is never served; the functions directory is on the import path
while functions load, so every function can import from here (as `supabase/functions/_shared/`).
"""
