"""The `EmbeddingBackend` on Triton: one request per input to the `embeddings` model, all in flight
together, so Triton's dynamic batcher packs them (and other clients' inputs) into shared
forward passes; each goes through the upstream pool (balancing, retries, circuit breakers)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from tritonclient.grpc import service_pb2

from gateway.errors import InvalidRequest, UpstreamError
from gateway.triton.pool import TritonPool

ROUTE = "embeddings"
_BATCH_OF_ONE = (1, 1)
# The model's INVALID_ARG messages about an input (a token outside the vocabulary, too long).
_INPUT_FAULTS = ("outside the vocabulary", "tokens, more than", "is empty")

EmbeddingInput = str | list[int]


@dataclass(frozen=True, slots=True)
class EmbeddingOutput:
    """One input's embedding as the model's little-endian float32 bytes, and its tokens."""

    vector: bytes
    num_tokens: int


class TritonEmbeddings:
    """Embeds inputs with the `embeddings` model through `pool`."""

    def __init__(self, pool: TritonPool, route: str = ROUTE) -> None:
        self.pool = pool
        self.route = route

    async def embed(
        self, inputs: Sequence[EmbeddingInput], names: Sequence[str], *, request_id: str
    ) -> list[EmbeddingOutput]:
        calls = [
            self._one(build_request(self.route, item, f"{request_id}-{i}"), name)
            for i, (item, name) in enumerate(zip(inputs, names, strict=True))
        ]
        return list(await asyncio.gather(*calls))

    async def _one(self, infer: service_pb2.ModelInferRequest, name: str) -> EmbeddingOutput:
        try:
            async for output in self.pool.stream(infer, parse=parse):
                return output
        except UpstreamError as exc:
            if any(fault in exc.message for fault in _INPUT_FAULTS):
                detail = exc.message.removeprefix("Triton failed the request: ")
                raise InvalidRequest(f"'{name}': {detail}", param=name) from None
            raise
        raise UpstreamError(f"Triton's '{self.route}' model answered nothing.")


def build_request(
    route: str, item: EmbeddingInput, request_id: str
) -> service_pb2.ModelInferRequest:
    """One input as the model's tensors: `text_input`, or `input_ids` with `input_lengths`."""
    infer = service_pb2.ModelInferRequest(model_name=route, id=request_id)
    if isinstance(item, str):
        encoded = item.encode()
        infer.inputs.add(name="text_input", datatype="BYTES", shape=_BATCH_OF_ONE)
        infer.raw_input_contents.append(struct.pack("<I", len(encoded)) + encoded)
    else:
        try:
            ids = struct.pack(f"<{len(item)}i", *item)
        except struct.error:
            raise InvalidRequest("a token id is out of range.", param="input") from None
        infer.inputs.add(name="input_ids", datatype="INT32", shape=(1, len(item)))
        infer.raw_input_contents.append(ids)
        infer.inputs.add(name="input_lengths", datatype="INT32", shape=_BATCH_OF_ONE)
        infer.raw_input_contents.append(struct.pack("<i", len(item)))
    return infer


def parse(response: service_pb2.ModelInferResponse) -> tuple[EmbeddingOutput, bool]:
    """The model's one response: the float32 bytes as they came, and the token count."""
    raw = {o.name: c for o, c in zip(response.outputs, response.raw_output_contents, strict=False)}
    tokens = raw.get("num_input_tokens") or b"\0\0\0\0"
    return EmbeddingOutput(raw.get("embedding", b""), struct.unpack_from("<i", tokens)[0]), True
