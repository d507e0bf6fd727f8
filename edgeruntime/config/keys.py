"""The keys a server hands out and accepts: the local stack's demo keys for a JWT secret.

The anon and service-role JWTs are signed as the Supabase CLI signs them (HS256 with the JWT
secret, or with the first key of ``[auth] signing_keys_path``), so the same project gets the same
keys as under ``supabase start``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "DEMO_JWT_SECRET",
    "PUBLISHABLE_KEY",
    "SECRET_KEY",
    "Keys",
    "demo_keys",
    "secret_key_for",
    "sign_demo_key",
]

#: The local stack's fixed claims for its demo keys (Supabase CLI `pkg/config/apikeys.go`).
DEMO_ISSUER = "supabase-demo"
DEMO_EXPIRY = 1983812996
#: The local stack's JWT secret (`[auth] jwt_secret` unless a project sets its own).
DEMO_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
#: The local stack's fixed new-style API keys.
PUBLISHABLE_KEY = "sb_publishable_ACJWlzQHlZjBrEguHvfOxg_3BJgxAaH"
SECRET_KEY = "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz"
ASYMMETRIC_ALGORITHMS = ("ES256", "RS256")
TEN_YEARS_SEC = 10 * 365 * 24 * 3600


@dataclass(frozen=True)
class Keys:
    """The keys a server hands out and accepts."""

    jwt_secret: str
    anon_key: str
    service_role_key: str
    publishable_key: str = PUBLISHABLE_KEY
    secret_key: str = SECRET_KEY
    #: Public JWKs (JSON) of `[auth] signing_keys_path`, when the keys are signed asymmetrically.
    public_keys: tuple[str, ...] = ()

    def overridden_by(self, env: Mapping[str, str]) -> Keys:
        """These keys, with those the env sets itself (``SUPABASE_ANON_KEY``, ``SUPABASE_PUBLISHABLE_KEYS``...).

        The keys handed out (to functions, tests, ``edgeruntime keys``) must be the keys accepted.
        """
        return dataclasses.replace(
            self,
            anon_key=env.get("SUPABASE_ANON_KEY", self.anon_key),
            service_role_key=env.get("SUPABASE_SERVICE_ROLE_KEY", self.service_role_key),
            publishable_key=_default_key(env.get("SUPABASE_PUBLISHABLE_KEYS")) or self.publishable_key,
            secret_key=_default_key(env.get("SUPABASE_SECRET_KEYS")) or self.secret_key,
        )

    @property
    def jwks(self) -> str:
        """`SUPABASE_JWKS`: the public signing keys, then the secret as an `oct` key (as the CLI)."""
        k = base64.urlsafe_b64encode(self.jwt_secret.encode()).rstrip(b"=").decode()
        keys = [*(json.loads(key) for key in self.public_keys), {"kty": "oct", "k": k}]
        return json.dumps({"keys": keys}, separators=(",", ":"))


def _default_key(keys_json: str | None) -> str | None:
    """The `default` entry of `SUPABASE_PUBLISHABLE_KEYS` / `SUPABASE_SECRET_KEYS` (JSON objects)."""
    if not keys_json:
        return None
    try:
        value = json.loads(keys_json).get("default")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_demo_key(role: str, secret: str) -> str:
    """The local stack's demo JWT for `role`, signed with `secret` (byte for byte the CLI's)."""
    # HS256 by hand: importing pyjwt (and cryptography) costs ~60 ms at every start-up, and these
    # two keys are needed before the first request. Verification goes through pyjwt.
    header = _b64url(b'{"alg":"HS256","typ":"JWT"}')
    claims = json.dumps({"iss": DEMO_ISSUER, "role": role, "exp": DEMO_EXPIRY}, separators=(",", ":"))
    signing_input = f"{header}.{_b64url(claims.encode())}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


def signing_algorithm(jwk: Mapping[str, Any]) -> str:
    """ES256 for an EC key, RS256 for an RSA key (or the key's own `alg`)."""
    alg = jwk.get("alg")
    if isinstance(alg, str) and alg in ASYMMETRIC_ALGORITHMS:
        return alg
    return "ES256" if jwk.get("kty") == "EC" else "RS256"


def public_jwk(jwk: Mapping[str, Any]) -> dict[str, Any]:
    """The public half of a private JWK, with its `kid`, `alg` and `use`."""
    import jwt
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    private = jwt.PyJWK(dict(jwk)).key
    algorithm = ECAlgorithm if jwk.get("kty") == "EC" else RSAAlgorithm
    public: dict[str, Any] = json.loads(algorithm.to_jwk(private.public_key()))
    public.update({"alg": signing_algorithm(jwk), "use": "sig"})
    if "kid" in jwk:
        public["kid"] = jwk["kid"]
    return public


def secret_key_for(jwt_secret: str) -> str:
    """The `sb_secret_` key that stands for the service role under `jwt_secret`.

    The local stack's own key for its demo secret. Any other secret gets a key of its own, derived
    from it: the local stack's key is public, and with a project's secret it would be a
    service-role JWT signed with that secret for anyone who read Supabase's docs.
    """
    if jwt_secret == DEMO_JWT_SECRET:
        return SECRET_KEY
    digest = hmac.new(jwt_secret.encode(), b"edgeruntime secret key", hashlib.sha256).digest()
    return "sb_secret_" + _b64url(digest)[: len(SECRET_KEY) - len("sb_secret_")]


def demo_keys(jwt_secret: str, signing_keys: Sequence[Mapping[str, Any]] = ()) -> Keys:
    """The anon and service-role keys that go with `jwt_secret` (the CLI's defaults for its secret).

    With `signing_keys` (the private JWKs of ``[auth] signing_keys_path``), the keys are signed
    with the first of them, with its ``kid`` and a ten-year expiry, as the Supabase CLI signs them.
    The secret key is :func:`secret_key_for` the secret.
    """
    secret_key = secret_key_for(jwt_secret)
    if not signing_keys:
        anon, service_role = sign_demo_key("anon", jwt_secret), sign_demo_key("service_role", jwt_secret)
        return Keys(jwt_secret, anon, service_role, secret_key=secret_key)
    import jwt

    first = signing_keys[0]
    alg = signing_algorithm(first)
    private = jwt.PyJWK(dict(first), algorithm=alg).key
    headers = {"kid": first["kid"]} if "kid" in first else None
    expiry = int(time.time()) + TEN_YEARS_SEC

    def sign(role: str) -> str:
        payload = {"iss": DEMO_ISSUER, "role": role, "exp": expiry}
        return jwt.encode(payload, private, algorithm=alg, headers=headers)

    public = tuple(json.dumps(public_jwk(key), separators=(",", ":")) for key in signing_keys)
    return Keys(jwt_secret, sign("anon"), sign("service_role"), secret_key=secret_key, public_keys=public)
