"""Which key verifies bearer tokens, and which signs development tokens, from the settings.

At most one of `jwt_secret` (HS256), `jwt_public_key_file` (PEM public key, certificate or
private key), `jwks_file` and `jwks_url` is configured. With none of them, `dev` mode uses the
development secret kept in `auth.dev_secret_file` (default `$XDG_CONFIG_HOME/localmoe/jwt-secret`,
created on first use, mode 0600); `production` mode refuses to start.

`localmoe token` and `localmoe up` sign with the same key: the HS secret, or the private key when
`jwt_public_key_file` holds one. Gateways that verify with a public key or a JWKS only accept
tokens from the identity provider that holds the private key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from gateway.policy.auth import HMAC_ALGORITHMS, Authenticator, _algorithms_for_key
from gateway.policy.tokens import default_dev_secret_path, load_or_create_dev_secret, mint_token
from gateway.settings import Settings

__all__ = [
    "KeyConfigError",
    "authenticator",
    "describe_key",
    "mint",
    "signing_key",
]

_KEY_SETTINGS = ("jwt_secret", "jwt_public_key_file", "jwks_file", "jwks_url")
_PREFERRED = ("RS256", "ES256", "ES384", "ES512", "ES256K", "EdDSA", "HS256")


class KeyConfigError(ValueError):
    """The settings name no usable key (or several); the message says what to set."""


def authenticator(settings: Settings) -> Authenticator | None:
    """The gateway's token verifier; None when `auth` is off. Raises `KeyConfigError`."""
    if not settings.auth.enabled:
        return None
    _check_one_key(settings)
    try:
        return Authenticator(settings.auth, secret=_hs_secret(settings))
    except (OSError, ValueError) as exc:
        raise KeyConfigError(f"cannot load the JWT key: {exc}") from None


def describe_key(settings: Settings) -> str:
    """One line for the logs: where the verifying key comes from."""
    if not settings.auth.enabled:
        return "auth is off: every request is served without a token"
    if settings.auth.jwt_secret is not None:
        return "HS256 secret from auth.jwt_secret (LOCALMOE_AUTH__JWT_SECRET)"
    for name in ("jwt_public_key_file", "jwks_file", "jwks_url"):
        value = getattr(settings.auth, name)
        if value is not None:
            return f"{name} {value}"
    return f"development secret in {_dev_secret_path(settings)}"


def signing_key(settings: Settings) -> tuple[Any, str]:
    """The key and algorithm that sign tokens this gateway accepts. Raises `KeyConfigError`."""
    _check_one_key(settings)
    allowed = settings.auth.algorithms
    secret = _hs_secret(settings)
    if secret is not None:
        return secret, _pick(HMAC_ALGORITHMS, allowed, default="HS256")
    path = settings.auth.jwt_public_key_file
    if path is not None and b"PRIVATE KEY" in Path(path).read_bytes():
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        return key, _pick(_algorithms_for_key(key.public_key()), allowed)
    raise KeyConfigError(
        "this gateway verifies tokens with a public key or a JWKS, so it cannot sign them: "
        "get tokens from your identity provider, or put the private key PEM in "
        "jwt_public_key_file"
    )


def mint(
    settings: Settings,
    *,
    sub: str,
    tenant: str | None = None,
    models: list[str] | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    ttl_seconds: float | None = 3600,
) -> str:
    """A token for `sub` that this gateway accepts (issuer and audience as configured)."""
    key, algorithm = signing_key(settings)
    return mint_token(
        key,
        sub=sub,
        tenant=tenant,
        models=models,
        rpm=rpm,
        tpm=tpm,
        ttl_seconds=ttl_seconds,
        algorithm=algorithm,
        issuer=settings.auth.issuer,
        audience=settings.auth.audience,
    )


def _check_one_key(settings: Settings) -> None:
    given = [name for name in _KEY_SETTINGS if getattr(settings.auth, name) is not None]
    if len(given) > 1:
        raise KeyConfigError(f"configure one JWT key, not several: {', '.join(given)}")
    if not given and settings.mode == "production":
        raise KeyConfigError(
            "production mode needs a configured JWT key: set LOCALMOE_AUTH__JWT_SECRET, "
            "LOCALMOE_AUTH__JWT_PUBLIC_KEY_FILE, LOCALMOE_AUTH__JWKS_FILE or "
            "LOCALMOE_AUTH__JWKS_URL (or auth.* in the config file)"
        )


def _hs_secret(settings: Settings) -> str | None:
    """The HS secret: configured, or the development one when no key is configured."""
    if settings.auth.jwt_secret is not None:
        secret = settings.auth.jwt_secret.get_secret_value()
        if not secret:
            raise KeyConfigError("jwt_secret is empty")
        return secret
    if any(getattr(settings.auth, name) is not None for name in _KEY_SETTINGS):
        return None
    return load_or_create_dev_secret(_dev_secret_path(settings))


def _dev_secret_path(settings: Settings) -> Path:
    return settings.auth.dev_secret_file or default_dev_secret_path()


def _pick(fitting: frozenset[str], allowed: list[str] | None, default: str | None = None) -> str:
    usable = fitting & set(allowed) if allowed else fitting
    if not usable:
        raise KeyConfigError(f"none of auth.algorithms {allowed} fits the signing key")
    if default in usable:
        return default
    return next((alg for alg in _PREFERRED if alg in usable), sorted(usable)[0])
