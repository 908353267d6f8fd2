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

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

DEFAULT_ROUTE = "tensorrt_llm_bls"
TEXT_BODY_BYTES = 4 * 1024 * 1024
"""The body limit when `requests.max_body_bytes` is unset (chat bodies get room for images)."""
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
    vision: bool | None = None
    """Whether it takes images (default: its route's `multimodal_encoders_name` parameter, or a
    `vision/` folder next to a configured tokenizer)."""


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
    balancing: Literal["round_robin", "least_outstanding", "engine_aware"] = "least_outstanding"
    """How an upstream is chosen among the healthy ones: in turn, the fewest requests in flight
    from this gateway, or the lowest engine load read from each Triton's metrics port."""
    affinity: bool = False
    """Requests of one conversation (`x-session-id` header, else `user`, else the prompt's
    first `affinity_prefix_chars`) go to the same upstream while it is healthy and not over
    `affinity_load_factor` × the mean load (consistent hashing with bounded load)."""
    affinity_prefix_chars: int = Field(default=256, ge=1)
    """How much of the prompt keys affinity when a request has no session id or `user`."""
    affinity_load_factor: float = Field(default=1.25, ge=1.0)
    """Bound on an affine upstream's in-flight requests relative to the mean (1.25: 25 % over)."""
    metrics_port: int = Field(default=8002, ge=1, le=65535)
    """Triton's metrics port on each upstream's host (`engine_aware` balancing reads it)."""
    metrics_urls: dict[str, str] = Field(default_factory=dict)
    """Per-upstream metrics URL where it is not `http://<host>:<metrics_port>/metrics`."""
    engine_poll_s: float = Field(default=0.5, gt=0)
    """How often `engine_aware` balancing reads each upstream's metrics."""
    max_in_flight_per_upstream: int | None = Field(default=None, ge=1)
    """Requests one upstream may have in flight from this gateway; a full one is skipped."""
    retries: int = Field(default=2, ge=0, le=10)
    """Further upstreams a request may try when one fails before its first response."""
    retry_budget: float = Field(default=0.2, ge=0, le=1)
    """Retries stay under this share of requests over the last 10 s (at least 3 per 10 s)."""
    retry_backoff_s: float = Field(default=0.02, ge=0)
    """Base of the jittered exponential wait before a retry."""
    breaker_failures: int = Field(default=5, ge=1)
    """Consecutive failed requests that open an upstream's circuit."""
    breaker_error_ratio: float = Field(default=0.5, gt=0, le=1)
    """Share of failed requests over `breaker_window_s` that opens the circuit…"""
    breaker_min_requests: int = Field(default=20, ge=1)
    """…once the window holds at least this many requests."""
    breaker_window_s: float = Field(default=10.0, gt=0)
    """The window of the error ratio."""
    breaker_open_s: float = Field(default=2.0, gt=0)
    """How long an opened circuit stays open before one trial request (half-open); doubles each
    time it opens again without having closed, up to `breaker_max_open_s`."""
    breaker_max_open_s: float = Field(default=30.0, gt=0)
    """The longest an opened circuit stays open."""

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

    max_body_bytes: int | None = Field(default=None, ge=1)
    """Larger bodies get 413 before they are parsed. Unset: 4 MiB, and `/v1/chat/completions`
    admits room on top for `images.max_per_request` images of `images.max_bytes` as base64;
    set: the limit of every route, images included."""
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


_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")


class ImageSettings(_Section):
    """Image parts of chat messages: how many, how large, and how `http(s)` images are fetched
    (by the gateway only; Triton takes `data:` URLs). Each refusal is a 400 naming the part."""

    max_per_request: int = Field(default=8, ge=0)
    """Images in one chat request (0: no images at all); more is 400 `too_many_images`."""
    max_bytes: int = Field(default=4 * 2**20, ge=1)
    """Bytes of one image (decoded, or as fetched); with `requests.max_body_bytes` unset the chat
    body limit grows to admit `max_per_request` images of this size as base64."""
    max_pixels: int = Field(default=25_000_000, ge=1)
    """Width × height of one image, read from its header before it is decoded (decompression
    bombs)."""
    min_side: int = Field(default=2, ge=1)
    """Smallest width and height accepted (a 1×1 image is refused)."""
    formats: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(_IMAGE_FORMATS))
    """Image formats accepted: some of PNG, JPEG, WEBP, GIF (its first frame); others are
    always refused."""
    allow_http: bool = True
    """Accept `http(s)` image URLs (fetched by the gateway); false: `data:` URLs only."""
    allow_private_addresses: bool = False
    """Let `http(s)` images come from loopback, private, link-local and other non-public
    addresses (a local deployment's switch; leave off where clients are not trusted)."""
    allowed_domains: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Hosts `http(s)` images may come from: `example.com` or `*.example.com` (empty: any public
    host)."""
    follow_redirects: bool = False
    """Follow redirects of image URLs, each hop checked again; off: a redirect is refused."""
    max_redirects: int = Field(default=3, ge=0, le=20)
    """Redirects followed for one image when `follow_redirects` is on."""
    connect_timeout_s: float = Field(default=5.0, gt=0)
    """Time limit on connecting to an image's host."""
    read_timeout_s: float = Field(default=10.0, gt=0)
    """Time limit on each read of an image's body."""
    total_timeout_s: float = Field(default=30.0, gt=0)
    """Time limit on a whole fetch, redirects included (a server dripping bytes stops here)."""

    _split_lists = field_validator("formats", "allowed_domains", mode="before")(_split)

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, formats: list[str]) -> list[str]:
        upper = [f.upper() for f in formats]
        unknown = [f for f in upper if f not in _IMAGE_FORMATS]
        if unknown:
            raise ValueError(f"unknown image formats {unknown}; choose from {_IMAGE_FORMATS}")
        return upper

    def request_bytes(self) -> int:
        """Body bytes that `max_per_request` images of `max_bytes` take as base64 data URLs."""
        data_url = 4 * -(-self.max_bytes // 3) + 64  # base64 of the bytes, plus the URL's head
        return self.max_per_request * data_url


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


class AdmissionSettings(_Section):
    """Backpressure: how many generations run at once, and how many wait (docs/resilience.md)."""

    max_in_flight: int | None = Field(default=None, ge=1)
    """Generation requests served at once by this gateway process (unset: no bound)."""
    max_queue: int = Field(default=256, ge=0)
    """Requests waiting for a place; beyond it, 503 `server_overloaded` with `Retry-After`."""
    queue_timeout_s: float = Field(default=10.0, gt=0)
    """The longest a request waits for a place; then the same 503."""
    priority_claim: str = "priority"
    """Token claim whose integer value orders the queue (higher first; default 0)."""


class FallbackSettings(_Section):
    """Where requests go when no Triton upstream can take them: any OpenAI-compatible provider,
    called through LiteLLM (`pip install localmoe[fallback]`)."""

    model: str | None = None
    """LiteLLM model string, e.g. `openai/gpt-4o-mini` or `openai/<id>` with `api_base` (unset:
    no fallback)."""
    api_base: str | None = None
    """The provider's base URL (an OpenAI-compatible server: `http://host:port/v1`)."""
    api_key: SecretStr | None = None
    """The provider's key (from a Secret in Kubernetes)."""
    models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Local model ids that may fall back (empty: all)."""
    timeout_s: float = Field(default=60.0, gt=0)
    """Time limit on one fallback call."""

    _split_models = field_validator("models", mode="before")(_split)


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
    """On SIGTERM/SIGINT: not ready at once, no new connections, open requests and streams
    finish for this long, then the rest end with an error event (Kubernetes: keep
    `terminationGracePeriodSeconds` above it)."""
    reload_watch_s: float | None = Field(default=None, gt=0)
    """Poll `config_file` this often and apply it when it changes (SIGHUP always reloads)."""

    triton: TritonSettings = Field(default_factory=TritonSettings)
    requests: RequestSettings = Field(default_factory=RequestSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    ratelimit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    images: ImageSettings = Field(default_factory=ImageSettings)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    fallback: FallbackSettings = Field(default_factory=FallbackSettings)

    _unset_redis = field_validator("redis_url", mode="before")(_empty_is_unset)
    _given: dict[str, Any] = PrivateAttr(default_factory=dict)
    """The command-line values it was built with, which a reload keeps."""

    def reloaded(self) -> Settings:
        """The settings as the file and the environment say now, with the same command-line
        values; raises (pydantic's ValidationError, OSError, YAML errors) when they are bad."""
        return load_settings(self.config_file, **self._given)

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
    settings = Settings(**given)
    settings._given = {"host": host, "port": port, "triton_urls": triton_urls}
    return settings
