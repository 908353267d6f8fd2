"""`localmoe token`: a signed token on the last line of output, with the configured key."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.cli import main
from gateway.policy.auth import Authenticator, Principal
from gateway.policy.tokens import default_dev_secret_path
from gateway.settings import AuthSettings

SECRET = "cli-test-secret-0123456789abcdefghijklmnopqrstuvwxyz"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No LOCALMOE_* settings from outside; the development key goes to a temporary folder."""
    import os

    for name in list(os.environ):
        if name.startswith("LOCALMOE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def _token(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["token", *args]) == 0
    return capsys.readouterr().out.splitlines()[-1]


def _verify(token: str, **settings: object) -> Principal:
    return Authenticator(AuthSettings(**settings)).authenticate(f"Bearer {token}")  # type: ignore[arg-type]


def test_token_carries_the_requested_claims(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCALMOE_AUTH__JWT_SECRET", SECRET)
    token = _token(
        capsys,
        "--sub",
        "alice",
        "--tenant",
        "acme",
        "--models",
        "a,b-*",
        "--rpm",
        "5",
        "--tpm",
        "900",
    )
    principal = _verify(token, jwt_secret=SECRET)
    assert (principal.sub, principal.tenant, principal.models) == ("alice", "acme", ("a", "b-*"))
    assert (principal.rpm, principal.tpm) == (5, 900)


def test_ttl_sets_the_expiry(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCALMOE_AUTH__JWT_SECRET", SECRET)
    claims = _verify(_token(capsys, "--sub", "a", "--ttl", "1h30m"), jwt_secret=SECRET).claims
    assert claims["exp"] - claims["iat"] == 5400


def test_token_carries_the_configured_issuer_and_audience(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCALMOE_AUTH__JWT_SECRET", SECRET)
    monkeypatch.setenv("LOCALMOE_AUTH__ISSUER", "me")
    monkeypatch.setenv("LOCALMOE_AUTH__AUDIENCE", "gw")
    token = _token(capsys, "--sub", "a")
    assert _verify(token, jwt_secret=SECRET, issuer="me", audience="gw").sub == "a"


def test_without_a_key_the_token_is_signed_with_the_dev_secret(
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = _token(capsys, "--sub", "dev")
    secret = default_dev_secret_path().read_text().strip()
    assert _verify(token, jwt_secret=secret).sub == "dev"


def test_private_key_in_jwt_public_key_file_signs_es256(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "key.pem").write_bytes(pem)
    monkeypatch.setenv("LOCALMOE_AUTH__JWT_PUBLIC_KEY_FILE", str(tmp_path / "key.pem"))
    token = _token(capsys, "--sub", "svc")
    assert (
        _verify(token, jwt_public_key_file=tmp_path / "key.pem", algorithms=["ES256"]).sub == "svc"
    )


def test_public_key_alone_cannot_sign(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "pub.pem").write_bytes(pem)
    monkeypatch.setenv("LOCALMOE_AUTH__JWT_PUBLIC_KEY_FILE", str(tmp_path / "pub.pem"))
    assert main(["token", "--sub", "x"]) == 2
    assert "identity provider" in capsys.readouterr().err


def test_production_mode_without_a_key_is_an_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCALMOE_MODE", "production")
    assert main(["token", "--sub", "x"]) == 2
    assert "production mode needs a configured JWT key" in capsys.readouterr().err


def test_invalid_ttl_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--sub", "x", "--ttl", "soon"]) == 2
    assert "--ttl" in capsys.readouterr().err
