"""The `Backend` that runs generations on Triton: a route's adapter on top of the upstream pool."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator
from contextlib import aclosing
from functools import partial
from typing import Any

import grpc
from tritonclient.utils import InferenceServerException

from gateway.core.backend import Delta, GenerationRequest
from gateway.errors import InvalidRequest, UpstreamError, UpstreamUnavailable
from gateway.triton import adapter, llmapi
from gateway.triton.discovery import RouteTensors, route_tensors
from gateway.triton.pool import TritonPool

# Routes with a `finish_reason` output (LocalMoE's text routes: `tensorrt_llm_bls`) always leave
# the prompt out of their text and report token counts, so these switches, which NVIDIA's routes
# need, change nothing there; each input tensor costs Triton work on every request.
_INVALID_GUIDE = "invalid guide:"
_SCHEMA_PARAM = "response_format.json_schema.schema"  # gateway.core.structured's, a layer up
_NO_OP_SWITCHES = frozenset(
    {"exclude_input_in_output", "return_num_input_tokens", "return_num_output_tokens"}
)


class TritonBackend:
    """Streams generations through a `TritonPool` on `trtllm`-protocol routes
    (`tensorrt_llm_bls`, `ensemble`) and on NVIDIA's LLM-API model (`llmapi`), told apart by the
    tensors a route declares."""

    def __init__(self, pool: TritonPool):
        self.pool = pool
        # Each route's declared tensors, learnt on its first request: Triton rejects inputs a
        # model does not declare, and the outputs tell a BLS-style route from NVIDIA's ensemble.
        self._routes: dict[str, RouteTensors] = {}

    def ready(self) -> bool:
        """True when at least one upstream is ready."""
        return self.pool.ready()

    def generate(self, route: str, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        """Stream `request` on the Triton model `route`; closing the iterator cancels it."""
        tensors = self._routes.get(route)
        if tensors is None:
            return self._generate_first(route, request)
        return self._stream(route, request, tensors)

    def _stream(
        self, route: str, request: GenerationRequest, tensors: RouteTensors
    ) -> AsyncGenerator[Delta, None]:
        key = request.affinity or request.prompt[: self.pool.settings.affinity_prefix_chars]
        p = request.params
        if llmapi.speaks_llmapi(tensors.inputs):
            if p.guide_type and not p.guide_optional:  # no guided-decoding tensors there
                raise InvalidRequest(
                    f"'{p.guide_param}' is not supported by this model (no guided decoding).",
                    param=p.guide_param,
                )
            # NVIDIA's LLM-API model: its own tensors, cumulative text; it takes `stop` by id.
            infer = llmapi.build_request(route, request, tensors.inputs)
            stop = partial(llmapi.build_stop, route)
            return llmapi.deltas(
                self.pool.stream(infer, parse=llmapi.parse, stop=stop, affinity_key=key)
            )
        infer = adapter.build_request(route, request, tensors.inputs)
        # Routes that take `stop` share streams and are stopped by id; others get their own RPC.
        stop = partial(adapter.build_stop, route) if "stop" in tensors.inputs else None
        stream = self.pool.stream(infer, parse=adapter.parse, stop=stop, affinity_key=key)
        if p.guide_type:
            stream = _guide_errors(stream, p.guide_param)
        if "finish_reason" in tensors.outputs:
            return stream
        return _ensemble_semantics(stream, request.params.max_tokens)

    async def route_inputs(self, route: str) -> frozenset[str] | None:
        """The input tensors `route` declares (what it can be asked for); None when no
        upstream can say now."""
        tensors = self._routes.get(route)
        if tensors is None:
            try:
                tensors = await self._learn(route)
            except UpstreamUnavailable:
                return None
        return tensors.inputs

    async def _generate_first(
        self, route: str, request: GenerationRequest
    ) -> AsyncGenerator[Delta, None]:
        tensors = await self._learn(route)
        async with aclosing(self._stream(route, request, tensors)) as stream:
            async for delta in stream:
                yield delta

    async def _learn(self, route: str) -> RouteTensors:
        tensors = await _first_answer(self.pool.ready_clients(), route)
        if "finish_reason" in tensors.outputs:
            tensors = RouteTensors(tensors.inputs - _NO_OP_SWITCHES, tensors.outputs)
        self._routes[route] = tensors
        return tensors


async def _guide_errors(
    stream: AsyncGenerator[Delta, None], param: str
) -> AsyncGenerator[Delta, None]:
    # The engine compiles the guide when the request arrives: one it cannot take is the
    # client's 400 (the gateway's own schema check leaves few), not an upstream failure.
    async with aclosing(stream):
        try:
            async for delta in stream:
                yield delta
        except UpstreamError as exc:
            if _INVALID_GUIDE not in str(exc):
                raise
            message = str(exc)[str(exc).index(_INVALID_GUIDE) :]
            param = _SCHEMA_PARAM if param == "response_format" else param
            raise InvalidRequest(f"The engine refused the schema: {message}", param=param) from None


async def _first_answer(clients: list[Any], route: str) -> RouteTensors:
    """The route's tensors from the first ready upstream that answers (one may have just died)."""
    error: Exception | None = None
    for client in clients:
        try:
            return await route_tensors(client, route)
        except (InferenceServerException, grpc.RpcError, OSError) as exc:
            error = exc
    raise UpstreamUnavailable(f"Model route '{route}' is not available: {error}")


async def _ensemble_semantics(
    stream: AsyncGenerator[Delta, None], max_tokens: int
) -> AsyncGenerator[Delta, None]:
    # NVIDIA's ensemble reports each response's own token count and no finish reason: make the
    # count cumulative, like the BLS's, and call a generation that used its whole budget "length".
    total = 0
    async with aclosing(stream):
        async for delta in stream:
            total += delta.num_output_tokens or 0
            reason = delta.finish_reason
            if reason == "stop" and total >= max_tokens:
                reason = "length"
            yield dataclasses.replace(delta, num_output_tokens=total, finish_reason=reason)
