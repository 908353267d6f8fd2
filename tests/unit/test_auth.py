"""JWT authentication: accepted tokens, every rejection, key types, JWKS, model access."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.policy import keys
from gateway.policy.auth import Authenticator, AuthError, Principal
from gateway.policy.tokens import load_or_create_dev_secret, mint_token, parse_ttl
from gateway.settings import AuthSettings, Settings
from tests.support import wait_for

SECRET = "s" * 48


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _public_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


def _claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(time.time()) + 600, **extra}


def _hs_auth(**settings: Any) -> Authenticator:
    return Authenticator(AuthSettings(jwt_secret=SECRET, **settings))


def _reject(auth: Authenticator, header: str | None) -> AuthError:
    with pytest.raises(AuthError) as info:
        auth.authenticate(header)
    return info.value


def test_valid_hs256_token_gives_principal_with_claims() -> None:
    token = mint_token(SECRET, sub="alice", tenant="acme", models=["tiny-*"], rpm=5, tpm=500)
    principal = _hs_auth().authenticate(f"Bearer {token}")
    assert (principal.sub, principal.tenant, principal.models) == ("alice", "acme", ("tiny-*",))
    assert (principal.rpm, principal.tpm) == (5, 500)
    assert principal.claims["sub"] == "alice"


def test_bearer_scheme_is_case_insensitive() -> None:
    token = mint_token(SECRET, sub="alice")
    assert _hs_auth().authenticate(f"bearer  {token} ").sub == "alice"


def test_missing_header_is_rejected_without_error_code() -> None:
    error = _reject(_hs_auth(), None)
    assert error.code == "missing_token"
    assert error.www_authenticate == 'Bearer realm="localmoe"'


def test_non_bearer_scheme_is_rejected() -> None:
    assert _reject(_hs_auth(), "Basic dXNlcjpwYXNz").code == "malformed_token"


def test_garbage_token_is_rejected_as_invalid_token() -> None:
    error = _reject(_hs_auth(), "Bearer not-a-jwt")
    assert error.code == "malformed_token"
    assert 'error="invalid_token"' in error.www_authenticate


def test_garbage_with_jwt_shape_is_rejected() -> None:
    assert _reject(_hs_auth(), "Bearer aaa.bbb.ccc").code == "malformed_token"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_token_is_rejected(alg: str) -> None:
    token = _unsigned({"alg": alg, "typ": "JWT"}, _claims()) + "."
    assert _reject(_hs_auth(), f"Bearer {token}").code == "invalid_algorithm"


def test_www_authenticate_keeps_only_safe_characters_of_hostile_headers() -> None:
    token = _unsigned({"alg": 'é"\\\n<x>', "typ": "JWT"}, _claims()) + ".c2ln"
    value = _reject(_hs_auth(), f"Bearer {token}").www_authenticate
    assert value.isascii() and value.count('"') == 6 and "\\" not in value and "\n" not in value


def test_tampered_payload_is_rejected() -> None:
    header, _, signature = mint_token(SECRET, sub="alice").split(".")
    forged = _b64(json.dumps(_claims(sub="admin")).encode())
    error = _reject(_hs_auth(), f"Bearer {header}.{forged}.{signature}")
    assert error.code == "invalid_signature"


def test_tampered_signature_is_rejected() -> None:
    token = mint_token(SECRET, sub="alice")
    head, payload, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert _reject(_hs_auth(), f"Bearer {head}.{payload}.{flipped}").code == "invalid_signature"


def test_token_signed_with_another_secret_is_rejected() -> None:
    token = mint_token("x" * 48, sub="alice")
    assert _reject(_hs_auth(), f"Bearer {token}").code == "invalid_signature"


def test_expired_token_is_rejected() -> None:
    token = jwt.encode(_claims(exp=int(time.time()) - 120), SECRET, algorithm="HS256")
    assert _reject(_hs_auth(leeway_s=30), f"Bearer {token}").code == "expired_token"


def test_recently_expired_token_is_accepted_within_leeway() -> None:
    token = jwt.encode(_claims(exp=int(time.time()) - 5), SECRET, algorithm="HS256")
    assert _hs_auth(leeway_s=30).authenticate(f"Bearer {token}").sub == "alice"


def test_token_without_exp_is_rejected_by_default() -> None:
    token = mint_token(SECRET, sub="alice", ttl_seconds=None)
    assert _reject(_hs_auth(), f"Bearer {token}").code == "invalid_claims"


def test_token_not_yet_valid_is_rejected() -> None:
    token = jwt.encode(_claims(nbf=int(time.time()) + 300), SECRET, algorithm="HS256")
    assert _reject(_hs_auth(), f"Bearer {token}").code == "token_not_yet_valid"


def test_wrong_audience_is_rejected() -> None:
    token = mint_token(SECRET, sub="alice", audience="someone-else")
    error = _reject(_hs_auth(audience="localmoe"), f"Bearer {token}")
    assert error.code == "invalid_audience"


def test_missing_audience_is_rejected_when_one_is_configured() -> None:
    token = mint_token(SECRET, sub="alice")
    assert _reject(_hs_auth(audience="localmoe"), f"Bearer {token}").code == "invalid_claims"


def test_matching_audience_and_issuer_are_accepted() -> None:
    token = mint_token(SECRET, sub="alice", audience="localmoe", issuer="https://idp")
    auth = _hs_auth(audience="localmoe", issuer="https://idp")
    assert auth.authenticate(f"Bearer {token}").sub == "alice"


def test_wrong_issuer_is_rejected() -> None:
    token = mint_token(SECRET, sub="alice", issuer="https://evil")
    assert _reject(_hs_auth(issuer="https://idp"), f"Bearer {token}").code == "invalid_issuer"


def test_token_without_subject_is_rejected() -> None:
    token = jwt.encode({"exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    assert _reject(_hs_auth(), f"Bearer {token}").code == "invalid_claims"


@pytest.mark.parametrize("value", [0, -1, "100", True, 1.5])
def test_rpm_claim_that_is_not_a_positive_integer_is_rejected(value: Any) -> None:
    token = jwt.encode(_claims(rpm=value), SECRET, algorithm="HS256")
    assert _reject(_hs_auth(), f"Bearer {token}").code == "invalid_claims"


def test_models_claim_of_wrong_type_is_rejected() -> None:
    token = jwt.encode(_claims(models=[1, 2]), SECRET, algorithm="HS256")
    assert _reject(_hs_auth(), f"Bearer {token}").code == "invalid_claims"


def test_rs256_token_is_verified_with_public_key_file(tmp_path: Path, rsa_key: Any) -> None:
    (tmp_path / "pub.pem").write_bytes(_public_pem(rsa_key))
    auth = Authenticator(AuthSettings(jwt_public_key_file=tmp_path / "pub.pem"))
    token = mint_token(rsa_key, sub="alice", algorithm="RS256")
    assert auth.authenticate(f"Bearer {token}").sub == "alice"


def test_es256_token_is_verified_with_public_key_file(tmp_path: Path, ec_key: Any) -> None:
    (tmp_path / "pub.pem").write_bytes(_public_pem(ec_key))
    auth = Authenticator(AuthSettings(jwt_public_key_file=tmp_path / "pub.pem"))
    token = mint_token(ec_key, sub="alice", algorithm="ES256")
    assert auth.authenticate(f"Bearer {token}").sub == "alice"


def test_rs256_token_signed_by_another_key_is_rejected(tmp_path: Path, rsa_key: Any) -> None:
    (tmp_path / "pub.pem").write_bytes(_public_pem(rsa_key))
    auth = Authenticator(AuthSettings(jwt_public_key_file=tmp_path / "pub.pem"))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = mint_token(other, sub="alice", algorithm="RS256")
    assert _reject(auth, f"Bearer {token}").code == "invalid_signature"


def test_hs256_token_signed_with_the_rsa_public_key_is_rejected(
    tmp_path: Path, rsa_key: Any
) -> None:
    # The classic algorithm-confusion attack: the public key (which everyone has) used as an
    # HMAC secret. PyJWT refuses to sign this, so build the token by hand.
    pem = _public_pem(rsa_key)
    (tmp_path / "pub.pem").write_bytes(pem)
    auth = Authenticator(AuthSettings(jwt_public_key_file=tmp_path / "pub.pem"))
    signing_input = _unsigned({"alg": "HS256", "typ": "JWT"}, _claims())
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    error = _reject(auth, f"Bearer {signing_input}.{_b64(signature)}")
    assert error.code == "invalid_algorithm"


def test_es_key_refuses_rs256_algorithm(tmp_path: Path, ec_key: Any, rsa_key: Any) -> None:
    (tmp_path / "pub.pem").write_bytes(_public_pem(ec_key))
    auth = Authenticator(AuthSettings(jwt_public_key_file=tmp_path / "pub.pem"))
    token = mint_token(rsa_key, sub="alice", algorithm="RS256")
    assert _reject(auth, f"Bearer {token}").code == "invalid_algorithm"


def test_configured_algorithms_narrow_what_the_key_accepts(tmp_path: Path, rsa_key: Any) -> None:
    (tmp_path / "pub.pem").write_bytes(_public_pem(rsa_key))
    auth = Authenticator(
        AuthSettings(jwt_public_key_file=tmp_path / "pub.pem", algorithms=["RS256"])
    )
    token = mint_token(rsa_key, sub="alice", algorithm="PS256")
    assert _reject(auth, f"Bearer {token}").code == "invalid_algorithm"


def _jwks(*entries: tuple[str, Any, str]) -> dict[str, Any]:
    keys = []
    for kid, key, alg in entries:
        algorithm = jwt.algorithms.get_default_algorithms()[alg]
        jwk = json.loads(algorithm.to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})
    return {"keys": keys}


def test_jwks_file_selects_the_key_named_by_kid(tmp_path: Path, rsa_key: Any, ec_key: Any) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(_jwks(("r1", rsa_key, "RS256"), ("e1", ec_key, "ES256"))))
    auth = Authenticator(AuthSettings(jwks_file=path))
    rs = mint_token(rsa_key, sub="rsa-user", algorithm="RS256", kid="r1")
    es = mint_token(ec_key, sub="ec-user", algorithm="ES256", kid="e1")
    assert auth.authenticate(f"Bearer {rs}").sub == "rsa-user"
    assert auth.authenticate(f"Bearer {es}").sub == "ec-user"


def test_jwks_kid_of_another_key_is_rejected(tmp_path: Path, rsa_key: Any, ec_key: Any) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(_jwks(("r1", rsa_key, "RS256"), ("e1", ec_key, "ES256"))))
    auth = Authenticator(AuthSettings(jwks_file=path))
    token = mint_token(rsa_key, sub="alice", algorithm="RS256", kid="e1")
    assert _reject(auth, f"Bearer {token}").code == "invalid_algorithm"


def test_jwks_unknown_kid_is_rejected(tmp_path: Path, rsa_key: Any) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(_jwks(("r1", rsa_key, "RS256"))))
    auth = Authenticator(AuthSettings(jwks_file=path))
    token = mint_token(rsa_key, sub="alice", algorithm="RS256", kid="r2")
    assert _reject(auth, f"Bearer {token}").code == "unknown_key"


def test_jwks_file_is_reread_when_an_unknown_kid_appears(tmp_path: Path, rsa_key: Any) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": []}))
    auth = Authenticator(AuthSettings(jwks_file=path))
    path.write_text(json.dumps(_jwks(("r2", rsa_key, "RS256"))))
    token = mint_token(rsa_key, sub="alice", algorithm="RS256", kid="r2")
    assert auth.authenticate(f"Bearer {token}").sub == "alice"


def test_jwks_symmetric_keys_are_ignored(tmp_path: Path) -> None:
    oct_key = {"kty": "oct", "kid": "h1", "alg": "HS256", "k": _b64(SECRET.encode())}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [oct_key]}))
    auth = Authenticator(AuthSettings(jwks_file=path))
    token = mint_token(SECRET, sub="alice", kid="h1")
    assert _reject(auth, f"Bearer {token}").code == "invalid_algorithm"


class _JWKSServer:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.status = 200
        self.delay_s = 0.0
        self.hits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits += 1
                time.sleep(server.delay_s)  # a slow identity provider
                body = json.dumps(server.document).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks_server() -> Iterator[_JWKSServer]:
    server = _JWKSServer({"keys": []})
    yield server
    server.close()


def test_jwks_url_is_fetched_again_for_a_new_kid(jwks_server: _JWKSServer, rsa_key: Any) -> None:
    jwks_server.document = _jwks(("r1", rsa_key, "RS256"))
    auth = Authenticator(AuthSettings(jwks_url=jwks_server.url, jwks_min_refresh_s=0))
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks_server.document = _jwks(("r1", rsa_key, "RS256"), ("r2", rotated, "RS256"))
    token = mint_token(rotated, sub="alice", algorithm="RS256", kid="r2")
    assert auth.authenticate(f"Bearer {token}").sub == "alice"
    assert jwks_server.hits == 2


def test_jwks_url_refetch_for_unknown_kids_is_rate_limited(
    jwks_server: _JWKSServer, rsa_key: Any
) -> None:
    jwks_server.document = _jwks(("r1", rsa_key, "RS256"))
    auth = Authenticator(AuthSettings(jwks_url=jwks_server.url, jwks_min_refresh_s=60))
    for kid in ("x1", "x2", "x3"):
        token = mint_token(rsa_key, sub="alice", algorithm="RS256", kid=kid)
        assert _reject(auth, f"Bearer {token}").code == "unknown_key"
    assert jwks_server.hits == 1  # the start-up fetch only


def test_jwks_url_is_not_fetched_again_while_it_is_fresh(
    jwks_server: _JWKSServer, rsa_key: Any
) -> None:
    jwks_server.document = _jwks(("r1", rsa_key, "RS256"))
    auth = Authenticator(AuthSettings(jwks_url=jwks_server.url, jwks_min_refresh_s=0))
    for user in ("alice", "bob", "carol"):
        token = mint_token(rsa_key, sub=user, algorithm="RS256", kid="r1")
        assert auth.authenticate(f"Bearer {token}").sub == user
    assert jwks_server.hits == 1


def test_key_withdrawn_from_the_jwks_is_refused_after_jwks_refresh_s(
    jwks_server: _JWKSServer, rsa_key: Any
) -> None:
    retired = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks_server.document = _jwks(("r1", rsa_key, "RS256"), ("r0", retired, "RS256"))
    settings = AuthSettings(
        jwks_url=jwks_server.url, jwks_refresh_s=0.3, jwks_min_refresh_s=0, token_cache_size=0
    )
    auth = Authenticator(settings)
    token = mint_token(retired, sub="alice", algorithm="RS256", kid="r0")
    assert auth.authenticate(f"Bearer {token}").sub == "alice"
    jwks_server.document = _jwks(("r1", rsa_key, "RS256"))
    assert wait_for(lambda: _refused(auth, token), timeout=5)
    assert _reject(auth, f"Bearer {token}").code == "unknown_key"


def test_failed_jwks_fetches_are_rate_limited_too(jwks_server: _JWKSServer, rsa_key: Any) -> None:
    jwks_server.status = 500
    auth = Authenticator(AuthSettings(jwks_url=jwks_server.url, jwks_min_refresh_s=60))
    for kid in ("r1", "r2"):
        token = mint_token(rsa_key, sub="alice", algorithm="RS256", kid=kid)
        assert _reject(auth, f"Bearer {token}").code == "unknown_key"
    assert jwks_server.hits == 1


def test_jwks_document_over_a_mebibyte_is_not_used(jwks_server: _JWKSServer, rsa_key: Any) -> None:
    jwks_server.document = {**_jwks(("r1", rsa_key, "RS256")), "padding": "x" * (1 << 20)}
    auth = Authenticator(AuthSettings(jwks_url=jwks_server.url))
    token = mint_token(rsa_key, sub="alice", algorithm="RS256", kid="r1")
    assert _reject(auth, f"Bearer {token}").code == "unknown_key"


async def test_new_kid_on_an_event_loop_is_fetched_without_waiting(
    jwks_server: _JWKSServer, rsa_key: Any
) -> None:
    jwks_server.document = _jwks(("r1", rsa_key, "RS256"))
    auth = Authenticator(AuthSettings(jwks_url=jwks_server.url, jwks_min_refresh_s=0))
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks_server.document = _jwks(("r1", rsa_key, "RS256"), ("r2", rotated, "RS256"))
    jwks_server.delay_s = 1.0
    token = mint_token(rotated, sub="alice", algorithm="RS256", kid="r2")
    started = time.monotonic()
    # Refused at once while the key set is fetched on a worker thread, then accepted.
    assert _reject(auth, f"Bearer {token}").code == "unknown_key"
    assert time.monotonic() - started < 0.5
    deadline = time.monotonic() + 5
    while _refused(auth, token) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert auth.authenticate(f"Bearer {token}").sub == "alice"
    assert jwks_server.hits == 2


def test_model_patterns_allow_matching_and_deny_other_models() -> None:
    principal = Principal(sub="alice", models=("tiny-moe", "mixtral-*"))
    assert principal.allows_model("tiny-moe")
    assert principal.allows_model("mixtral-8x7b")
    assert not principal.allows_model("qwen-moe")
    assert not principal.allows_model("tiny-moe-2")
    assert not principal.allows_model("Mixtral-8x7b")  # case-sensitive


def test_models_claim_absent_allows_every_model() -> None:
    assert Principal(sub="alice").allows_model("anything")


def test_empty_models_claim_allows_no_model() -> None:
    assert not Principal(sub="alice", models=()).allows_model("tiny-moe")


def test_comma_separated_models_claim_is_split() -> None:
    token = jwt.encode(_claims(models="a, b-*"), SECRET, algorithm="HS256")
    principal = _hs_auth().authenticate(f"Bearer {token}")
    assert principal.models == ("a", "b-*")
    assert principal.allows_model("b-1") and not principal.allows_model("c")


def test_verified_token_is_served_from_the_cache() -> None:
    auth = _hs_auth()
    token = mint_token(SECRET, sub="alice")
    first = auth.authenticate(f"Bearer {token}")
    assert auth.authenticate(f"Bearer {token}") is first


def test_cached_token_is_rejected_once_it_expires() -> None:
    auth = _hs_auth(leeway_s=0, token_cache_s=3600)
    token = jwt.encode(_claims(exp=int(time.time()) + 1), SECRET, algorithm="HS256")
    assert auth.authenticate(f"Bearer {token}").sub == "alice"
    assert wait_for(lambda: _refused(auth, token), timeout=3)
    assert _reject(auth, f"Bearer {token}").code == "expired_token"


def _refused(auth: Authenticator, token: str) -> bool:
    try:
        auth.authenticate(f"Bearer {token}")
    except AuthError:
        return True
    return False


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment without LOCALMOE_* settings from outside, and an HS256 secret."""
    for name in [n for n in os.environ if n.startswith("LOCALMOE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LOCALMOE_AUTH__JWT_SECRET", SECRET)
    return monkeypatch


def test_token_cache_time_comes_from_the_environment(env: pytest.MonkeyPatch) -> None:
    token = f"Bearer {mint_token(SECRET, sub='alice')}"
    env.setenv("LOCALMOE_AUTH__TOKEN_CACHE_S", "0.2")
    auth = keys.authenticator(Settings())
    assert auth is not None
    first = auth.authenticate(token)
    assert auth.authenticate(token) is first
    assert wait_for(lambda: auth.authenticate(token) is not first, timeout=3)  # verified again


def test_leeway_comes_from_the_environment(env: pytest.MonkeyPatch) -> None:
    token = jwt.encode(_claims(exp=int(time.time()) - 90), SECRET, algorithm="HS256")
    default = keys.authenticator(Settings())
    assert default is not None and _reject(default, f"Bearer {token}").code == "expired_token"
    env.setenv("LOCALMOE_AUTH__LEEWAY_S", "120")
    lenient = keys.authenticator(Settings())
    assert lenient is not None and lenient.authenticate(f"Bearer {token}").sub == "alice"


def test_token_cache_size_zero_verifies_every_time() -> None:
    auth = _hs_auth(token_cache_size=0)
    token = f"Bearer {mint_token(SECRET, sub='alice')}"
    assert auth.authenticate(token) is not auth.authenticate(token)


def test_claim_names_come_from_the_settings() -> None:
    token = mint_token(SECRET, sub="alice", extra_claims={"org": "acme", "https://x/rpm": 7})
    auth = _hs_auth(tenant_claim="org", rpm_claim="https://x/rpm")
    principal = auth.authenticate(f"Bearer {token}")
    assert (principal.tenant, principal.rpm) == ("acme", 7)


def test_token_cache_is_bounded() -> None:
    auth = _hs_auth(token_cache_size=3)
    for i in range(10):
        auth.authenticate(f"Bearer {mint_token(SECRET, sub=f'user{i}')}")
    assert len(auth._cache) == 3


def test_dev_secret_is_created_with_mode_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "config" / "localmoe" / "jwt-secret"
    secret = load_or_create_dev_secret(path)
    assert len(secret) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_dev_secret(path) == secret
    token = mint_token(secret, sub="dev")
    assert Authenticator(AuthSettings(), secret=secret).authenticate(f"Bearer {token}")


def test_dev_secret_with_loose_permissions_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "jwt-secret"
    path.write_text("k" * 40)
    path.chmod(0o644)
    assert load_or_create_dev_secret(path) == "k" * 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_authenticator_needs_exactly_one_key() -> None:
    with pytest.raises(ValueError):
        Authenticator(AuthSettings())
    with pytest.raises(ValueError):
        Authenticator(AuthSettings(jwt_secret=SECRET, jwks_url="https://idp/jwks.json"))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("3600", 3600), ("90s", 90), ("15m", 900), ("1h30m", 5400), ("7d", 604800)],
)
def test_parse_ttl(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


def test_parse_ttl_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        parse_ttl("1 hour")
