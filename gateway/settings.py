"""The gateway's one settings object: defaults < YAML file < `LOCALMOE_*` environment < arguments.

Built once at start-up (`load_settings`) and passed down: each component takes its own section
(`settings.auth`, `settings.ratelimit`, …). Nested keys are `section.key` in YAML and
`LOCALMOE_SECTION__KEY` in the environment. Nothing else reads the environment.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

DEFAULT_ROUTE = "tensorrt_llm_bls"
# A Triton gRPC target: `host:port`, `[ipv6]:port` or `dns:///name:port`.
_TARGET = re.compile(r"(dns:///)?(\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):\d{1,5}")


def _split(value: Any) -> Any:
    # `a:8001,b:8001` as well as a JSON list, for environment variables.
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            return json.loads(value)
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _empty_is_unset(value: Any) -> Any:
    return value or None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSettings(_Section):
    """One served model. Unset fields are discovered from the Triton model configs.

    `route` is the Triton model the gateway calls (`tensorrt_llm_bls` or `ensemble`); `id` is the
    OpenAI model id; `tokenizer_dir` holds `tokenizer.json` and `tokenizer_config.json`.
    """

    id: str | None = None
    """The OpenAI model id (default: the route's `served_model_name` parameter)."""
    route: str = DEFAULT_ROUTE
    """The Triton model the gateway calls: `tensorrt_llm_bls` or `ensemble`."""
    tokenizer_dir: Path | None = None
    """Holds `tokenizer.json` and `tokenizer_config.json` (default: the route's parameter)."""
    context_length: int | None = Field(default=None, ge=1)
    """Default: the checkpoint's `max_position_embeddings`."""
    cache: bool = True
    """False keeps this model's answers out of the response cache."""


class TritonSettings(_Section):
    """The Triton upstreams and how the gateway talks to them."""

    urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1:8001"], min_length=1
    )
    """Triton gRPC endpoints: `host:port`, or `dns:///name:port` for every address the name
    resolves to (a Kubernetes headless Service), looked up every `dns_interval_s`; requests go
    round robin over the ready ones."""
    timeout_s: float | None = Field(default=None, gt=0)
    """Per-request limit on Triton; then 504 `upstream_timeout` and the request is stopped."""
    health_interval_s: float = Field(default=2.0, gt=0)
    """Active health checks of each upstream, and model discovery."""
    dns_interval_s: float = Field(default=10.0, gt=0)
    """How often `dns:///` entries of `urls` are resolved again (pods come and go)."""
    streams: int = Field(default=2, ge=0, le=64)
    """Long-lived gRPC streams per upstream shared by routes that take `stop` (0: one RPC per
    request)."""

    _split_urls = field_validator("urls", mode="before")(_split)

    @field_validator("urls")
    @classmethod
    def _host_and_port(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not _TARGET.fullmatch(url):
                raise ValueError(f"expected host:port or dns:///name:port, got {url!r}")
        return urls


class RequestSettings(_Section):
    """Bounds on what one request may ask for: each refusal is a 400 (or 413) naming the field."""

    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1)
    """Larger bodies get 413 before they are parsed."""
    max_n: int = Field(default=16, ge=1)
    """Samples per prompt (`n`)."""
    max_stop: int = Field(default=4, ge=0)
    """Stop sequences per request (OpenAI allows 4)."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Cap on `max_tokens` / `max_completion_tokens` (default: the context length)."""
    max_messages: int | None = Field(default=1024, ge=1)
    """Messages in one chat request."""
    max_prompts: int = Field(default=64, ge=1)
    """Prompts in one `/v1/completions` request."""
    max_generations: int = Field(default=64, ge=1)
    """Prompts × `n`: the generations one request may start."""
    max_tools: int = Field(default=128, ge=0)
    """Entries of `tools` (OpenAI's own limit is 128)."""


class AuthSettings(_Section):
    """JWT bearer authentication (docs/auth-limits-cache.md). Configure at most one key."""

    enabled: bool = True
    """Require a bearer token on `/v1/*`."""
    jwt_secret: SecretStr | None = None
    """HS256 secret (production: at least 32 characters)."""
    jwt_public_key_file: Path | None = None
    """PEM public key (RS256/ES256/EdDSA); a private key PEM here also lets `localmoe token`
    sign."""
    jwks_file: Path | None = None
    """JWKS document on disk; read again when a token names an unknown `kid`."""
    jwks_url: str | None = None
    """JWKS of your identity provider, fetched at start-up and refreshed."""
    issuer: str | None = None
    """Required `iss` claim."""
    audience: str | None = None
    """Required `aud` claim (a token with an `aud` is refused when unset)."""
    algorithms: Annotated[list[str] | None, NoDecode] = None
    """Accepted `alg` values (default: every algorithm that fits the key)."""
    dev_secret_file: Path | None = None
    """Where dev mode keeps its generated secret (default `~/.config/localmoe/jwt-secret`)."""
    leeway_s: float = Field(default=30.0, ge=0)
    """Clock skew allowed on `exp` and `nbf`."""
    token_cache_size: int = Field(default=10_000, ge=0)
    """Verified tokens remembered (0: verify every request)."""
    token_cache_s: float = Field(default=60.0, ge=0)
    """How long a verified token is trusted without re-verification (bounded by its `exp`)."""
    jwks_refresh_s: float = Field(default=300.0, gt=0)
    """Age at which the JWKS is fetched again (in the background)."""
    jwks_min_refresh_s: float = Field(default=30.0, ge=0)
    """Least time between two JWKS fetches (tokens with unknown `kid`s ask for them)."""
    jwks_timeout_s: float = Field(default=5.0, gt=0)
    """Time limit on one JWKS fetch."""
    tenant_claim: str = "tenant"
    """Claim naming the caller's tenant (shared tenant limits, a cache space of its own)."""
    models_claim: str = "models"
    """Claim listing the model ids or patterns the caller may use."""
    rpm_claim: str = "rpm"
    """Claim overriding `ratelimit.rpm` for the caller."""
    tpm_claim: str = "tpm"
    """Claim overriding `ratelimit.tpm` for the caller."""
    metrics: bool = False
    """Put `/metrics` behind a bearer token too."""

    _split_algorithms = field_validator("algorithms", mode="before")(_split)
    _unset_url = field_validator("jwks_url", mode="before")(_empty_is_unset)


class RateLimitSettings(_Section):
    """Default limits (token claims override them per subject); None is unlimited."""

    rpm: int | None = Field(default=None, ge=1)
    """Requests per window per subject."""
    tpm: int | None = Field(default=None, ge=1)
    """Prompt + completion tokens per window per subject."""
    tenant_rpm: int | None = Field(default=None, ge=1)
    """Requests per window per tenant, on top of the subject's."""
    tenant_tpm: int | None = Field(default=None, ge=1)
    """Tokens per window per tenant, on top of the subject's."""
    window_s: float = Field(default=60.0, gt=0)
    """Length of the fixed window that the limits count in."""
    fail_open: bool = True
    """With Redis unreachable: per-process limits (true) or 503 (false)."""
    redis_timeout_s: float = Field(default=0.5, gt=0)
    """Time limit on one Redis call of the limiter."""
    redis_retry_s: float = Field(default=1.0, gt=0)
    """After a Redis error, how long per-process limits decide before Redis is tried again."""


class CacheSettings(_Section):
    """The exact-match response cache for deterministic requests."""

    enabled: bool = True
    """The response cache (`x-cache` header)."""
    max_entries: int = Field(default=10_000, ge=1)
    """Entries of the in-process tier (in front of Redis when `redis_url` is set)."""
    ttl_s: float = Field(default=600.0, gt=0)
    """Lifetime of an entry, in process and in Redis."""
    redis_timeout_s: float = Field(default=0.25, gt=0)
    """Time limit on one Redis call of the cache."""
    redis_retry_s: float = Field(default=5.0, gt=0)
    """After a Redis error, how long the cache runs in process only."""


class Settings(BaseSettings):
    """Everything the gateway can be told. See docs/configuration.md for the full table."""

    model_config = SettingsConfigDict(
        env_prefix="LOCALMOE_", env_nested_delimiter="__", extra="forbid"
    )

    config_file: Path | None = None
    """The YAML file read under the environment (`--config`)."""
    mode: Literal["dev", "production"] = "dev"
    """`production` refuses to start without a configured JWT key."""
    host: str = "127.0.0.1"
    """The gateway's bind address (`--host`)."""
    port: int = Field(default=8080, ge=0, le=65535)
    """The gateway's HTTP port (`--port`)."""
    redis_url: str | None = None
    """Shared rate-limit state and response cache across replicas (unset: in process)."""
    models: list[ModelSettings] = Field(default_factory=list)
    discover_models: bool = True
    """Read the served models from Triton's repository index and `tensorrt_llm_bls` parameters."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    """One line per record: JSON with the record's fields, or plain text."""
    access_log: bool = True
    """One structured line per request, with its `x-request-id`."""
    drain_timeout_s: float = Field(default=30.0, ge=1)
    """On SIGTERM/SIGINT: stop accepting, let open requests and streams finish for this long,
    then close the rest (Kubernetes: keep `terminationGracePeriodSeconds` above it)."""

    triton: TritonSettings = Field(default_factory=TritonSettings)
    requests: RequestSettings = Field(default_factory=RequestSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    ratelimit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)

    _unset_redis = field_validator("redis_url", mode="before")(_empty_is_unset)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        given = getattr(init_settings, "init_kwargs", {}).get("config_file")
        config_file = given or os.environ.get("LOCALMOE_CONFIG_FILE")
        if not config_file:
            return init_settings, env_settings
        return init_settings, env_settings, YamlConfigSettingsSource(settings_cls, config_file)


def load_settings(
    config_file: Path | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    triton_urls: list[str] | None = None,
) -> Settings:
    """Build the settings; the command-line values given here win over everything."""
    if config_file is not None and not Path(config_file).is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")
    given: dict[str, Any] = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if triton_urls:
        given["triton"] = {"urls": triton_urls}
    if config_file is not None:
        given["config_file"] = Path(config_file)
    return Settings(**given)
