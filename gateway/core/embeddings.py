"""`/v1/embeddings`: validation, the token budget, usage and the OpenAI response, no tensors.

Each input is embedded by the backend's `embeddings` model (one Triton request per input, which
Triton's dynamic batcher packs into shared forward passes). A model serves embeddings when its
repository has that model (`ServedModel.embeddings`, from discovery).
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Sequence
from typing import Protocol

from prometheus_client import Counter

from gateway.core import protocol
from gateway.core.catalogue import Catalogue, ServedModel
from gateway.core.context import CallContext
from gateway.core.metrics import PROMPT_TOKENS
from gateway.errors import ContextLengthExceeded, InvalidRequest, ModelNotFound

MAX_INPUTS = 256
"""Inputs per request (OpenAI takes 2048; each is a forward pass on a CPU here)."""

EmbeddingInput = str | list[int]
"""One input: a text, or its token ids."""

EMBEDDING_INPUTS = Counter(
    "localmoe_embedding_inputs_total", "Inputs embedded by answered /v1/embeddings requests",
    ["model"],
)  # fmt: skip


class EmbeddingOutput(Protocol):
    """One input's embedding as little-endian float32 bytes, and its token count."""

    @property
    def vector(self) -> bytes: ...

    @property
    def num_tokens(self) -> int: ...


class EmbeddingBackend(Protocol):
    """The port: embeds inputs with a model (`gateway.triton.embeddings`)."""

    async def embed(
        self, inputs: Sequence[EmbeddingInput], names: Sequence[str], *, request_id: str
    ) -> Sequence[EmbeddingOutput]:
        """Each input's embedding, in order; a bad input is an `InvalidRequest` naming it
        (`names[i]`: `input` or `input[i]`)."""
        ...


class EmbeddingService:
    """Answers embeddings requests for the catalogue's models through `backend`."""

    def __init__(self, catalogue: Catalogue, backend: EmbeddingBackend) -> None:
        self.catalogue = catalogue
        self.backend = backend
        # Learnt from the first answer: `dimensions` other than this is refused up front.
        self._sizes: dict[str, int] = {}

    async def embed(
        self, request: protocol.EmbeddingRequest, ctx: CallContext
    ) -> protocol.EmbeddingResponse:
        model = self._model(request.model, ctx)
        size = self._sizes.get(model.id)
        _check_dimensions(request.dimensions, size)
        inputs = inputs_of(request.input)
        names = input_names(request.input, len(inputs))
        prompt_tokens = await _count_tokens(model, inputs, names)
        if ctx.meter is not None and not ctx.meter.admits(prompt_tokens):
            await ctx.meter.check(prompt_tokens)
        outputs = await self.backend.embed(inputs, names, request_id=ctx.request_id)
        used = sum(o.num_tokens for o in outputs)
        if ctx.meter is not None and used:
            await ctx.meter.charge(used)
        size = self._sizes[model.id] = len(outputs[0].vector) // 4
        _check_dimensions(request.dimensions, size)
        PROMPT_TOKENS.labels(model.id).inc(used)
        EMBEDDING_INPUTS.labels(model.id).inc(len(outputs))
        return protocol.EmbeddingResponse(
            data=[
                protocol.Embedding(index=i, embedding=encode(o.vector, request.encoding_format))
                for i, o in enumerate(outputs)
            ],
            model=model.id,
            usage=protocol.EmbeddingUsage(prompt_tokens=used, total_tokens=used),
        )

    def _model(self, model_id: str, ctx: CallContext) -> ServedModel:
        if ctx.allows_model is not None and not ctx.allows_model(model_id):
            raise ModelNotFound(model_id)
        model = self.catalogue.get(model_id)
        if not model.embeddings:
            raise InvalidRequest(f"model '{model_id}' does not support embeddings", param="model")
        return model


def inputs_of(given: protocol.EmbeddingInput) -> list[EmbeddingInput]:
    """The request's inputs as texts or token-id lists, each checked; 400s name the input."""
    if isinstance(given, str):
        inputs: list[EmbeddingInput] = [given]
    elif given and all(isinstance(t, int) for t in given):
        inputs = [list(given)]  # type: ignore[arg-type]
    else:
        inputs = list(given)  # type: ignore[arg-type]
    if not inputs:
        raise InvalidRequest("'input' must not be empty.", param="input")
    if len(inputs) > MAX_INPUTS:
        raise InvalidRequest(
            f"'input' holds {len(inputs)} inputs; at most {MAX_INPUTS} are allowed.", param="input"
        )
    for item, name in zip(inputs, input_names(given, len(inputs)), strict=True):
        if not item:
            raise InvalidRequest(f"'{name}' is empty.", param=name)
        if isinstance(item, list) and any(t < 0 for t in item):
            raise InvalidRequest(f"'{name}' holds a negative token id.", param=name)
    return inputs


def input_names(given: protocol.EmbeddingInput, count: int) -> list[str]:
    """What a 400 calls each input: `input` for a lone text or id list, else `input[i]`."""
    if isinstance(given, str) or (given and isinstance(given[0], int)):
        return ["input"]
    return [f"input[{i}]" for i in range(count)]


def encode(vector: bytes, encoding_format: str) -> list[float] | str:
    """OpenAI's `embedding` field: floats, or the float32 bytes in base64 (little-endian)."""
    if encoding_format == "base64":
        return base64.b64encode(vector).decode("ascii")
    return list(struct.unpack(f"<{len(vector) // 4}f", vector))


async def _count_tokens(
    model: ServedModel, inputs: Sequence[EmbeddingInput], names: Sequence[str]
) -> int:
    limit = model.context_length
    total = 0
    for i, (item, name) in enumerate(zip(inputs, names, strict=True)):
        if isinstance(item, str):
            if model.tokenizer.floor(item) > limit:
                n = model.tokenizer.floor(item)
            else:
                n = await model.tokenizer.count_async(item, add_special_tokens=False)
        else:
            n = len(item)
        if n > limit:
            raise ContextLengthExceeded(
                f"'{name}' has {n} tokens; this model takes at most {limit} per input.",
                param=name,
            )
        total += n
        if i % 64 == 63:
            await asyncio.sleep(0)  # many inputs: let other requests run between them
    return total


def _check_dimensions(dimensions: int | None, size: int | None) -> None:
    # The model was not trained for truncated (Matryoshka) embeddings: only its own size.
    if dimensions is None:
        return
    if dimensions < 1 or (size is not None and dimensions != size):
        allowed = f"only {size}" if size is not None else "its hidden size only"
        raise InvalidRequest(
            f"'dimensions' {dimensions} is not supported by this model ({allowed}).",
            param="dimensions",
        )
