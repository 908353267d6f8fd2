"""The models catalogue: which OpenAI model ids exist, the Triton route behind each, and their
tokenizer, chat template, context length and whether they take images.

Entries come from the settings (`models:` in the YAML config); whatever they leave unset is read
from the Triton model configs' `parameters` (`served_model_name`, `tokenizer_dir`) of the route,
or of `preprocessing`, which NVIDIA's layout also gives the tokenizer location. A route takes
images when its `multimodal_encoders_name` parameter (NVIDIA's name, on `tensorrt_llm_bls`)
names an encoder model; the image placeholder and the features per image come from the
checkpoint's `vision/config.json` next to the tokenizer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

from gateway.core import protocol
from gateway.core.chat_template import ChatTemplate, load_tokenizer_config
from gateway.core.tokenizer import PromptTokenizer
from gateway.errors import ModelNotFound
from gateway.settings import DEFAULT_ROUTE, ModelSettings, Settings

log = logging.getLogger("localmoe.models")

# Without the BLS: NVIDIA's ensemble, else a GPU `trtllm-llmapi` repository's only model.
_FALLBACK_ROUTES = ("ensemble", "tensorrt_llm")
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
_VISION_CONFIG = "vision/config.json"
EMBEDDINGS_ROUTE = "embeddings"
"""The repository model that serves `/v1/embeddings` for the repository's model."""
MAX_TOP_LOGPROBS = 20
"""OpenAI's limit on chat `top_logprobs`, and the engines' (`num_logprobs`)."""


@dataclass(frozen=True, eq=False)
class ServedModel:
    """One OpenAI model id and everything needed to prepare its prompts."""

    id: str
    route: str
    context_length: int
    tokenizer: PromptTokenizer
    chat_template: ChatTemplate | None
    created: int
    cache: bool = True
    """Whether answers may be cached (`models[].cache`)."""
    cache_identity: str = ""
    """Names the model in cache keys; changes when its configuration or weight files change."""
    vision: bool = False
    """Takes `image_url` parts (its route has a multimodal encoder)."""
    image_token: str | None = None
    """The placeholder its chat template writes for an image (`vision/config.json`)."""
    image_tokens: int | None = None
    """Prompt tokens one image takes (F features); None: unknown before Triton reports it."""
    embeddings: bool = False
    """Serves `/v1/embeddings` (Triton's repository has the `embeddings` model)."""

    def card(self, inputs: AbstractSet[str] | None = None) -> protocol.Model:
        """The model's `/v1/models` entry; `inputs`, the tensors its route declares, tell what
        else it can do (guided decoding, top logprobs)."""
        inputs = inputs or frozenset()
        guided = "guided_decoding_guide" in inputs
        return protocol.Model(
            id=self.id,
            created=self.created,
            max_model_len=self.context_length,
            capabilities=protocol.ModelCapabilities(
                vision=self.vision,
                structured_outputs=guided,
                tools=guided,
                top_logprobs=MAX_TOP_LOGPROBS if "num_logprobs" in inputs else 0,
                embeddings=self.embeddings,
            ),
        )


class Catalogue:
    """The served models by id. Filled at start-up and completed once Triton can be asked."""

    def __init__(self, settings: Settings):
        self._discover = settings.discover_models
        self._pending: list[ModelSettings] = list(settings.models) or [ModelSettings()]
        self._models: dict[str, ServedModel] = {}

    def get(self, model_id: str) -> ServedModel:
        """The model called `model_id`, or a 404 `model_not_found`."""
        model = self._models.get(model_id)
        if model is None:
            raise ModelNotFound(model_id)
        return model

    def all(self) -> list[ServedModel]:
        """Every served model, in configuration order."""
        return list(self._models.values())

    @property
    def complete(self) -> bool:
        """True when no configured entry is still waiting for Triton."""
        return not self._pending

    async def load_configured(self) -> None:
        """Load the entries the settings describe fully; they need no Triton to be listed."""
        waiting = []
        for entry in self._pending:
            if entry.id and entry.tokenizer_dir:
                vision = _has_vision_config(entry.tokenizer_dir)
                await self._add(entry.id, entry.route, entry.tokenizer_dir, entry, vision=vision)
            elif self._discover:
                waiting.append(entry)
            else:
                log.error("model entry %s lacks id or tokenizer_dir and discovery is off", entry)
        self._pending = waiting

    async def discover(self, repository: dict[str, dict[str, str]]) -> None:
        """Complete the pending entries from Triton's loaded models and their parameters."""
        waiting = []
        for entry in self._pending:
            route = entry.route
            if route == DEFAULT_ROUTE and route not in repository:
                route = next((r for r in _FALLBACK_ROUTES if r in repository), route)
            if route not in repository:
                log.warning("route %s is not loaded on Triton yet", route)
                waiting.append(entry)
                continue
            params = {**repository.get("preprocessing", {}), **_non_empty(repository[route])}
            model_id = entry.id or params.get("served_model_name") or route
            tokenizer_dir = entry.tokenizer_dir or params.get("tokenizer_dir")
            if not tokenizer_dir:
                log.error(
                    "route %s has no tokenizer_dir parameter; set models[].tokenizer_dir", route
                )
                continue
            # The BLS names its encoder (NVIDIA's parameter); the llmapi model says `multimodal`.
            config = repository[route]
            vision = (
                bool(config.get("multimodal_encoders_name"))
                or config.get("multimodal", "").lower() == "true"
            )
            embeddings = EMBEDDINGS_ROUTE in repository
            await self._add(
                model_id, route, Path(tokenizer_dir), entry, vision=vision, embeddings=embeddings
            )
        self._pending = waiting

    async def _add(
        self,
        model_id: str,
        route: str,
        tokenizer_dir: Path,
        entry: ModelSettings,
        *,
        vision: bool,
        embeddings: bool = False,
    ) -> None:
        if entry.vision is not None:
            vision = entry.vision
        try:
            model = await asyncio.to_thread(
                load_model,
                model_id,
                route,
                tokenizer_dir,
                entry.context_length,
                cache=entry.cache,
                vision=vision,
                embeddings=embeddings,
            )
        except (OSError, ValueError) as exc:
            log.error("cannot serve model %s from %s: %s", model_id, tokenizer_dir, exc)
            return
        self._models[model.id] = model
        log.info(
            "serving model %s on route %s (context %d tokens, chat template: %s, images: %s)",
            model.id,
            model.route,
            model.context_length,
            model.chat_template is not None,
            model.vision,
        )


def load_model(
    model_id: str,
    route: str,
    tokenizer_dir: Path,
    context_length: int | None = None,
    *,
    cache: bool = True,
    vision: bool = False,
    embeddings: bool = False,
) -> ServedModel:
    """Read a model's tokenizer, chat template, context length and image placeholder from its
    folder (blocking)."""
    image_token, image_tokens = _vision_config(Path(tokenizer_dir)) if vision else (None, None)
    return ServedModel(
        id=model_id,
        route=route,
        context_length=context_length or _context_length(tokenizer_dir),
        tokenizer=PromptTokenizer.from_dir(tokenizer_dir),
        chat_template=ChatTemplate.from_dir(tokenizer_dir),
        created=int(time.time()),
        cache=cache,
        cache_identity=f"{model_id}|{route}|{_fingerprint(Path(tokenizer_dir))}",
        vision=vision,
        image_token=image_token,
        image_tokens=image_tokens,
        embeddings=embeddings,
    )


def _has_vision_config(model_dir: Path) -> bool:
    # A configured model that Triton is not asked about: its checkpoint says it sees.
    return (Path(model_dir) / _VISION_CONFIG).is_file()


def _vision_config(model_dir: Path) -> tuple[str | None, int | None]:
    """The image placeholder and the tokens per image of a vision checkpoint, when it says."""
    path = model_dir / _VISION_CONFIG
    if not path.is_file():
        return None, None
    config = json.loads(path.read_text(encoding="utf-8"))
    token, count = config.get("image_token"), config.get("num_image_tokens")
    return (
        token if isinstance(token, str) and token else None,
        count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else None,
    )


def _context_length(model_dir: Path) -> int:
    config_path = Path(model_dir) / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        for section in (config, config.get("text_config") or {}):
            for key in _CONTEXT_KEYS:
                if isinstance(section.get(key), int):
                    return section[key]
    limit = load_tokenizer_config(model_dir).get("model_max_length")
    if isinstance(limit, int) and limit < 10**8:  # HF writes 1e30 for "no limit"
        return limit
    raise ValueError(f"cannot tell the context length of {model_dir}; set models[].context_length")


def _fingerprint(model_dir: Path) -> str:
    # The same on every replica (contents and sizes, not mtimes), different after a rebuild that
    # changes the config or the size of a weight file. Entries also expire after `cache_ttl_s`.
    digest = hashlib.sha256()
    for name in ("config.json", "tokenizer_config.json", _VISION_CONFIG):
        path = model_dir / name
        if path.is_file():
            digest.update(path.read_bytes())
    weights = sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin"))
    for path in weights + sorted(model_dir.glob("vision/*.safetensors")):
        digest.update(f"{path.relative_to(model_dir).as_posix()}:{path.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def _non_empty(params: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in params.items() if v}
