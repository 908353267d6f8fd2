"""Development tokens: sign a LocalMoE JWT, keep the generated development secret, read a TTL.

`localmoe token` and `localmoe up` use these; production tokens come from your identity provider.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jwt

logger = logging.getLogger("gateway.policy.auth")

_DEV_SECRET_MIN_CHARS = 32


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

    `ttl_seconds=None` mints a token without `exp`, which `Authenticator` refuses.
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


def _read_secret(path: Path) -> str:
    secret = path.read_text().strip()
    if len(secret) < _DEV_SECRET_MIN_CHARS:
        raise ValueError(f"the secret in {path} is shorter than {_DEV_SECRET_MIN_CHARS} characters")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        logger.warning("%s was readable by others (mode %o); setting it to 0600", path, mode)
        path.chmod(0o600)
    return secret
