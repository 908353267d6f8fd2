"""What the OpenAI layer asks of an inference backend, and what streams back: no HTTP, no tensors.

`gateway.core` fills a `GenerationRequest` from a validated OpenAI request; a backend
(`gateway.triton.backend`) turns it into a route's tensors and yields `Delta`s until one carries a
`finish_reason`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """Engine-neutral sampling settings; defaults mean "not requested"."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    """Alternatives per token, best first (TensorRT-LLM's `num_logprobs`)."""
    guide_type: str | None = None
    """TensorRT-LLM's guided-decoding type: `json`, `json_schema`, `regex`, `ebnf_grammar`,
    `structural_tag`."""
    guide: str | None = None
    """The schema (JSON text), regex or grammar of `guide_type`."""
    guide_param: str = "response_format"
    """The OpenAI parameter the guide came from, named when the route cannot take it."""
    guide_optional: bool = False
    """The guide only helps (auto tool calls): a route without guided decoding goes without."""


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One prompt, one sample."""

    prompt: str
    params: SamplingOptions
    request_id: str = ""
    stream: bool = True
    """Deltas as they are generated; else one delta with the whole text (fewer responses)."""
    affinity: str | None = None
    """Session or user: the backend keeps a conversation on one replica (else the prompt's
    beginning does)."""
    images: tuple[str, ...] = ()
    """The prompt's images in placeholder order, as `data:image/...;base64,` URLs of checked
    bytes (http images already fetched by the gateway)."""


@dataclass(frozen=True, slots=True)
class Delta:
    """The text generated since the previous delta; the last one has a `finish_reason`."""

    text: str
    finish_reason: str | None = None
    num_input_tokens: int | None = None
    num_output_tokens: int | None = None
    logprobs: tuple[float, ...] | None = None
    token_ids: tuple[int, ...] | None = None
    """The tokens behind `text` (routes that report them with top logprobs)."""
    top_ids: tuple[tuple[int, ...], ...] | None = None
    """Per token, the `top_logprobs` most likely token ids, best first."""
    top_logprobs: tuple[tuple[float, ...], ...] | None = None
    """Their logprobs, matching `top_ids`."""


class Backend(Protocol):
    """Runs generations on some route (a Triton model) and streams their deltas."""

    def generate(self, route: str, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        """Stream deltas for `request` on `route`; cancelling the iteration cancels the request."""
        ...

    def ready(self) -> bool:
        """True when at least one upstream can take requests now."""
        ...
