"""Who may see the dashboard: anyone on loopback, only the service role elsewhere.

When the server listens on a loopback address, the dashboard, its API and the metrics are open
(as the local Supabase stack's Studio is). On any other address they need the service-role key:
``Authorization: Bearer <service role JWT>``, ``apikey: <secret key or service role JWT>``, or
HTTP Basic with the key as the password (what a browser prompts for, and then sends with every
request of the page).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from collections.abc import Mapping

from edgeruntime.config.keys import Keys

__all__ = ["REALM", "is_cross_origin", "is_loopback", "is_service_role"]

REALM = "edgeruntime dashboard"


def is_loopback(host: str) -> bool:
    """True for `localhost`, 127.0.0.0/8 and ::1; False for 0.0.0.0, :: and every other address."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_cross_origin(method: str, headers: Mapping[str, str]) -> bool:
    """A state-changing request sent by a page of another site (CSRF): its `Origin` is not this host.

    Browsers send `Origin` with every cross-site POST or DELETE; scripts (curl, httpx) send none.
    """
    if method in ("GET", "HEAD", "OPTIONS"):
        return False
    if headers.get("sec-fetch-site") == "cross-site":
        return True
    origin = headers.get("origin")
    if origin is None:
        return False
    _, _, authority = origin.partition("://")
    return authority.lower() != headers.get("host", "").lower()


def _is_service_key(key: str, keys: Keys) -> bool:
    if hmac.compare_digest(key.encode(), keys.secret_key.encode()) or hmac.compare_digest(
        key.encode(), keys.service_role_key.encode()
    ):
        return True
    import jwt  # imported on the first check, not at start-up

    try:
        claims = jwt.decode(key, keys.jwt_secret, algorithms=["HS256"], options={"verify_aud": False})
    except jwt.PyJWTError:
        return False
    return claims.get("role") == "service_role"


def is_service_role(headers: Mapping[str, str], keys: Keys) -> bool:
    """Whether the request carries the service-role key (see the module docstring)."""
    candidates: list[str] = []
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value:
        candidates.append(value.strip())
    elif scheme.lower() == "basic" and value:
        try:
            _, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            password = ""
        if password:
            candidates.append(password)
    apikey = headers.get("apikey")
    if apikey:
        candidates.append(apikey.strip())
    return any(_is_service_key(c, keys) for c in candidates)
