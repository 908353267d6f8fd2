"""JWT bearer authentication: verify tokens, turn their claims into a `Principal`.

Integration guide (gateway request path)::

    authenticator = Authenticator(AuthConfig(hs256_secret=secret))    # once, at start-up
    ...
    try:
        principal = authenticator.authenticate(request.headers.get("authorization"))
    except AuthError as exc:
        # 401, OpenAI error body {"error": {"message": exc.message, "type": "invalid_request_error",
        #                                    "param": None, "code": "invalid_api_key"}}
        # header WWW-Authenticate: exc.www_authenticate
    if not principal.allows_model(body.model):
        ...  # 404 model_not_found, exactly as for a model that does not exist
    # /v1/models lists only the ids for which principal.allows_model(id) is true.

Call it from an `async def` dependency (a plain `def` one costs FastAPI a thread hop).
`authenticate` is synchronous and never waits on the network: a verified token is kept in a
bounded LRU (keyed by the token string, never past its `exp`), so the hot path is one dict lookup
(about 2 µs CPU). JWKS documents given by URL are fetched at construction, refreshed in a background
thread when older than `jwks_refresh_seconds`, and re-fetched (at most every
`jwks_min_refresh_seconds`) when a token names an unknown `kid`; the token that triggered the
refresh is rejected if the refresh has to run in the background (with no event loop running, as in
the CLI, it runs inline). Identity providers publish new keys before signing with them, so normal
key rotation never hits that path. Call `await authenticator.refresh_keys()` to force a refresh.

Keys (exactly one source in `AuthConfig`):
- `hs256_secret`: shared secret (HS256/HS384/HS512) — development and tests, `LOCALMOE_JWT_SECRET`.
- `public_key_file`: PEM public key or X.509 certificate (RSA → RS*/PS*, EC → ES* by curve,
  Ed25519/Ed448 → EdDSA).
- `jwks_file` / `jwks_url`: a JWKS document; the token's `kid` selects the key. Symmetric (`oct`)
  keys in a JWKS are ignored.
Algorithms are pinned per key type, intersected with `AuthConfig.algorithms` when given: an HS256
token can never be checked against an RSA/EC public key (algorithm confusion), and `alg: none`
is never accepted.

Claims (the names of `tenant`, `models`, `rpm` and `tpm` are configurable in `AuthConfig`):

- `sub`: non-empty string, required. The caller; limits are counted per subject.
- `exp`: NumericDate, required unless `require_exp=False`; `leeway_seconds` of skew allowed.
- `nbf`, `iat`: NumericDate, optional; refused before `nbf`, or with `iat` in the future.
- `iss`: must equal `AuthConfig.issuer` when one is configured (and is then required).
- `aud`: string or list; must contain `AuthConfig.audience` when one is configured (and is then
  required). A token carrying an `aud` is refused when no audience is configured.
- `tenant`: optional string. Groups subjects: shared tenant limits, a tenant-private cache.
- `models`: optional list of strings (or one comma-separated string): allowed model ids or
  fnmatch patterns (`mixtral-*`). Absent = every model; `[]` = none.
- `rpm`, `tpm`: optional positive integers: requests / tokens per minute for this subject,
  overriding the gateway defaults.

`mint_token()` signs such a token (`localmoe token`); `load_or_create_dev_secret()` keeps the
random development secret of the embedded default in the user's config folder (mode 0600).
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import os
import re
import secrets
import threading
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

__all__ = [
    "AuthConfig",
    "AuthError",
    "Authenticator",
    "Principal",
    "default_dev_secret_path",
    "load_or_create_dev_secret",
    "mint_token",
    "parse_ttl",
]

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
_MAX_JWKS_BYTES = 1024 * 1024
_DEV_SECRET_MIN_CHARS = 32


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


@dataclass(frozen=True)
class AuthConfig:
    """How tokens are verified. Exactly one of the four key sources must be set."""

    hs256_secret: str | None = None
    public_key_file: Path | None = None
    jwks_file: Path | None = None
    jwks_url: str | None = None
    algorithms: tuple[str, ...] | None = None
    """Accepted `alg` values; default: every algorithm that fits the key type."""
    issuer: str | None = None
    audience: str | None = None
    leeway_seconds: float = 30.0
    require_exp: bool = True
    token_cache_size: int = 10_000
    token_cache_seconds: float = 60.0
    """How long a verified token is trusted without re-verification (bounded by its `exp`)."""
    jwks_refresh_seconds: float = 300.0
    jwks_min_refresh_seconds: float = 30.0
    jwks_timeout_seconds: float = 5.0
    tenant_claim: str = "tenant"
    models_claim: str = "models"
    rpm_claim: str = "rpm"
    tpm_claim: str = "tpm"

    def __post_init__(self) -> None:
        sources = [self.hs256_secret, self.public_key_file, self.jwks_file, self.jwks_url]
        if sum(source is not None for source in sources) != 1:
            raise ValueError(
                "AuthConfig needs exactly one key source: hs256_secret, public_key_file, "
                "jwks_file or jwks_url"
            )
        if self.hs256_secret is not None and not self.hs256_secret:
            raise ValueError("hs256_secret is empty")
        if self.algorithms is not None and "none" in {a.lower() for a in self.algorithms}:
            raise ValueError('algorithm "none" is never accepted')


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
    """Verifies bearer tokens against the configured key and caches the result."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self._jwt = jwt.PyJWT(
            {"require": ["exp", "sub"] if config.require_exp else ["sub"], "verify_sub": True}
        )
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._keys: tuple[_Key, ...] = ()
        self._by_kid: dict[str, _Key] = {}
        self._algorithms: frozenset[str] = frozenset()
        self._keys_loaded_at = 0.0  # monotonic
        self._jwks_mtime: float | None = None
        self._next_refresh_allowed = 0.0  # monotonic
        self._refresh_lock = threading.Lock()
        self._refreshing = False
        self._load_initial_keys()

    def authenticate(self, authorization: str | None) -> Principal:
        """Verify the `Authorization` header value and return its caller, or raise `AuthError`."""
        token = _bearer_token(authorization)
        cached = self._cache.get(token)
        now = time.time()
        if cached is not None:
            if cached[1] > now:
                try:  # noqa: SIM105 (contextlib.suppress costs more on this hot path)
                    self._cache.move_to_end(token)
                except KeyError:  # evicted meanwhile by another thread
                    pass
                return cached[0]
            self._cache.pop(token, None)
        principal, expires_at = self._verify(token, now)
        self._cache[token] = (principal, min(expires_at, now + self.config.token_cache_seconds))
        if len(self._cache) > self.config.token_cache_size:
            self._cache.popitem(last=False)
        return principal

    async def refresh_keys(self) -> None:
        """Re-read the JWKS file or re-fetch the JWKS URL now (no-op for static keys)."""
        if self.config.jwks_url is not None or self.config.jwks_file is not None:
            await asyncio.to_thread(self._refresh_jwks, force=True)

    # -- verification ---------------------------------------------------------------------

    def _verify(self, token: str, now: float) -> tuple[Principal, float]:
        if len(token) > _MAX_TOKEN_CHARS or token.count(".") != 2:
            raise AuthError("Malformed bearer token: not a JWT", "malformed_token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise AuthError("Malformed bearer token: not a JWT", "malformed_token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthError(f"Token algorithm {alg!r} is not accepted", "invalid_algorithm")
        self._maybe_schedule_periodic_refresh()
        candidates = self._candidate_keys(header, alg)
        payload: dict[str, Any] | None = None
        for i, key in enumerate(candidates):
            try:
                payload = self._jwt.decode(
                    token,
                    key=key.key,
                    algorithms=[alg],
                    audience=self.config.audience,
                    issuer=self.config.issuer,
                    leeway=self.config.leeway_seconds,
                )
                break
            except jwt.InvalidSignatureError:
                if i == len(candidates) - 1:
                    raise AuthError("Token signature is invalid", "invalid_signature") from None
            except jwt.PyJWTError as exc:
                raise _auth_error(exc) from None
        if payload is None:
            raise AuthError("No key fits the token", "unknown_key")
        principal = _principal_from_claims(payload, self.config)
        exp = payload.get("exp")
        expires_at = float(exp) + self.config.leeway_seconds if exp is not None else float("inf")
        return principal, expires_at

    def _candidate_keys(self, header: Mapping[str, Any], alg: str) -> list[_Key]:
        if self.config.jwks_url is None and self.config.jwks_file is None:
            return [key for key in self._keys if alg in key.algorithms]
        kid = header.get("kid")
        if isinstance(kid, str):
            key = self._by_kid.get(kid)
            if key is None:
                self._on_unknown_kid()
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

    def _load_initial_keys(self) -> None:
        config = self.config
        if config.hs256_secret is not None:
            if len(config.hs256_secret.encode()) < 32:
                logger.warning("the HS256 secret is shorter than 32 bytes; use a longer one")
            self._set_keys([_Key(None, config.hs256_secret.encode(), HMAC_ALGORITHMS)])
        elif config.public_key_file is not None:
            public_key = _load_public_key(Path(config.public_key_file))
            self._set_keys([_Key(None, public_key, _algorithms_for_key(public_key))])
        else:
            try:
                self._refresh_jwks(force=True)
            except Exception as exc:
                if config.jwks_file is not None:
                    raise
                # An identity provider that is down at start-up must not stop the gateway;
                # every token is refused until a later refresh succeeds.
                logger.error("cannot fetch JWKS from %s: %s", config.jwks_url, exc)
        if self.config.algorithms is not None and self._keys and not self._algorithms:
            raise ValueError(
                f"none of the configured algorithms {self.config.algorithms} fits the key"
            )

    def _set_keys(self, keys: Iterable[_Key]) -> None:
        allowed = frozenset(self.config.algorithms) if self.config.algorithms else None
        pinned = []
        for key in keys:
            algorithms = key.algorithms & allowed if allowed is not None else key.algorithms
            if algorithms:
                pinned.append(_Key(key.kid, key.key, algorithms))
        self._keys = tuple(pinned)
        self._by_kid = {key.kid: key for key in pinned if key.kid is not None}
        if self.config.jwks_url is not None or self.config.jwks_file is not None:
            # Any asymmetric algorithm may name a key that a refresh will bring; the key
            # found by `kid` then pins it.
            self._algorithms = ASYMMETRIC_ALGORITHMS & allowed if allowed else ASYMMETRIC_ALGORITHMS
        else:
            self._algorithms = frozenset().union(*(key.algorithms for key in pinned))
        self._keys_loaded_at = time.monotonic()

    def _refresh_jwks(self, force: bool = False) -> bool:
        """Load the JWKS document again; returns whether it was (re)loaded."""
        with self._refresh_lock:
            if self.config.jwks_file is not None:
                path = Path(self.config.jwks_file)
                mtime = path.stat().st_mtime
                if not force and mtime == self._jwks_mtime:
                    self._keys_loaded_at = time.monotonic()
                    return False
                document = json.loads(path.read_bytes())
                self._jwks_mtime = mtime
            else:
                assert self.config.jwks_url is not None
                now = time.monotonic()
                if not force and now < self._next_refresh_allowed:
                    return False  # an unknown kid must not make us hammer the identity provider
                self._next_refresh_allowed = now + self.config.jwks_min_refresh_seconds
                document = _fetch_json(self.config.jwks_url, self.config.jwks_timeout_seconds)
            self._set_keys(_keys_from_jwks(document))
            logger.info("loaded %d verification keys from JWKS", len(self._keys))
            return True

    def _on_unknown_kid(self) -> None:
        self._refresh_soon()

    def _maybe_schedule_periodic_refresh(self) -> None:
        if self.config.jwks_url is None and self.config.jwks_file is None:
            return
        if time.monotonic() - self._keys_loaded_at >= self.config.jwks_refresh_seconds:
            self._refresh_soon()

    def _refresh_soon(self) -> None:
        """Refresh inline when that cannot stall an event loop, else in a worker thread."""
        if self.config.jwks_file is not None:
            self._refresh_jwks_logged()  # a stat() and, when changed, a small file read
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._refresh_jwks_logged()  # no event loop to stall (CLI, scripts, sync callers)
            return
        if self._refreshing or time.monotonic() < self._next_refresh_allowed:
            return
        self._refreshing = True

        def run() -> None:
            try:
                self._refresh_jwks_logged()
            finally:
                self._refreshing = False

        loop.run_in_executor(None, run)

    def _refresh_jwks_logged(self) -> None:
        try:
            self._refresh_jwks()
        except Exception as exc:
            logger.warning("JWKS refresh failed: %s", exc)


def mint_token(
    key: str | bytes | Any,
    *,
    sub: str,
    tenant: str | None = None,
    models: Sequence[str] | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    ttl_seconds: float | None = 3600,
    algorithm: str = "HS256",
    issuer: str | None = None,
    audience: str | None = None,
    kid: str | None = None,
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """Sign a LocalMoE token: `key` is the HS secret, or a PEM private key (str/bytes/object).

    `ttl_seconds=None` mints a token without `exp` (refused unless `require_exp=False`).
    """
    if not sub:
        raise ValueError("sub must be a non-empty string")
    if algorithm.lower() == "none":
        raise ValueError('algorithm "none" is not allowed')
    now = int(time.time())
    claims: dict[str, Any] = dict(extra_claims or {})
    claims.update({"sub": sub, "iat": now})
    if ttl_seconds is not None:
        claims["exp"] = now + int(ttl_seconds)
    optional = {"tenant": tenant, "rpm": rpm, "tpm": tpm, "iss": issuer, "aud": audience}
    claims.update({name: value for name, value in optional.items() if value is not None})
    if models is not None:
        claims["models"] = list(models)
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid} if kid else None)


def default_dev_secret_path() -> Path:
    """`$XDG_CONFIG_HOME/localmoe/jwt-secret` (default `~/.config/localmoe/jwt-secret`)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "localmoe" / "jwt-secret"


def load_or_create_dev_secret(path: Path) -> str:
    """Return the development HS256 secret stored at `path`, creating it (mode 0600) if absent.

    Safe when several gateway workers start at once: they all end up with the same secret.
    """
    path = Path(path)
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (secret + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # atomic "create if absent", with the content already in place
    except FileExistsError:
        return _read_secret(path)  # another process won the race: use its secret
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("created a development JWT secret at %s", path)
    return secret


def parse_ttl(text: str) -> int:
    """Parse a duration such as `3600`, `90s`, `15m`, `1h`, `7d` or `1h30m` into seconds."""
    text = text.strip().lower()
    if text.isdigit():
        return int(text)
    parts = re.fullmatch(r"(?:\d+[smhd])+", text) and re.findall(r"(\d+)([smhd])", text)
    if not parts:
        raise ValueError(f"invalid duration {text!r} (examples: 3600, 90s, 15m, 1h, 7d)")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(number) * unit[suffix] for number, suffix in parts)


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


def _principal_from_claims(claims: dict[str, Any], config: AuthConfig) -> Principal:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise AuthError("Token 'sub' claim must be a non-empty string", "invalid_claims")
    tenant = claims.get(config.tenant_claim)
    if tenant is not None and (not isinstance(tenant, str) or not tenant):
        raise AuthError(f"Token '{config.tenant_claim}' claim must be a string", "invalid_claims")
    models = claims.get(config.models_claim)
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    elif models is not None and (
        not isinstance(models, list) or not all(isinstance(m, str) and m for m in models)
    ):
        raise AuthError(
            f"Token '{config.models_claim}' claim must be a list of strings", "invalid_claims"
        )
    limits = {}
    for claim in (config.rpm_claim, config.tpm_claim):
        value = claims.get(claim)
        valid = value is None or (type(value) is int and value > 0)  # bool is not a limit
        if not valid:
            raise AuthError(f"Token '{claim}' claim must be a positive integer", "invalid_claims")
        limits[claim] = value
    return Principal(
        sub=sub,
        tenant=tenant,
        models=tuple(models) if models is not None else None,
        rpm=limits[config.rpm_claim],
        tpm=limits[config.tpm_claim],
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


def _keys_from_jwks(document: Any) -> list[_Key]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("a JWKS document is an object with a 'keys' list")
    keys = []
    for jwk_data in document["keys"]:
        if not isinstance(jwk_data, dict):
            continue
        kid = jwk_data.get("kid")
        if jwk_data.get("kty") == "oct" or jwk_data.get("use", "sig") != "sig":
            continue  # symmetric keys have no place in a published key set
        try:
            key = jwt.PyJWK(jwk_data).key
            algorithms = _algorithms_for_key(key)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError) as exc:
            logger.warning("skipping JWKS key %r: %s", kid, exc)
            continue
        if "alg" in jwk_data:
            algorithms = algorithms & {jwk_data["alg"]}
        if algorithms:
            keys.append(_Key(kid if isinstance(kid, str) else None, key, algorithms))
    return keys


def _fetch_json(url: str, timeout: float) -> Any:
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": "localmoe-gateway"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read(_MAX_JWKS_BYTES + 1)
    if len(body) > _MAX_JWKS_BYTES:
        raise ValueError(f"JWKS document at {url} is larger than {_MAX_JWKS_BYTES} bytes")
    return json.loads(body)


def _read_secret(path: Path) -> str:
    secret = path.read_text().strip()
    if len(secret) < _DEV_SECRET_MIN_CHARS:
        raise ValueError(f"the secret in {path} is shorter than {_DEV_SECRET_MIN_CHARS} characters")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        logger.warning("%s was readable by others (mode %o); setting it to 0600", path, mode)
        path.chmod(0o600)
    return secret
