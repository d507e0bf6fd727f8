"""JWT verification at the gateway: every 401 row of DESIGN.md §3, the apikey mapping, JWKS, keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from edgeruntime.config.keys import PUBLISHABLE_KEY, SECRET_KEY, Keys, demo_keys
from edgeruntime.config.project import DEFAULT_JWT_SECRET
from edgeruntime.config.settings import Settings
from edgeruntime.exceptions import ConfigError, DuplicateHeader
from edgeruntime.gateway.auth import Verifier, credentials
from edgeruntime.testing import EdgeClient
from tests.helpers import CREDENTIALS_ECHO, KEYS, ServerProcess, forged_token, run_cli, write_function

WHOAMI = """
import jwt
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import serve

async def handler(req: Request) -> JSONResponse:
    auth = req.headers.get("authorization")
    role = None
    if auth and auth.startswith("Bearer ey"):
        role = jwt.decode(auth[7:], options={"verify_signature": False}).get("role")
    return JSONResponse({"authorization": auth, "role": role, "method": req.method})

serve(handler)
"""

MISSING = {"msg": "Error: Missing authorization header"}
NOT_BEARER = {"msg": "Error: Auth header is not 'Bearer {token}'"}
INVALID = {"msg": "Invalid JWT"}


@pytest.fixture
def whoami_dir(functions_dir: Path) -> Path:
    write_function(functions_dir, "whoami", WHOAMI)
    return functions_dir


def sign(claims: dict[str, Any], secret: str = DEFAULT_JWT_SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=alg)


def assert_401(response: Any, body: dict[str, str]) -> None:
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == body
    assert response.headers["sb-error-code"].startswith("UNAUTHORIZED")


# -- the 401 rows ---------------------------------------------------------------------------------


async def test_missing_authorization_header(whoami_dir: Path) -> None:
    async with EdgeClient(whoami_dir) as client:
        r = await client.invoke("whoami", auth=None)
        assert_401(r, MISSING)
        assert r.text == '{"msg":"Error: Missing authorization header"}'


@pytest.mark.parametrize("value", ["Basic abc", "bearer " + KEYS.anon_key, KEYS.anon_key, "Token x"])
async def test_header_not_bearer(whoami_dir: Path, value: str) -> None:
    async with EdgeClient(whoami_dir) as client:
        r = await client.invoke("whoami", auth=None, headers={"Authorization": value})
        assert_401(r, NOT_BEARER)
        assert r.text == """{"msg":"Error: Auth header is not 'Bearer {token}'"}"""


async def test_bad_signature(whoami_dir: Path) -> None:
    forged = sign({"role": "service_role", "exp": int(time.time()) + 60}, "another-secret-of-at-least-32-chars!!")
    tampered = KEYS.anon_key[:-4] + ("AAAA" if not KEYS.anon_key.endswith("AAAA") else "BBBB")
    async with EdgeClient(whoami_dir) as client:
        for token in (forged, tampered, "not.a.jwt", "garbage", ""):
            r = await client.invoke("whoami", auth=None, headers={"Authorization": f"Bearer {token}"})
            assert_401(r, INVALID)


async def test_expired_token(whoami_dir: Path) -> None:
    expired = sign({"role": "anon", "exp": int(time.time()) - 10})
    fresh = sign({"role": "anon", "exp": int(time.time()) + 600})
    async with EdgeClient(whoami_dir) as client:
        r = await client.invoke("whoami", auth=None, headers={"Authorization": f"Bearer {expired}"})
        assert_401(r, INVALID)
        r = await client.invoke("whoami", auth=None, headers={"Authorization": f"Bearer {fresh}"})
        assert r.status_code == 200


@pytest.mark.parametrize("alg", ["HS384", "HS512", "none"])
async def test_unsupported_algorithm(whoami_dir: Path, alg: str) -> None:
    key = "" if alg == "none" else DEFAULT_JWT_SECRET + "-padding-for-longer-hmac-keys-xxxxxxxxxx"
    token = jwt.encode({"role": "anon"}, key, algorithm=alg)
    async with EdgeClient(whoami_dir) as client:
        r = await client.invoke("whoami", auth=None, headers={"Authorization": f"Bearer {token}"})
        assert_401(r, INVALID)
        assert r.headers["sb-error-code"] == "UNAUTHORIZED_UNSUPPORTED_TOKEN_ALGORITHM"


async def test_anon_and_service_role_keys_pass(whoami_dir: Path) -> None:
    async with EdgeClient(whoami_dir) as client:
        r = await client.invoke("whoami", auth="anon")
        assert r.status_code == 200
        assert r.json()["role"] == "anon"
        r = await client.invoke("whoami")
        assert r.status_code == 200
        assert r.json()["role"] == "service_role"


# -- apikey: the local gateway's mapping ----------------------------------------------------------


async def test_apikey_publishable_stands_for_anon(whoami_dir: Path) -> None:
    async with EdgeClient(whoami_dir) as client:
        r = await client.invoke("whoami", auth=None, headers={"apikey": PUBLISHABLE_KEY})
        assert r.status_code == 200
        # The function reads the Authorization header the gateway rewrote, as behind Kong.
        assert r.json() == {"authorization": f"Bearer {KEYS.anon_key}", "role": "anon", "method": "POST"}


async def test_apikey_secret_stands_for_service_role(whoami_dir: Path) -> None:
    async with EdgeClient(whoami_dir) as client:
        r = await client.invoke("whoami", auth=None, headers={"apikey": SECRET_KEY})
        assert r.status_code == 200
        assert r.json()["role"] == "service_role"
        assert r.json()["authorization"] == f"Bearer {KEYS.service_role_key}"


async def test_supabase_js_style_publishable_headers(whoami_dir: Path) -> None:
    # supabase-js with a publishable key sends it in both headers.
    headers = {"apikey": PUBLISHABLE_KEY, "Authorization": f"Bearer {PUBLISHABLE_KEY}"}
    async with EdgeClient(whoami_dir) as client:
        r = await client.invoke("whoami", auth=None, headers=headers)
        assert r.status_code == 200
        assert r.json()["role"] == "anon"


async def test_authorization_header_wins_over_apikey(whoami_dir: Path) -> None:
    headers = {"apikey": SECRET_KEY, "Authorization": f"Bearer {KEYS.anon_key}"}
    async with EdgeClient(whoami_dir) as client:
        r = await client.invoke("whoami", auth=None, headers=headers)
        assert r.json()["role"] == "anon"


async def test_unknown_apikey_is_rejected(whoami_dir: Path) -> None:
    async with EdgeClient(whoami_dir) as client:
        r = await client.invoke("whoami", auth=None, headers={"apikey": "sb_publishable_wrong"})
        assert_401(r, NOT_BEARER)  # the raw apikey value becomes the Authorization header
        # Without an apikey header the local gateway leaves no Authorization behind a `Bearer sb_...`.
        for key in ("sb_secret_wrong", SECRET_KEY, PUBLISHABLE_KEY):
            r = await client.invoke("whoami", auth=None, headers={"Authorization": f"Bearer {key}"})
            assert_401(r, MISSING)


# -- when the check applies -----------------------------------------------------------------------


async def test_options_is_never_checked(whoami_dir: Path) -> None:
    async with EdgeClient(whoami_dir) as client:
        r = await client.invoke("whoami", method="OPTIONS", auth=None)
        assert r.status_code == 200
        assert r.json()["method"] == "OPTIONS"
        r = await client.invoke("whoami", method="GET", auth=None)
        assert r.status_code == 401


async def test_verify_jwt_false_in_config(whoami_dir: Path) -> None:
    write_function(whoami_dir, "guarded", WHOAMI)
    (whoami_dir.parent / "config.toml").write_text("[functions.whoami]\nverify_jwt = false\n")
    async with EdgeClient(whoami_dir) as client:
        assert (await client.invoke("whoami", auth=None)).status_code == 200
        assert (await client.invoke("guarded", auth=None)).status_code == 401


async def test_function_block_without_verify_jwt_defaults_to_true(whoami_dir: Path) -> None:
    (whoami_dir.parent / "config.toml").write_text("[functions.whoami]\nenabled = true\n")
    async with EdgeClient(whoami_dir) as client:
        assert (await client.invoke("whoami", auth=None)).status_code == 401


async def test_no_verify_jwt_overrides_config_only_when_passed(whoami_dir: Path) -> None:
    (whoami_dir.parent / "config.toml").write_text("[functions.whoami]\nverify_jwt = true\n")
    async with EdgeClient(whoami_dir, no_verify_jwt=True) as client:
        assert (await client.invoke("whoami", auth=None)).status_code == 200
    async with EdgeClient(whoami_dir, no_verify_jwt=False) as client:
        assert (await client.invoke("whoami", auth=None)).status_code == 401
    # Not passing it leaves a config's verify_jwt = false alone (it does not force the check on).
    (whoami_dir.parent / "config.toml").write_text("[functions.whoami]\nverify_jwt = false\n")
    async with EdgeClient(whoami_dir) as client:
        assert (await client.invoke("whoami", auth=None)).status_code == 200


# -- keys and secrets -----------------------------------------------------------------------------


def test_demo_keys_are_the_cli_keys() -> None:
    # supabase-semantics.md §7.3: the local stack's well-known keys for its default secret.
    keys = demo_keys(DEFAULT_JWT_SECRET)
    assert keys.anon_key == (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9"
        ".CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0"
    )
    assert keys.service_role_key == (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MT"
        "k4MzgxMjk5Nn0.EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU"
    )
    assert keys.publishable_key == "sb_publishable_ACJWlzQHlZjBrEguHvfOxg_3BJgxAaH"
    assert keys.secret_key == "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz"
    jwks = json.loads(keys.jwks)
    assert jwks == {
        "keys": [{"kty": "oct", "k": "c3VwZXItc2VjcmV0LWp3dC10b2tlbi13aXRoLWF0LWxlYXN0LTMyLWNoYXJhY3RlcnMtbG9uZw"}]
    }


CUSTOM_SECRET = "my-own-jwt-secret-that-is-long-enough-for-hs256"

ENV_KEYS = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import Deno, serve

async def handler(req: Request) -> JSONResponse:
    env = Deno.env
    return JSONResponse({"anon": env.get("SUPABASE_ANON_KEY"), "service": env.get("SUPABASE_SERVICE_ROLE_KEY")})

serve(handler)
"""


async def test_custom_jwt_secret_yields_matching_keys(functions_dir: Path) -> None:
    write_function(functions_dir, "keys", ENV_KEYS)
    (functions_dir.parent / "config.toml").write_text(f'[auth]\njwt_secret = "{CUSTOM_SECRET}"\n')
    async with EdgeClient(functions_dir) as client:
        assert client.settings.keys.anon_key != KEYS.anon_key
        r = await client.invoke("keys", auth="anon")
        assert r.status_code == 200
        anon, service = r.json()["anon"], r.json()["service"]
        assert anon == client.settings.keys.anon_key
        assert jwt.decode(anon, CUSTOM_SECRET, algorithms=["HS256"])["role"] == "anon"
        assert jwt.decode(service, CUSTOM_SECRET, algorithms=["HS256"])["role"] == "service_role"
        # The key the function was given is accepted; the default secret's key is not.
        assert (await client.invoke("keys", auth=None, headers={"Authorization": f"Bearer {anon}"})).status_code == 200
        r = await client.invoke("keys", auth=None, headers={"Authorization": f"Bearer {KEYS.anon_key}"})
        assert_401(r, INVALID)


async def test_jwt_secret_from_env_reference(functions_dir: Path) -> None:
    write_function(functions_dir, "keys", ENV_KEYS)
    (functions_dir.parent / "config.toml").write_text('[auth]\njwt_secret = "env(MY_JWT_SECRET)"\n')
    async with EdgeClient(functions_dir, environ={**os.environ, "MY_JWT_SECRET": CUSTOM_SECRET}) as client:
        assert client.settings.keys.jwt_secret == CUSTOM_SECRET
        assert (await client.invoke("keys", auth="anon")).status_code == 200


def test_keys_command_prints_keys_in_use(functions_dir: Path) -> None:
    (functions_dir.parent / "config.toml").write_text(f'[auth]\njwt_secret = "{CUSTOM_SECRET}"\n')
    expected = demo_keys(CUSTOM_SECRET)
    result = run_cli("keys", str(functions_dir), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "anon_key": expected.anon_key,
        "service_role_key": expected.service_role_key,
        "publishable_key": PUBLISHABLE_KEY,
        "secret_key": expected.secret_key,
        "jwt_secret": CUSTOM_SECRET,
    }
    result = run_cli("keys", str(functions_dir))
    assert result.returncode == 0
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["ANON_KEY"] == expected.anon_key
    assert lines["SERVICE_ROLE_KEY"] == expected.service_role_key
    assert lines["PUBLISHABLE_KEY"] == PUBLISHABLE_KEY
    assert lines["SECRET_KEY"] == expected.secret_key != SECRET_KEY
    assert lines["JWT_SECRET"] == CUSTOM_SECRET
    assert run_cli("keys", str(functions_dir), "--anon").stdout.strip() == expected.anon_key


# -- asymmetric keys: SUPABASE_JWKS --------------------------------------------------------------


def es256_jwks(kid: str = "key-1") -> tuple[ec.EllipticCurvePrivateKey, dict[str, Any]]:
    private = ec.generate_private_key(ec.SECP256R1())
    public: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    return private, {**public, "kid": kid, "alg": "ES256", "use": "sig"}


async def test_es256_against_supabase_jwks(whoami_dir: Path) -> None:
    private, public = es256_jwks()
    other, _ = es256_jwks()
    oct_key = json.loads(KEYS.jwks)["keys"][0]
    jwks = json.dumps({"keys": [public, oct_key]})
    good = jwt.encode({"role": "authenticated", "exp": int(time.time()) + 600}, private, "ES256", {"kid": "key-1"})
    no_kid = jwt.encode({"role": "authenticated"}, private, "ES256")
    wrong_key = jwt.encode({"role": "authenticated"}, other, "ES256", {"kid": "key-1"})
    unknown_kid = jwt.encode({"role": "authenticated"}, private, "ES256", {"kid": "key-2"})
    expired = jwt.encode({"role": "authenticated", "exp": int(time.time()) - 5}, private, "ES256", {"kid": "key-1"})
    async with EdgeClient(whoami_dir, environ={**os.environ, "SUPABASE_JWKS": jwks}) as client:

        async def status(token: str) -> int:
            r = await client.invoke("whoami", auth=None, headers={"Authorization": f"Bearer {token}"})
            if r.status_code == 401:
                assert r.json() == INVALID
            return r.status_code

        assert await status(good) == 200
        assert await status(no_kid) == 200
        assert await status(wrong_key) == 401
        assert await status(unknown_kid) == 401
        assert await status(expired) == 401
        assert await status(KEYS.anon_key) == 200  # HS256 keys keep working next to the JWKS
        r = await client.invoke("whoami", auth=None, headers={"Authorization": f"Bearer {good}"})
        assert r.json()["role"] == "authenticated"


async def test_es256_without_jwks_is_invalid(whoami_dir: Path) -> None:
    private, _ = es256_jwks()
    token = jwt.encode({"role": "authenticated"}, private, "ES256", {"kid": "key-1"})
    async with EdgeClient(whoami_dir) as client:
        r = await client.invoke("whoami", auth=None, headers={"Authorization": f"Bearer {token}"})
        assert_401(r, INVALID)


def test_rs256_against_jwks_with_several_keys() -> None:
    ec_private, ec_public = es256_jwks("ec")
    rsa_private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_public = {**json.loads(RSAAlgorithm.to_jwk(rsa_private.public_key())), "kid": "rsa"}
    verifier = Verifier(KEYS, json.dumps({"keys": [ec_public, rsa_public]}))
    rs = jwt.encode({"role": "authenticated"}, rsa_private, "RS256", {"kid": "rsa"})
    rs_no_kid = jwt.encode({"role": "authenticated"}, rsa_private, "RS256")
    es = jwt.encode({"role": "authenticated"}, ec_private, "ES256", {"kid": "ec"})
    es_as_rsa_kid = jwt.encode({"role": "authenticated"}, ec_private, "ES256", {"kid": "rsa"})
    assert verifier.check({"authorization": f"Bearer {rs}"}) is None
    assert verifier.check({"authorization": f"Bearer {rs_no_kid}"}) is None
    assert verifier.check({"authorization": f"Bearer {es}"}) is None
    assert verifier.check({"authorization": f"Bearer {es_as_rsa_kid}"}) is not None


def test_tokens_that_bring_their_own_key_or_confuse_its_kind_are_refused() -> None:
    private, public = es256_jwks()
    attacker, attacker_public = es256_jwks()
    verifier = Verifier(KEYS, json.dumps({"keys": [public]}))
    claims = {"role": "service_role", "exp": int(time.time()) + 600}
    pem = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)

    def hs256(secret: bytes) -> str:
        # Signed by hand: PyJWT refuses an HMAC key that looks like a public key.
        head = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
        mac = hmac.new(secret, head + b"." + body, hashlib.sha256).digest()
        return b".".join([head, body, base64.urlsafe_b64encode(mac).rstrip(b"=")]).decode()

    refused = {
        "embedded jwk": jwt.encode(claims, attacker, "ES256", {"kid": "key-1", "jwk": attacker_public}),
        "jku": jwt.encode(claims, attacker, "ES256", {"jku": "http://127.0.0.1:9/jwks.json"}),
        "HS256 keyed with the public PEM": hs256(pem),
        "HS256 keyed with the public JWK": hs256(json.dumps(public).encode()),
        "HS256 keyed with nothing": hs256(b""),
        "not valid yet": jwt.encode({**claims, "nbf": int(time.time()) + 600}, DEFAULT_JWT_SECRET, "HS256"),
    }
    for what, token in refused.items():
        assert verifier.check({"authorization": f"Bearer {token}"}) is not None, what
    assert verifier.check({"authorization": f"Bearer {jwt.encode(claims, private, 'ES256')}"}) is None


def test_verifier_cache_is_bounded_and_honours_exp() -> None:
    verifier = Verifier(Keys(DEFAULT_JWT_SECRET, KEYS.anon_key, KEYS.service_role_key))
    verifier.cache_size = 3
    tokens = [sign({"role": "anon", "n": n, "exp": int(time.time()) + 600}) for n in range(5)]
    for token in tokens:
        assert verifier.check({"authorization": f"Bearer {token}"}) is None
    assert list(verifier._cache) == tokens[2:]
    # A cached token past its exp is verified again, and fails.
    stale = sign({"role": "anon", "exp": int(time.time()) - 1})
    verifier._cache[stale] = time.time() - 1
    failure = verifier.check({"authorization": f"Bearer {stale}"})
    assert failure is not None and failure.message == "Invalid JWT"


# -- [auth] signing_keys_path: asymmetric demo keys ------------------------------------------------


def write_signing_keys(project: Path) -> dict[str, Any]:
    private = ec.generate_private_key(ec.SECP256R1())
    jwk: dict[str, Any] = {**json.loads(ECAlgorithm.to_jwk(private)), "kid": "local-ec", "alg": "ES256"}
    (project / "signing_keys.json").write_text(json.dumps([jwk]))
    (project / "config.toml").write_text('[auth]\nsigning_keys_path = "./signing_keys.json"\n')
    return jwk


async def test_signing_keys_path_signs_keys_with_es256(functions_dir: Path) -> None:
    write_function(functions_dir, "whoami", WHOAMI)
    write_function(functions_dir, "keys", ENV_KEYS)
    jwk = write_signing_keys(functions_dir.parent)
    async with EdgeClient(functions_dir, environ={k: v for k, v in os.environ.items() if "SUPABASE_" not in k}) as c:
        anon = c.settings.keys.anon_key
        assert jwt.get_unverified_header(anon) == {"alg": "ES256", "kid": "local-ec", "typ": "JWT"}
        jwks = json.loads(c.settings.env["SUPABASE_JWKS"])["keys"]
        assert [k["kty"] for k in jwks] == ["EC", "oct"]
        assert jwks[0]["kid"] == "local-ec" and "d" not in jwks[0]  # only the public half is handed out
        claims = jwt.decode(anon, jwt.PyJWK(jwks[0]).key, algorithms=["ES256"])
        assert claims["role"] == "anon" and claims["iss"] == "supabase-demo"
        assert claims["exp"] > time.time() + 9 * 365 * 24 * 3600
        r = await c.invoke("whoami", auth="anon")
        assert (r.status_code, r.json()["role"]) == (200, "anon")
        r = await c.invoke("keys", auth="service_role")
        assert r.json()["service"] == c.settings.keys.service_role_key
        assert jwt.get_unverified_header(r.json()["service"])["alg"] == "ES256"
        # The legacy HS256 keys of the JWT secret keep working, as in the CLI.
        assert (await c.invoke("whoami", auth=None, headers=ANON_HS256)).status_code == 200
        other = ec.generate_private_key(ec.SECP256R1())
        forged = jwt.encode({"role": "service_role"}, other, "ES256", {"kid": jwk["kid"]})
        r = await c.invoke("whoami", auth=None, headers={"Authorization": f"Bearer {forged}"})
        assert_401(r, INVALID)


ANON_HS256 = {"Authorization": f"Bearer {KEYS.anon_key}"}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read"),
        ("not json", "is not valid JSON"),
        ("[]", "expected a JSON array of private JWKs"),
        ('[{"kty": "oct", "k": "abc"}]', "key 0: expected a private EC (ES256) or RSA (RS256) JWK"),
        ('[{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "d": "AA"}]', "key 0:"),
    ],
)
def test_bad_signing_keys_file(functions_dir: Path, content: str | None, expected: str) -> None:
    project = functions_dir.parent
    (project / "config.toml").write_text('[auth]\nsigning_keys_path = "keys.json"\n')
    if content is not None:
        (project / "keys.json").write_text(content)
    with pytest.raises(ConfigError) as info:
        Settings.build(functions_dir)
    message = str(info.value)
    assert message.startswith(f"{project / 'config.toml'}: [auth] signing_keys_path: ")
    assert expected in message


# -- on a real socket -------------------------------------------------------------------------------


@pytest.mark.e2e
def test_serve_verifies_jwt_and_no_verify_jwt_turns_it_off(whoami_dir: Path) -> None:
    (whoami_dir.parent / "config.toml").write_text("[functions.whoami]\nverify_jwt = true\n")
    with ServerProcess(whoami_dir, "--no-watch") as server:
        r = httpx.post(server.url("whoami"), timeout=10)
        assert (r.status_code, r.text) == (401, '{"msg":"Error: Missing authorization header"}')
        r = httpx.post(server.url("whoami"), headers={"apikey": PUBLISHABLE_KEY}, timeout=10)
        assert (r.status_code, r.json()["role"]) == (200, "anon")
        r = httpx.options(server.url("whoami"), timeout=10)
        assert r.status_code == 200
    with ServerProcess(whoami_dir, "--no-watch", "--no-verify-jwt") as server:
        r = httpx.post(server.url("whoami"), timeout=10)
        assert r.status_code == 200


def test_keys_command_without_a_functions_directory(tmp_path: Path) -> None:
    result = run_cli("keys", "--anon", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == KEYS.anon_key
    (tmp_path / "config.toml").write_text(f'[auth]\njwt_secret = "{CUSTOM_SECRET}"\n')
    result = run_cli("keys", "--service-role", cwd=tmp_path)
    assert result.stdout.strip() == demo_keys(CUSTOM_SECRET).service_role_key


async def test_with_its_own_jwt_secret_a_project_has_its_own_secret_key(whoami_dir: Path) -> None:
    """The local stack's `sb_secret_` key is public (it is in Supabase's docs): with a project's own
    JWT secret it must not be turned into a service-role JWT signed with that secret, or anyone
    could call its functions (and, through them, its database) as the service role."""
    (whoami_dir.parent / "config.toml").write_text(f'[auth]\njwt_secret = "{CUSTOM_SECRET}"\n')
    async with EdgeClient(whoami_dir) as client:
        own = client.settings.keys.secret_key
        assert own.startswith("sb_secret_") and own != SECRET_KEY
        r = await client.invoke("whoami", auth=None, headers={"apikey": SECRET_KEY})
        assert r.status_code == 401
        r = await client.invoke("whoami", auth=None, headers={"apikey": own})
        assert r.status_code == 200 and r.json()["role"] == "service_role"
        assert jwt.decode(r.json()["authorization"][7:], CUSTOM_SECRET, algorithms=["HS256"])["role"] == "service_role"
    # The same secret gives the same key (every instance and `edgeruntime keys` agree); another, another.
    assert demo_keys(CUSTOM_SECRET).secret_key == own
    assert demo_keys(CUSTOM_SECRET + "x").secret_key not in (own, SECRET_KEY)
    assert demo_keys(DEFAULT_JWT_SECRET).secret_key == SECRET_KEY


async def test_keys_set_in_the_server_env_are_handed_out_and_accepted(whoami_dir: Path) -> None:
    custom_anon = sign({"role": "anon", "iss": "mine"})
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SUPABASE_")},
        "SUPABASE_ANON_KEY": custom_anon,
        "SUPABASE_PUBLISHABLE_KEYS": '{"default":"sb_publishable_custom"}',
        "SUPABASE_SECRET_KEYS": '{"default":"sb_secret_custom"}',
    }
    async with EdgeClient(whoami_dir, environ=environ) as client:
        assert client.settings.keys.anon_key == custom_anon
        assert client.settings.keys.publishable_key == "sb_publishable_custom"
        r = await client.invoke("whoami", auth=None, headers={"apikey": "sb_publishable_custom"})
        assert r.json()["authorization"] == f"Bearer {custom_anon}"
        r = await client.invoke("whoami", auth=None, headers={"apikey": "sb_secret_custom"})
        assert r.json()["role"] == "service_role"
        r = await client.invoke("whoami", auth=None, headers={"apikey": PUBLISHABLE_KEY})
        assert r.status_code == 401  # the default publishable key is not this server's


def test_unusable_jwks_refuses_asymmetric_tokens_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    private, _ = es256_jwks()
    token = jwt.encode({"role": "anon"}, private, "ES256")
    verifier = Verifier(KEYS, "{not json")
    for _ in range(3):
        failure = verifier.check({"authorization": f"Bearer {token}"})
        assert failure is not None and failure.message == "Invalid JWT"
    assert caplog.text.count("SUPABASE_JWKS is not a usable JWK set") == 1
    assert verifier.check({"authorization": f"Bearer {KEYS.anon_key}"}) is None


# -- one of each credential header -----------------------------------------------------------------

DUPLICATE_AUTHORIZATION = {"code": "DUPLICATE_AUTH_HEADER", "message": "Request has more than one Authorization header"}
DUPLICATE_APIKEY = {"code": "DUPLICATE_AUTH_HEADER", "message": "Request has more than one apikey header"}


@pytest.fixture
def echo_dir(functions_dir: Path) -> Path:
    """`checked` (verify_jwt on) and `open` (verify_jwt off), both the credentials echo."""
    write_function(functions_dir, "checked", CREDENTIALS_ECHO)
    write_function(functions_dir, "open", CREDENTIALS_ECHO)
    (functions_dir.parent / "config.toml").write_text("[functions.open]\nverify_jwt = false\n")
    return functions_dir


def runs_environ(runs: Path) -> dict[str, str]:
    return {**os.environ, "RUNS_FILE": str(runs)}


SMUGGLED = [
    # (headers, the body of the 400): the forged copy first, then last.
    ([("Authorization", f"Bearer {forged_token()}"), ("Authorization", f"Bearer {KEYS.anon_key}")], "authorization"),
    ([("Authorization", f"Bearer {KEYS.anon_key}"), ("Authorization", f"Bearer {forged_token()}")], "authorization"),
    ([("authorization", f"Bearer {KEYS.anon_key}"), ("AUTHORIZATION", f"Bearer {KEYS.anon_key}")], "authorization"),
    ([("Authorization", f"Bearer {KEYS.anon_key}"), ("Authorization", "")], "authorization"),
    ([("apikey", forged_token()), ("apikey", KEYS.publishable_key)], "apikey"),
    ([("apikey", KEYS.publishable_key), ("apikey", SECRET_KEY + "-guess")], "apikey"),
]


@pytest.mark.parametrize("function", ["checked", "open"])
@pytest.mark.parametrize(("headers", "which"), SMUGGLED)
async def test_a_repeated_credential_header_is_400_and_the_function_never_runs(
    echo_dir: Path, tmp_path: Path, function: str, headers: list[tuple[str, str]], which: str
) -> None:
    runs = tmp_path / "runs.txt"
    async with EdgeClient(echo_dir, environ=runs_environ(runs)) as client:
        for method in ("POST", "GET", "OPTIONS"):
            r = await client.request(method, f"/functions/v1/{function}", headers=headers)
            assert r.status_code == 400, (method, r.text)
            assert r.json() == (DUPLICATE_APIKEY if which == "apikey" else DUPLICATE_AUTHORIZATION)
            assert r.headers["sb-error-code"] == "DUPLICATE_AUTH_HEADER"
            assert r.headers["content-type"] == "application/json"
        assert not runs.exists()
        await client.jobs.history.flush()
        runs_api = await client.request("GET", "/_edgeruntime/api/runs", params={"function": function})
        assert {(run["http_status"], run["status"]) for run in runs_api.json()["runs"]} == {(400, "failed")}


async def test_the_function_reads_the_one_authorization_that_was_checked(echo_dir: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    anon = ("authorization", f"Bearer {KEYS.anon_key}")
    async with EdgeClient(echo_dir, environ=runs_environ(runs)) as client:
        # Even the same valid value twice: the function would read the header list, not one value.
        r = await client.request("POST", "/functions/v1/checked", headers=[anon, anon])
        assert r.status_code == 400
        r = await client.invoke("checked", auth="anon")
        assert r.json() == {
            "authorization": [f"Bearer {KEYS.anon_key}"],
            "apikey": [],
            "starlette": f"Bearer {KEYS.anon_key}",
        }
        # The gateway's rewrite of a new-style key: still exactly one Authorization.
        r = await client.invoke(
            "checked", auth=None, headers={"authorization": f"Bearer {PUBLISHABLE_KEY}", "apikey": PUBLISHABLE_KEY}
        )
        assert r.json()["authorization"] == [f"Bearer {KEYS.anon_key}"]
        assert r.json()["apikey"] == [PUBLISHABLE_KEY]
        r = await client.invoke("open", auth=None, headers={"apikey": PUBLISHABLE_KEY})
        assert r.json()["authorization"] == [f"Bearer {KEYS.anon_key}"]
        # One of each is the normal supabase-js request.
        r = await client.invoke("checked", auth="anon", headers={"apikey": KEYS.anon_key})
        assert r.status_code == 200
    assert runs.read_text().count("ran") == 4


@pytest.mark.parametrize(
    "value",
    [
        f"Bearer {KEYS.anon_key} {forged_token()}",
        f"Bearer {KEYS.anon_key} Bearer {forged_token()}",
        f"Bearer {KEYS.anon_key} ",
    ],
)
async def test_a_token_followed_by_more_words_is_refused_and_the_function_never_runs(
    echo_dir: Path, tmp_path: Path, value: str
) -> None:
    # The token checked would be the first word only: a function reading the last word (or the
    # whole rest) would take claims nobody verified as the gateway's.
    runs = tmp_path / "runs.txt"
    async with EdgeClient(echo_dir, environ=runs_environ(runs)) as client:
        for headers in ({"authorization": value}, {"apikey": value}):
            r = await client.invoke("checked", auth=None, headers=headers)
            assert_401(r, INVALID)
            assert r.headers["sb-error-code"] == "UNAUTHORIZED_INVALID_JWT_FORMAT"
    assert not runs.exists()


def test_credentials_reads_each_header_once() -> None:
    assert credentials([(b"host", b"x"), (b"apikey", b"k"), (b"authorization", b"Bearer t")]) == (b"Bearer t", b"k")
    assert credentials([]) == (None, None)
    with pytest.raises(DuplicateHeader, match="more than one Authorization header"):
        credentials([(b"authorization", b""), (b"authorization", b"Bearer t")])
    with pytest.raises(DuplicateHeader, match="more than one apikey header"):
        credentials([(b"apikey", b"a"), (b"x", b"y"), (b"apikey", b"a")])


# -- verify_jwt(token): the same check, in a function (a WebSocket's token from the query string) ------

VERIFY = """
from starlette.requests import Request
from starlette.responses import JSONResponse
from edgeruntime import InvalidJWT, serve, verify_jwt

@serve
async def handler(req: Request) -> JSONResponse:
    try:
        claims = verify_jwt(req.query_params.get("jwt"))
    except InvalidJWT as exc:
        return JSONResponse({"error": str(exc), "code": exc.code}, status_code=403)
    return JSONResponse({"role": claims.get("role")})
"""


@pytest.mark.parametrize("isolation", ["inline", "process"])
async def test_verify_jwt_checks_a_token_with_the_servers_keys(functions_dir: Path, isolation: str) -> None:
    write_function(functions_dir, "verify", VERIFY)
    (functions_dir.parent / "config.toml").write_text("[functions.verify]\nverify_jwt = false\n")

    async with EdgeClient(functions_dir, isolation=isolation) as client:

        async def check(token: str | None) -> tuple[int, dict[str, Any]]:
            r = await client.invoke("verify", method="GET", params={"jwt": token} if token is not None else None)
            return r.status_code, r.json()

        assert await check(KEYS.anon_key) == (200, {"role": "anon"})
        assert await check(KEYS.service_role_key) == (200, {"role": "service_role"})
        assert await check(sign({"role": "authenticated", "sub": "u-1", "exp": int(time.time()) + 60})) == (
            200,
            {"role": "authenticated"},
        )
        expired = sign({"role": "authenticated", "exp": int(time.time()) - 1})
        assert await check(expired) == (403, {"error": "Invalid JWT", "code": "UNAUTHORIZED_LEGACY_JWT"})
        other_secret = sign({"role": "service_role"}, secret="another-secret-with-at-least-32-characters")
        assert (await check(other_secret))[1]["code"] == "UNAUTHORIZED_LEGACY_JWT"
        assert (await check(forged_token()))[1]["code"] == "UNAUTHORIZED_UNSUPPORTED_TOKEN_ALGORITHM"
        assert (await check("not-a-jwt"))[1]["code"] == "UNAUTHORIZED_INVALID_JWT_FORMAT"
        assert await check(None) == (403, {"error": "Missing token", "code": "UNAUTHORIZED_NO_AUTH_HEADER"})
        assert await check("") == (403, {"error": "Missing token", "code": "UNAUTHORIZED_NO_AUTH_HEADER"})


async def test_verify_jwt_checks_asymmetric_tokens_against_supabase_jwks(functions_dir: Path) -> None:
    write_function(functions_dir, "verify", VERIFY)
    jwk = write_signing_keys(functions_dir.parent)
    config = functions_dir.parent / "config.toml"
    config.write_text(config.read_text() + "[functions.verify]\nverify_jwt = false\n")
    async with EdgeClient(functions_dir, environ={k: v for k, v in os.environ.items() if "SUPABASE_" not in k}) as c:
        r = await c.invoke("verify", method="GET", params={"jwt": c.settings.keys.anon_key})
        assert (r.status_code, r.json()) == (200, {"role": "anon"})
        other = ec.generate_private_key(ec.SECP256R1())
        forged = jwt.encode({"role": "service_role"}, other, "ES256", {"kid": jwk["kid"]})
        r = await c.invoke("verify", method="GET", params={"jwt": forged})
        assert (r.status_code, r.json()["code"]) == (403, "UNAUTHORIZED_ASYMMETRIC_JWT")
