"""Who may see the dashboard: anyone on loopback, only the service role elsewhere.

When the server listens on a loopback address, the dashboard, its API and the metrics are open
(as the local Supabase stack's Studio is) — to requests whose ``Host`` names loopback
(``localhost``, ``*.localhost``, 127.0.0.0/8, ``[::1]``) or a name of ``[dashboard]
allowed_hosts``. Any other ``Host`` is refused: under DNS rebinding a web page of another site
reaches the loopback server with its own name in ``Host`` (and a matching ``Origin``), so only the
``Host`` tells such a request apart. ``*.localhost`` names are accepted because browsers resolve
them to loopback themselves (RFC 6761): no remote site can obtain such an origin.

On any other address they need the service-role key: ``Authorization: Bearer <service role
JWT>``, ``apikey: <secret key or service role JWT>``, or HTTP Basic with the key as the password
(what a browser prompts for, and then sends with every request of the page). A request carrying
the key is served under any ``Host``.

The local stack's keys are public (printed in Supabase's docs): the fixed ``sb_secret_...`` key,
and any JWT signed with the demo JWT secret. They never take a request past the ``Host`` check of
a dashboard on loopback (a page under DNS rebinding can send them). Off loopback they are the
service-role key only of a server that runs with the demo secret, where every key is public and
``serve`` says so at start; a project with its own JWT secret has keys of its own.

The headers these rules read may each appear once (see :func:`access_headers`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

from edgeruntime.config.keys import SECRET_KEY, Keys
from edgeruntime.config.project import DEFAULT_JWT_SECRET
from edgeruntime.exceptions import DuplicateHeader

__all__ = [
    "REALM",
    "HostRule",
    "RefusalLog",
    "access_headers",
    "host_allowed",
    "is_cross_origin",
    "is_loopback",
    "is_service_role",
    "presents_public_key",
    "split_host",
]

logger = logging.getLogger("edgeruntime.dashboard")

REALM = "edgeruntime dashboard"
#: The headers the access rules read: a request that repeats one is refused (400).
SINGLE_HEADERS = {"authorization": "Authorization", "apikey": "apikey", "host": "Host", "origin": "Origin"}
#: Longest Host value written to the log (it is the client's choice).
LOGGED_HOST_CHARS = 200


def access_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request headers as text (lower-case names); DuplicateHeader if one the rules read repeats.

    A repeated credential or Host would leave the check reading one copy and something else
    (a proxy, the browser, the function) another.
    """
    headers: dict[str, str] = {}
    for key, value in raw:
        name = key.decode("latin-1").lower()
        if name in headers and name in SINGLE_HEADERS:
            raise DuplicateHeader(SINGLE_HEADERS[name])
        headers[name] = value.decode("latin-1")
    return headers


def is_loopback(host: str) -> bool:
    """True for `localhost`, 127.0.0.0/8 and ::1; False for 0.0.0.0, :: and every other address."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, str | None] | None:
    """The host (lower-case, IPv6 without brackets, no trailing dot) and port of a `Host` value.

    None if it is not a host with an optional numeric port.
    """
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
        port: str | None = rest[1:] if rest else None
    else:
        host, colon, after = value.partition(":")
        port = after if colon else None
        if host.endswith("."):  # the fully qualified form of the same name
            host = host[:-1]
    if not host or (port is not None and not (port.isascii() and port.isdigit() and len(port) <= 5)):
        return None
    return host, port


def _is_loopback_name(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


class HostRule(NamedTuple):
    """One `[dashboard] allowed_hosts` entry: a host (or `*.domain`) and, optionally, a port."""

    host: str
    port: str | None

    @classmethod
    def parse(cls, entry: str) -> HostRule:
        """The rule of a (validated) entry: `name`, `name:port`, `*.domain`, `[address]:port`."""
        wildcard = entry.startswith("*.")
        parsed = split_host(entry[1:] if wildcard else entry)
        if parsed is None:
            raise ValueError(f"not a host name: {entry!r}")
        host, port = parsed
        return cls(("*" + host) if wildcard else host, port)

    def matches(self, host: str, port: str | None) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host


def host_allowed(value: str | None, rules: Sequence[HostRule] = ()) -> bool:
    """Whether a request with `Host: value` may see a dashboard that is open on loopback.

    Loopback names (``localhost``, ``*.localhost``, 127.0.0.0/8, ``[::1]``, any port) and the
    names of `rules` are; a missing or malformed Host is not.
    """
    if value is None:
        return False
    parsed = split_host(value)
    if parsed is None:
        return False
    host, port = parsed
    return _is_loopback_name(host) or any(rule.matches(host, port) for rule in rules)


class RefusalLog:
    """Logs refused Host values at most once per `interval_sec`: the client chooses how many there are."""

    def __init__(self, interval_sec: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_sec = interval_sec
        self.clock = clock
        #: Refusals since the last line (not logged yet).
        self.unlogged = 0
        self._next_at = float("-inf")

    def refused(self, host: str | None) -> None:
        now = self.clock()
        if now < self._next_at:
            self.unlogged += 1
            return
        shown = "no Host header" if host is None else f"Host {host[:LOGGED_HOST_CHARS]!r}"
        more = f" ({self.unlogged} more refused since the last such line)" if self.unlogged else ""
        logger.warning(
            "dashboard: refused a request with %s: not a loopback name (DNS rebinding?); if the dashboard "
            "is proxied under that name, add it to [dashboard] allowed_hosts in config.toml%s",
            shown,
            more,
        )
        self.unlogged = 0
        self._next_at = now + self.interval_sec


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


def _is_public_key(key: str) -> bool:
    """The local stack's fixed secret key, or a JWT signed with its demo secret: anyone can present those."""
    if hmac.compare_digest(key.encode(), SECRET_KEY.encode()):
        return True
    import jwt  # imported on the first check, not at start-up

    try:  # the signature only: whatever its claims say, anyone could have signed them
        jwt.PyJWS().decode(key, DEFAULT_JWT_SECRET, algorithms=["HS256"])
    except jwt.PyJWTError:
        return False
    return True


def _is_service_key(key: str, keys: Keys, public: bool) -> bool:
    if not public and _is_public_key(key):
        return False
    if hmac.compare_digest(key.encode(), keys.secret_key.encode()) or hmac.compare_digest(
        key.encode(), keys.service_role_key.encode()
    ):
        return True
    import jwt

    try:
        claims = jwt.decode(key, keys.jwt_secret, algorithms=["HS256"], options={"verify_aud": False})
    except jwt.PyJWTError:
        return False
    return claims.get("role") == "service_role"


def is_service_role(headers: Mapping[str, str], keys: Keys, *, public: bool = False) -> bool:
    """Whether the request carries the service-role key (see the module docstring).

    One of the public demo keys counts only with `public`: off loopback, where a server with the
    demo JWT secret takes them as its keys (its start said they are public); on loopback they would
    let a page under DNS rebinding past the ``Host`` check.
    """
    return any(_is_service_key(c, keys, public) for c in _credentials(headers))


def presents_public_key(headers: Mapping[str, str]) -> bool:
    """Whether the request carries one of the local stack's public keys (to say why it is refused)."""
    return any(_is_public_key(c) for c in _credentials(headers))


def _credentials(headers: Mapping[str, str]) -> list[str]:
    """The keys a request presents: a Bearer token, a Basic password, an `apikey`."""
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
    return candidates
