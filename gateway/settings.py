"""The gateway's one settings object: defaults < YAML file < `LOCALMOE_*` environment < arguments.

Built once at start-up (`load_settings`) and passed down; nothing else reads the environment.
"""

from __future__ import annotations

import json
import os
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


class ModelSettings(BaseModel):
    """One served model. Unset fields are discovered from the Triton model configs.

    `route` is the Triton model the gateway calls (`tensorrt_llm_bls` or `ensemble`); `id` is the
    OpenAI model id; `tokenizer_dir` holds `tokenizer.json` and `tokenizer_config.json`.
    """

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    route: str = DEFAULT_ROUTE
    tokenizer_dir: Path | None = None
    context_length: int | None = Field(default=None, ge=1)
    cache: bool = True
    """False keeps this model's answers out of the response cache."""


class Settings(BaseSettings):
    """Everything the gateway can be told. Field `x` is env `LOCALMOE_X` and YAML key `x`."""

    model_config = SettingsConfigDict(env_prefix="LOCALMOE_", extra="forbid")

    config_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    triton_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1:8001"], min_length=1
    )
    models: list[ModelSettings] = Field(default_factory=list)
    discover_models: bool = True

    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1)
    max_n: int = Field(default=16, ge=1)
    max_stop: int = Field(default=4, ge=0)
    max_tokens_limit: int | None = Field(default=None, ge=1)
    max_messages: int | None = Field(default=1024, ge=1)
    upstream_timeout_s: float | None = Field(default=None, gt=0)
    health_interval_s: float = Field(default=2.0, gt=0)
    # Long-lived gRPC streams per upstream that routes with TensorRT-LLM's `stop` input share
    # (0: one RPC per request for every route).
    triton_streams: int = Field(default=2, ge=0, le=64)

    # Auth (gateway.policy.keys turns these into the verifying key; see docs/auth-limits-cache.md).
    mode: Literal["dev", "production"] = "dev"
    auth: bool = True
    jwt_secret: SecretStr | None = None
    jwt_public_key_file: Path | None = None
    jwks_file: Path | None = None
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_algorithms: Annotated[list[str] | None, NoDecode] = None
    jwt_dev_secret_file: Path | None = None
    metrics_auth: bool = False

    # Rate limits (per token subject; tenant_* per tenant) and their shared storage.
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    tenant_rpm: int | None = Field(default=None, ge=1)
    tenant_tpm: int | None = Field(default=None, ge=1)
    ratelimit_window_s: float = Field(default=60.0, gt=0)
    ratelimit_fail_open: bool = True
    redis_url: str | None = None

    # Response cache: in process, and in Redis when `redis_url` is set.
    cache_enabled: bool = True
    cache_max_entries: int = Field(default=10_000, ge=1)
    cache_ttl_s: float = Field(default=600.0, gt=0)

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    access_log: bool = True

    @field_validator("triton_urls", "jwt_algorithms", mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        # `LOCALMOE_TRITON_URLS=host-a:8001,host-b:8001` as well as a JSON list.
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("redis_url", "jwks_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return value or None

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


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings; `overrides` (command-line values) win over everything, None is unset."""
    if config_file is not None and not Path(config_file).is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")
    given = {k: v for k, v in overrides.items() if v is not None}
    if config_file is not None:
        given["config_file"] = Path(config_file)
    return Settings(**given)
