"""The settings object: defaults < YAML file < LOCALMOE_* environment < command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import load_settings


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_yaml_file_sets_fields_and_models(tmp_path: Path) -> None:
    path = _config(tmp_path, "port: 9000\nmodels:\n  - id: m\n    route: ensemble\n")
    settings = load_settings(path)
    assert settings.port == 9000 and settings.models[0].route == "ensemble"


def test_environment_overrides_the_yaml_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCALMOE_PORT", "9100")
    assert load_settings(_config(tmp_path, "port: 9000\n")).port == 9100


def test_command_line_overrides_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALMOE_PORT", "9100")
    settings = load_settings(_config(tmp_path, "port: 9000\n"), port=9200, host=None)
    assert settings.port == 9200 and settings.host == "127.0.0.1"


def test_repeated_triton_urls_are_kept_in_order() -> None:
    settings = load_settings(triton_urls=["a:1", "b:2"])
    assert settings.triton.urls == ["a:1", "b:2"]


def test_unknown_yaml_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        load_settings(_config(tmp_path, "prot: 9000\n"))


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "nope.yaml")


def test_triton_urls_from_the_environment_may_be_comma_separated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOCALMOE_TRITON__URLS", "a:1,b:2")
    assert load_settings().triton.urls == ["a:1", "b:2"]


def test_auth_limits_and_cache_defaults() -> None:
    settings = load_settings()
    assert (settings.auth.enabled, settings.mode, settings.auth.metrics) == (True, "dev", False)
    assert (settings.ratelimit.rpm, settings.ratelimit.tpm, settings.redis_url) == (
        None,
        None,
        None,
    )
    assert settings.ratelimit.fail_open and settings.cache.enabled


def test_jwt_algorithms_from_the_environment_may_be_comma_separated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOCALMOE_AUTH__ALGORITHMS", "RS256, ES256")
    assert load_settings().auth.algorithms == ["RS256", "ES256"]


def test_empty_redis_url_means_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALMOE_REDIS_URL", "")
    assert load_settings().redis_url is None


def test_jwt_secret_is_not_shown_in_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALMOE_AUTH__JWT_SECRET", "s3cret-value")
    settings = load_settings()
    assert "s3cret-value" not in repr(settings)
    assert settings.auth.jwt_secret is not None
    assert settings.auth.jwt_secret.get_secret_value() == "s3cret-value"


def test_models_may_opt_out_of_the_cache(tmp_path: Path) -> None:
    settings = load_settings(_config(tmp_path, "models:\n  - id: m\n    cache: false\n"))
    assert settings.models[0].cache is False


def test_nested_sections_come_from_yaml_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCALMOE_RATELIMIT__RPM", "7")
    path = _config(tmp_path, "ratelimit:\n  tpm: 9\n  rpm: 1\nauth:\n  leeway_s: 5\n")
    settings = load_settings(path)
    assert (settings.ratelimit.rpm, settings.ratelimit.tpm, settings.auth.leeway_s) == (7, 9, 5)


def test_unknown_nested_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        load_settings(_config(tmp_path, "cache:\n  ttl: 5\n"))


def test_image_defaults_refuse_private_addresses_and_redirects() -> None:
    images = load_settings().images
    assert (images.max_per_request, images.max_bytes, images.min_side) == (8, 4 * 2**20, 2)
    assert images.formats == ["PNG", "JPEG", "WEBP", "GIF"] and images.allowed_domains == []
    assert images.allow_http and not images.allow_private_addresses
    assert not images.follow_redirects and images.max_redirects == 3


def test_image_lists_from_the_environment_may_be_comma_separated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOCALMOE_IMAGES__FORMATS", "png, jpeg")
    monkeypatch.setenv("LOCALMOE_IMAGES__ALLOWED_DOMAINS", "example.com,*.cdn.example.org")
    monkeypatch.setenv("LOCALMOE_IMAGES__ALLOW_PRIVATE_ADDRESSES", "true")
    images = load_settings().images
    assert images.formats == ["PNG", "JPEG"]
    assert images.allowed_domains == ["example.com", "*.cdn.example.org"]
    assert images.allow_private_addresses


def test_an_image_format_the_guards_do_not_know_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="SVG"):
        load_settings(_config(tmp_path, "images:\n  formats: [PNG, SVG]\n"))


def test_the_default_chat_body_limit_admits_the_largest_images_as_base64() -> None:
    from gateway.api.app import body_limits

    settings = load_settings()
    images = settings.images
    one = len("data:image/jpeg;base64,") + 4 * -(-images.max_bytes // 3)
    assert images.request_bytes() >= images.max_per_request * one
    limits = body_limits(settings)
    assert limits["max_bytes"] == 4 * 2**20
    assert limits["per_path"] == {"/v1/chat/completions": 4 * 2**20 + images.request_bytes()}


def test_a_configured_body_limit_holds_on_every_route(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.api.app import body_limits

    monkeypatch.setenv("LOCALMOE_REQUESTS__MAX_BODY_BYTES", "262144")
    assert body_limits(load_settings()) == {"max_bytes": 262144}


def test_models_may_say_whether_they_take_images(tmp_path: Path) -> None:
    settings = load_settings(_config(tmp_path, "models:\n  - id: m\n    vision: true\n"))
    assert settings.models[0].vision is True and load_settings().images.max_per_request == 8
