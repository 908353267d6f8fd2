"""JWT bearer authentication: verify tokens and turn their claims into a `Principal`.

Keys, claims and the 401 reasons are in docs/auth-limits-cache.md. `authenticate` is synchronous
and, on an event loop, never waits on the network: verified tokens are remembered (never past
their `exp`), and a JWKS URL is fetched on a worker thread.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jwt
from cachetools import TLRUCache
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from gateway.policy.jwks import RemoteKeys, parse_jwks
from gateway.settings import AuthSettings

__all__ = ["AuthError", "Authenticator", "Principal"]

logger = logging.getLogger(__name__)

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS = {
    "secp256r1": "ES256",
    "secp384r1": "ES384",
    "secp521r1": "ES512",
    "secp256k1": "ES256K",
}
ASYMMETRIC_ALGORITHMS = RSA_ALGORITHMS | frozenset(_EC_ALGORITHMS.values()) | {"EdDSA"}
_MAX_TOKEN_CHARS = 16 * 1024


class AuthError(Exception):
    """The request carries no acceptable bearer token; the gateway answers 401.

    `code` is a stable machine reason (`missing_token`, `malformed_token`, `invalid_algorithm`,
    `invalid_signature`, `unknown_key`, `expired_token`, `token_not_yet_valid`,
    `invalid_audience`, `invalid_issuer`, `invalid_claims`) for logs and metrics.
    """

    def __init__(self, message: str, code: str = "invalid_token") -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    @property
    def www_authenticate(self) -> str:
        """Value of the `WWW-Authenticate` header for the 401 response (RFC 6750 §3)."""
        if self.code == "missing_token":
            return 'Bearer realm="localmoe"'
        # The message may quote attacker-chosen header values: keep RFC 6750's character set.
        description = "".join(c for c in self.message if " " <= c <= "~" and c not in '"\\')
        return f'Bearer realm="localmoe", error="invalid_token", error_description="{description}"'


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller, as told by a verified token."""

    sub: str
    tenant: str | None = None
    models: tuple[str, ...] | None = None
    """Allowed model ids or fnmatch patterns; None means every model."""
    rpm: int | None = None
    tpm: int | None = None
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    _exact: frozenset[str] = field(init=False, compare=False, repr=False)
    _pattern: re.Pattern[str] | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        exact, patterns = set(), []
        for model in self.models or ():
            if any(ch in model for ch in "*?["):
                patterns.append(fnmatch.translate(model))
            else:
                exact.add(model)
        object.__setattr__(self, "_exact", frozenset(exact))
        compiled = re.compile("|".join(patterns)) if patterns else None
        object.__setattr__(self, "_pattern", compiled)

    def allows_model(self, model_id: str) -> bool:
        """Whether this caller may use (and see) `model_id`; patterns match case-sensitively."""
        if self.models is None or model_id in self._exact:
            return True
        return self._pattern is not None and self._pattern.match(model_id) is not None


class Authenticator:
    """Verifies bearer tokens against one key and remembers the result.

    Not thread-safe (its token cache is a cachetools one): call it from one thread, the event
    loop's. Only the JWKS fetch runs on a worker thread."""

    def __init__(self, settings: AuthSettings, *, secret: str | None = None) -> None:
        """Verify with the key configured in `settings`, or with the HS256 `secret` given in its
        place (the development secret). Raises ValueError unless there is exactly one key."""
        if secret is None and settings.jwt_secret is not None:
            secret = settings.jwt_secret.get_secret_value()
        sources = (secret, settings.jwt_public_key_file, settings.jwks_file, settings.jwks_url)
        if sum(source is not None for source in sources) != 1:
            raise ValueError(
                "configure exactly one key: jwt_secret, jwt_public_key_file, jwks_file or jwks_url"
            )
        if secret == "":
            raise ValueError("the HS256 secret is empty")
        if settings.algorithms and "none" in {a.lower() for a in settings.algorithms}:
            raise ValueError('algorithm "none" is never accepted')
        self.settings = settings
        self._allowed = frozenset(settings.algorithms) if settings.algorithms else None
        self._jwt = jwt.PyJWT({"require": ["exp", "sub"], "verify_sub": True})
        self._cache: TLRUCache[str, tuple[Principal, float]] | None = None
        if settings.token_cache_size > 0:
            trusted_s = settings.token_cache_s
            self._cache = TLRUCache(
                settings.token_cache_size,
                lambda _token, entry, now: min(entry[1], now + trusted_s),
                timer=time.time,
            )
        self._keys: tuple[_Key, ...] = ()
        self._by_kid: dict[str, _Key] = {}
        self._algorithms: frozenset[str] = frozenset()
        self._remote: RemoteKeys | None = None
        self._jwks_mtime: float | None = None
        self._jwks_checked_at = 0.0  # monotonic
        if secret is not None:
            if len(secret.encode()) < 32:
                logger.warning("the HS256 secret is shorter than 32 bytes; use a longer one")
            self._set_keys([_Key(None, secret.encode(), HMAC_ALGORITHMS)])
        elif settings.jwt_public_key_file is not None:
            public_key = _load_public_key(Path(settings.jwt_public_key_file))
            self._set_keys([_Key(None, public_key, _algorithms_for_key(public_key))])
        elif settings.jwks_file is not None:
            self._read_jwks_file()
        else:
            self._remote = RemoteKeys(settings, self._set_jwks)
            self._set_keys(())
            # An identity provider that is down at start-up must not stop the gateway: every
            # token is refused until a later fetch succeeds.
            self._remote.refresh(wait=True)
        if not self._algorithms:
            raise ValueError(f"none of the algorithms {settings.algorithms} fits the key")

    def authenticate(self, authorization: str | None) -> Principal:
        """Verify the `Authorization` header value and return its caller, or raise `AuthError`."""
        token = _bearer_token(authorization)
        cache = self._cache
        if cache is not None:
            try:  # half the cost of TLRUCache.get, which looks the key up twice
                return cache[token][0]
            except KeyError:
                pass
        principal, expires_at = self._verify(token)
        if cache is not None:
            cache[token] = (principal, expires_at)
        return principal

    # -- verification ---------------------------------------------------------------------

    def _verify(self, token: str) -> tuple[Principal, float]:
        if len(token) > _MAX_TOKEN_CHARS or token.count(".") != 2:
            raise AuthError("Malformed bearer token: not a JWT", "malformed_token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise AuthError("Malformed bearer token: not a JWT", "malformed_token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthError(f"Token algorithm {alg!r} is not accepted", "invalid_algorithm")
        candidates = self._candidate_keys(header, alg)
        settings = self.settings
        payload: dict[str, Any] | None = None
        for i, key in enumerate(candidates):
            try:
                payload = self._jwt.decode(
                    token,
                    key=key.key,
                    algorithms=[alg],
                    audience=settings.audience,
                    issuer=settings.issuer,
                    leeway=settings.leeway_s,
                )
                break
            except jwt.InvalidSignatureError:
                if i == len(candidates) - 1:
                    raise AuthError("Token signature is invalid", "invalid_signature") from None
            except jwt.PyJWTError as exc:
                raise _auth_error(exc) from None
        if payload is None:
            raise AuthError("No key fits the token", "unknown_key")
        return _principal_from_claims(payload, settings), float(payload["exp"]) + settings.leeway_s

    def _candidate_keys(self, header: Mapping[str, Any], alg: str) -> list[_Key]:
        if self._remote is None and self.settings.jwks_file is None:
            return [key for key in self._keys if alg in key.algorithms]
        kid = header.get("kid")
        if not isinstance(kid, str):
            kid = None
        self._refresh_jwks(unknown_kid=kid is not None and kid not in self._by_kid)
        if kid is not None:
            key = self._by_kid.get(kid)
            if key is None:
                raise AuthError(f"Token key id {kid!r} is not known", "unknown_key")
            if alg not in key.algorithms:
                message = f"Token algorithm {alg!r} does not fit key {kid!r}"
                raise AuthError(message, "invalid_algorithm")
            return [key]
        candidates = [key for key in self._keys if alg in key.algorithms]
        if not candidates:
            raise AuthError("Token has no key id and no key fits its algorithm", "unknown_key")
        return candidates

    # -- keys -----------------------------------------------------------------------------

    def _set_keys(self, keys: Iterable[_Key]) -> None:
        allowed = self._allowed
        pinned = []
        for key in keys:
            algorithms = key.algorithms & allowed if allowed is not None else key.algorithms
            if algorithms:
                pinned.append(_Key(key.kid, key.key, algorithms))
        self._keys = tuple(pinned)
        self._by_kid = {key.kid: key for key in pinned if key.kid is not None}
        if self._remote is not None or self.settings.jwks_file is not None:
            # Any asymmetric algorithm may name a key that a refresh will bring; the key
            # found by `kid` then pins it.
            self._algorithms = ASYMMETRIC_ALGORITHMS & allowed if allowed else ASYMMETRIC_ALGORITHMS
        else:
            self._algorithms = frozenset().union(*(key.algorithms for key in pinned))

    def _set_jwks(self, jwks: Iterable[jwt.PyJWK]) -> None:
        keys = []
        for jwk in jwks:
            if jwk.key_type == "oct" or jwk.public_key_use not in (None, "sig"):
                continue  # symmetric keys have no place in a published key set
            try:
                fitting = _algorithms_for_key(jwk.key)
            except ValueError as exc:
                logger.warning("skipping JWKS key %r: %s", jwk.key_id, exc)
                continue
            # PyJWK's algorithm: the key's `alg`, else PyJWT's default for its type.
            keys.append(_Key(jwk.key_id, jwk.key, fitting & {jwk.algorithm_name}))
        self._set_keys(keys)
        logger.info("loaded %d verification keys from the JWKS", len(self._keys))

    def _refresh_jwks(self, unknown_kid: bool) -> None:
        """Bring the JWKS up to date when it is old or lacks the token's kid."""
        if self._remote is not None:
            self._remote.refresh(unknown_kid)
            return
        age = time.monotonic() - self._jwks_checked_at
        if unknown_kid or age >= self.settings.jwks_refresh_s:
            try:
                self._read_jwks_file()  # a stat() and, when changed, a small file read
            except (OSError, ValueError) as exc:
                logger.warning("cannot read the JWKS file: %s", exc)

    def _read_jwks_file(self) -> None:
        path = Path(self.settings.jwks_file or "")
        self._jwks_checked_at = time.monotonic()
        mtime = path.stat().st_mtime
        if mtime != self._jwks_mtime:
            self._set_jwks(parse_jwks(json.loads(path.read_bytes())))
            self._jwks_mtime = mtime


# -- helpers ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str | None
    key: Any
    algorithms: frozenset[str]


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthError(
            "Missing bearer token: send 'Authorization: Bearer <token>'", "missing_token"
        )
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError("Authorization header must be 'Bearer <token>'", "malformed_token")
    return token


def _auth_error(exc: jwt.PyJWTError) -> AuthError:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return AuthError("Token has expired", "expired_token")
    if isinstance(exc, jwt.ImmatureSignatureError):
        return AuthError("Token is not yet valid", "token_not_yet_valid")
    if isinstance(exc, jwt.InvalidAudienceError):
        return AuthError("Token audience is not accepted", "invalid_audience")
    if isinstance(exc, jwt.InvalidIssuerError):
        return AuthError("Token issuer is not accepted", "invalid_issuer")
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return AuthError(f"Token lacks the required '{exc.claim}' claim", "invalid_claims")
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return AuthError("Token algorithm is not accepted", "invalid_algorithm")
    if isinstance(exc, jwt.InvalidSubjectError | jwt.InvalidIssuedAtError):
        return AuthError(f"Token claims are invalid: {exc}", "invalid_claims")
    return AuthError("Malformed bearer token", "malformed_token")


def _principal_from_claims(claims: dict[str, Any], settings: AuthSettings) -> Principal:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise AuthError("Token 'sub' claim must be a non-empty string", "invalid_claims")
    tenant = claims.get(settings.tenant_claim)
    if tenant is not None and (not isinstance(tenant, str) or not tenant):
        raise AuthError(f"Token '{settings.tenant_claim}' claim must be a string", "invalid_claims")
    models = claims.get(settings.models_claim)
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    elif models is not None and (
        not isinstance(models, list) or not all(isinstance(m, str) and m for m in models)
    ):
        raise AuthError(
            f"Token '{settings.models_claim}' claim must be a list of strings", "invalid_claims"
        )
    limits = {}
    for claim in (settings.rpm_claim, settings.tpm_claim):
        value = claims.get(claim)
        valid = value is None or (type(value) is int and value > 0)  # bool is not a limit
        if not valid:
            raise AuthError(f"Token '{claim}' claim must be a positive integer", "invalid_claims")
        limits[claim] = value
    return Principal(
        sub=sub,
        tenant=tenant,
        models=tuple(models) if models is not None else None,
        rpm=limits[settings.rpm_claim],
        tpm=limits[settings.tpm_claim],
        claims=MappingProxyType(claims),
    )


def _algorithms_for_key(key: Any) -> frozenset[str]:
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = _EC_ALGORITHMS.get(key.curve.name)
        if algorithm is None:
            raise ValueError(f"unsupported EC curve {key.curve.name}")
        return frozenset({algorithm})
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return frozenset({"EdDSA"})
    raise ValueError(f"unsupported public key type {type(key).__name__}")


def _load_public_key(path: Path) -> Any:
    data = path.read_bytes()
    if b"BEGIN CERTIFICATE" in data:
        return x509.load_pem_x509_certificate(data).public_key()
    if b"PRIVATE KEY" in data:
        # Accept a private key file but keep only its public half in memory.
        return serialization.load_pem_private_key(data, password=None).public_key()
    return serialization.load_pem_public_key(data)
