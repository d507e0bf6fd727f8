"""JWT verification as the local Supabase gateway and edge runtime main worker do it.

HS256 tokens are checked against the JWT secret, ES256/RS256 tokens against ``SUPABASE_JWKS``;
``exp`` is enforced, OPTIONS is never checked, and an ``apikey`` header holding the local
publishable or secret key stands for the anon or service-role JWT (as the local gateway rewrites
it). The 401 bodies are the local CLI's.

Each credential header may appear once: HTTP lets a header repeat, and servers, proxies and
frameworks disagree on which copy counts (Starlette's ``request.headers[...]`` reads the first, a
dict built from the list keeps the last). A request that repeats one is refused (400) before any
function runs, whether or not its function verifies JWTs, so the value checked is the value the
function reads (see :func:`credentials`).
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from edgeruntime.config.keys import ASYMMETRIC_ALGORITHMS, Keys
from edgeruntime.exceptions import DuplicateHeader

if TYPE_CHECKING:
    import jwt

__all__ = ["AuthFailure", "TokenVerifier", "Verifier", "credentials"]

logger = logging.getLogger("edgeruntime")


def _same(given: str, expected: str) -> bool:
    """Compare a presented key in constant time (the secret key is a credential)."""
    return hmac.compare_digest(given.encode("latin-1", "replace"), expected.encode("latin-1", "replace"))


def credentials(raw: Iterable[tuple[bytes, bytes]]) -> tuple[bytes | None, bytes | None]:
    """The request's `Authorization` and `apikey` values (None when absent).

    Raises DuplicateHeader when either is sent more than once. Header names are lower-case, as
    every ASGI server (and httpx's ASGITransport) passes them.
    """
    authorization = apikey = None
    for name, value in raw:  # a plain loop: it runs on every request
        if name == b"authorization":
            if authorization is not None:
                raise DuplicateHeader("Authorization")
            authorization = value
        elif name == b"apikey":
            if apikey is not None:
                raise DuplicateHeader("apikey")
            apikey = value
    return authorization, apikey


@dataclass(frozen=True)
class AuthFailure:
    """Why a request was refused: the 401 body and the `sb-error-code` header."""

    message: str
    code: str

    @property
    def body(self) -> bytes:
        return json.dumps({"msg": self.message}, separators=(",", ":")).encode()


MISSING = AuthFailure("Error: Missing authorization header", "UNAUTHORIZED_NO_AUTH_HEADER")
NOT_BEARER = AuthFailure("Error: Auth header is not 'Bearer {token}'", "UNAUTHORIZED_INVALID_JWT_FORMAT")
INVALID_FORMAT = AuthFailure("Invalid JWT", "UNAUTHORIZED_INVALID_JWT_FORMAT")
INVALID_LEGACY = AuthFailure("Invalid JWT", "UNAUTHORIZED_LEGACY_JWT")
INVALID_ASYMMETRIC = AuthFailure("Invalid JWT", "UNAUTHORIZED_ASYMMETRIC_JWT")
UNSUPPORTED_ALG = AuthFailure("Invalid JWT", "UNAUTHORIZED_UNSUPPORTED_TOKEN_ALGORITHM")
#: `verify_jwt(token)` in a function, given no token.
MISSING_TOKEN = AuthFailure("Missing token", "UNAUTHORIZED_NO_AUTH_HEADER")


def _as_text(authorization: bytes | None, apikey: bytes | None) -> dict[str, str]:
    headers = {}
    if authorization is not None:
        headers["authorization"] = authorization.decode("latin-1")
    if apikey is not None:
        headers["apikey"] = apikey.decode("latin-1")
    return headers


class TokenVerifier:
    """Checks a JWT as the local main worker does: HS256 against the JWT secret(s), ES256 and RS256
    against the public keys of a JWK set; ``exp`` is enforced, audience and issuer are not."""

    def __init__(self, secrets: Sequence[str], jwks: str | None = None) -> None:
        self.secrets = tuple(secrets)
        self.jwks_json = jwks

    @classmethod
    def from_jwks(cls, jwks: str | None) -> TokenVerifier:
        """A verifier from a JWK set alone (``SUPABASE_JWKS``: its ``oct`` key is the JWT secret)."""
        secrets: list[str] = []
        if jwks:
            try:
                entries = json.loads(jwks).get("keys", [])
            except (ValueError, AttributeError):
                entries = []
            for entry in entries if isinstance(entries, list) else []:
                k = entry.get("k") if isinstance(entry, dict) and entry.get("kty") == "oct" else None
                if isinstance(k, str):
                    try:
                        secrets.append(base64.urlsafe_b64decode(k + "=" * (-len(k) % 4)).decode())
                    except (ValueError, UnicodeDecodeError):
                        continue
        return cls(secrets, jwks)

    @cached_property
    def _jwks(self) -> jwt.PyJWKSet | None:
        if not self.jwks_json:
            return None
        import jwt

        try:
            data = json.loads(self.jwks_json)
            keys = [k for k in data.get("keys", []) if k.get("kty") in ("EC", "RSA")]
            return jwt.PyJWKSet(keys) if keys else None
        except (ValueError, jwt.PyJWTError, AttributeError) as exc:
            # Asymmetric tokens will all be refused; say why once instead of on every request.
            logger.warning("SUPABASE_JWKS is not a usable JWK set (%s): ES256/RS256 tokens are refused", exc)
            return None

    def verify(self, token: str) -> tuple[AuthFailure | None, dict[str, Any]]:
        """(None, the token's claims) if `token` is valid, else (the failure, {})."""
        import jwt  # imported on the first check, not at start-up

        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError:
            return INVALID_FORMAT, {}
        options: Any = {"verify_aud": False, "verify_iss": False}
        try:
            if alg == "HS256":
                for secret in self.secrets:
                    try:
                        return None, jwt.decode(token, secret, algorithms=["HS256"], options=options)
                    except jwt.InvalidSignatureError:
                        continue
                return INVALID_LEGACY, {}
            if alg in ASYMMETRIC_ALGORITHMS:
                kid = jwt.get_unverified_header(token).get("kid")
                for key in self._signing_keys(alg, kid if isinstance(kid, str) else None):
                    try:
                        return None, jwt.decode(token, key, algorithms=[alg], options=options)
                    except jwt.InvalidSignatureError:
                        continue  # another key of the set may have signed it
                return INVALID_ASYMMETRIC, {}
        except jwt.PyJWTError:
            return (INVALID_LEGACY if alg == "HS256" else INVALID_ASYMMETRIC), {}
        return UNSUPPORTED_ALG, {}

    def _signing_keys(self, alg: str, kid: str | None) -> list[Any]:
        """The JWKS keys that may have signed a token with this `alg` and `kid`."""
        jwks = self._jwks
        if jwks is None:
            return []
        kty = "EC" if alg.startswith("ES") else "RSA"
        return [
            key.key
            for key in jwks.keys
            if key.key_type == kty and (kid is None or key.key_id is None or key.key_id == kid)
        ]


class Verifier:
    """Checks the Authorization (or apikey) header of requests to functions with verify_jwt on."""

    #: Verified tokens are remembered (until they expire) so a hot path pays for a token once.
    cache_size = 1024

    def __init__(self, keys: Keys, jwks: str | None = None) -> None:
        self.keys = keys
        self.tokens = TokenVerifier([keys.jwt_secret], jwks)
        self._cache: OrderedDict[str, float] = OrderedDict()

    def authorization(self, headers: Mapping[str, str]) -> str | None:
        """The Authorization header after the local gateway's apikey rewrite."""
        auth = headers.get("authorization")
        if auth is not None and not auth.startswith("Bearer sb_"):
            return auth
        # As the local gateway: a `Bearer sb_...` header is replaced by what the apikey header maps to,
        # and without an apikey header nothing is left (→ "Missing authorization header").
        apikey = headers.get("apikey")
        if apikey is None:
            return None
        if _same(apikey, self.keys.secret_key):
            return f"Bearer {self.keys.service_role_key}"
        if _same(apikey, self.keys.publishable_key):
            return f"Bearer {self.keys.anon_key}"
        return apikey

    def forwarded_headers(
        self, raw: list[tuple[bytes, bytes]], authorization: bytes | None, apikey: bytes | None
    ) -> list[tuple[bytes, bytes]]:
        """The request headers as the local gateway forwards them to the function.

        `authorization` and `apikey` are the request's own (see :func:`credentials`). Kong
        rewrites Authorization before the runtime sees it, so a function called with only
        ``apikey: sb_publishable_...`` reads ``Authorization: Bearer <anon JWT>``, as it would locally.
        """
        if apikey is None and (authorization is None or not authorization.startswith(b"Bearer sb_")):
            return raw  # the common case: nothing to rewrite
        auth = self.authorization(_as_text(authorization, apikey))
        kept = [(k, v) for k, v in raw if k != b"authorization"]
        return kept if auth is None else [*kept, (b"authorization", auth.encode("latin-1"))]

    def check_credentials(self, authorization: bytes | None, apikey: bytes | None) -> AuthFailure | None:
        """`check` for the values :func:`credentials` read from a request."""
        return self.check(_as_text(authorization, apikey))

    def check(self, headers: Mapping[str, str]) -> AuthFailure | None:
        """None if the request may pass, else the failure to answer with."""
        auth = self.authorization(headers)
        if not auth:
            return MISSING
        # As the CLI's main worker: `const [bearer, token] = authHeader.split(" ")`.
        parts = auth.split(" ")
        if parts[0] != "Bearer":
            return NOT_BEARER
        token = parts[1] if len(parts) > 1 else ""
        # The CLI ignores words after the token; refused here, since the function receives the
        # whole header and may read a word that was never verified (as with a repeated header).
        if not token or len(parts) > 2:
            return INVALID_FORMAT
        expires = self._cache.get(token)
        if expires is not None and expires > time.time():
            self._cache.move_to_end(token)
            return None
        failure, claims = self.tokens.verify(token)
        if failure is None:
            self._remember(token, claims)
        return failure

    def _remember(self, token: str, claims: Mapping[str, Any]) -> None:
        exp = claims.get("exp")
        self._cache[token] = float(exp) if isinstance(exp, int | float) else time.time() + 60
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
