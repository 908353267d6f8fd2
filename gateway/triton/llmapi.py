"""The `llmapi` route protocol: NVIDIA's LLM-API Triton model (`triton_backend/all_models/llmapi`).

Its tensors differ from the `trtllm` routes' (`adapter.py`): `text_input` and `streaming`, the
sampling settings as `sampling_param_*`, no batch dimension (`max_batch_size: 0`), the prompt
echoed unless `sampling_param_exclude_input_from_output`, and each streamed response carrying
the text generated so far, not since the last one. `parse` reads one response as it comes;
`deltas` turns a request's stream of them into the gateway's deltas, cumulative or not (a
future release may send deltas: the first responses tell which). `finish_reason` is a string
that reads "None" until the end, and the perf outputs arrive as strings too.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import AsyncGenerator, AsyncIterator
from collections.abc import Set as AbstractSet
from contextlib import aclosing

from tritonclient.grpc import service_pb2

from gateway.core.backend import Delta, GenerationRequest
from gateway.errors import InvalidRequest

_UINT64 = 1 << 64
_SCALAR = (1,)
_PACK = {
    "BOOL": struct.Struct("<?").pack,
    "INT32": struct.Struct("<i").pack,
    "UINT64": struct.Struct("<Q").pack,
    "FP32": struct.Struct("<f").pack,
}
# What the llmapi model says instead of a finish reason before the end (`str(None)`).
_NO_REASON = {"", "None", "none", "null"}
# The LLM API's reasons as OpenAI's; "cancelled" stays (the gateway treats it as a failure).
_REASONS = {"stop": "stop", "length": "length", "timeout": "length", "cancelled": "cancelled"}
# Perf outputs (`sampling_param_return_perf_metrics`): declared numeric, sent as strings.
PERF_OUTPUTS = (
    "kv_cache_reused_block",
    "kv_cache_missed_block",
    "kv_cache_alloc_new_blocks",
    "kv_cache_alloc_total_blocks",
    "kv_cache_hit_rate",
    "arrival_time_ns",
    "first_scheduled_time_ns",
    "first_token_time_ns",
    "last_token_time_ns",
    "acceptance_rate",
    "total_accepted_draft_tokens",
    "total_draft_tokens",
)
SIGNATURE = "sampling_param_temperature"
"""An input only llmapi routes declare: how discovery tells the protocol from a config."""


def speaks_llmapi(inputs: AbstractSet[str]) -> bool:
    """Whether a route declaring `inputs` is an llmapi model (else a `trtllm` one)."""
    return SIGNATURE in inputs and "max_tokens" not in inputs


def build_request(
    route: str, request: GenerationRequest, accepts: AbstractSet[str] | None = None
) -> service_pb2.ModelInferRequest:
    """The Triton request for one generation on an llmapi route that declares `accepts`.

    Always streamed (the responses are what counts output tokens: see `deltas`); a sampling
    setting the route has no tensor for is a 400 rather than silently ignored.
    """
    p = request.params
    seed = None if p.seed is None else p.seed % _UINT64
    # (tensor, value or None for "not requested", dtype, OpenAI parameter, neutral value)
    optional: list[tuple[str, object, str, str | None, object]] = [
        ("sampling_param_temperature", p.temperature, "FP32", "temperature", 1.0),
        ("sampling_param_top_p", p.top_p, "FP32", "top_p", 1.0),
        ("sampling_param_top_k", p.top_k, "INT32", "top_k", None),
        ("sampling_param_seed", seed, "UINT64", "seed", None),
        ("sampling_param_presence_penalty", p.presence_penalty or None, "FP32",
         "presence_penalty", None),
        ("sampling_param_frequency_penalty", p.frequency_penalty or None, "FP32",
         "frequency_penalty", None),
        ("sampling_param_stop", p.stop or None, "BYTES", "stop", None),
    ]  # fmt: skip
    unsupported = [
        ("repetition_penalty", p.repetition_penalty is not None),
        ("min_tokens", p.min_tokens is not None),
        ("ignore_eos", p.ignore_eos),
        ("logprobs", p.logprobs),
    ]
    for param, requested in unsupported:
        if requested:
            raise InvalidRequest(f"'{param}' is not supported by this model.", param=param)
    infer = service_pb2.ModelInferRequest(model_name=route, id=request.request_id)
    _add_bytes(infer, "text_input", (request.prompt,))
    _add(infer, "streaming", "BOOL", True)
    _add(infer, "sampling_param_max_tokens", "INT32", p.max_tokens)
    _add(infer, "sampling_param_exclude_input_from_output", "BOOL", True)
    _add(infer, "return_finish_reason", "BOOL", True)
    for name, value, dtype, param, neutral in optional:
        if value is None or value == neutral:
            continue
        if accepts is not None and name not in accepts:
            raise InvalidRequest(f"'{param}' is not supported by this model.", param=param)
        if dtype == "BYTES":
            _add_bytes(infer, name, value)  # type: ignore[arg-type]
        else:
            try:
                _add(infer, name, dtype, value)
            except (struct.error, OverflowError) as exc:
                raise InvalidRequest(f"'{param}' is out of range.", param=param) from exc
    images = tuple(getattr(request, "images", None) or ())
    if images:
        if accepts is not None and "image_url" not in accepts:
            raise InvalidRequest("This model does not accept images.", param="messages")
        _add_bytes(infer, "image_url", images)
    return infer


def build_stop(route: str, request_id: str) -> service_pb2.ModelInferRequest:
    """End an in-flight request: `stop=true` with its id (the llmapi model aborts it)."""
    infer = service_pb2.ModelInferRequest(model_name=route, id=request_id)
    _add_bytes(infer, "text_input", ("",))
    _add(infer, "stop", "BOOL", True)
    return infer


def parse(response: service_pb2.ModelInferResponse) -> tuple[Delta, bool]:
    """One response as a `Delta` whose text is the response's own (cumulative: see `deltas`),
    and whether it is the request's last."""
    raw = _raw(response)
    final_flag = response.parameters.get("triton_final_response")
    final = bool(final_flag and final_flag.bool_param)
    reason = _string(raw.get("finish_reason"))
    finish_reason = None if reason in _NO_REASON else _REASONS.get(reason, "stop")
    if final and finish_reason is None:
        finish_reason = "stop"
    return Delta(text=_string(raw.get("text_output")), finish_reason=finish_reason), final


def perf_metrics(response: service_pb2.ModelInferResponse) -> dict[str, float]:
    """The perf outputs a response carries, as numbers, whatever type they arrived as (NVIDIA's
    model sends strings for tensors declared INT64/FP32); unreadable ones are left out."""
    raw = _raw(response)
    types = {o.name: o.datatype for o in response.outputs}
    metrics: dict[str, float] = {}
    for name in PERF_OUTPUTS:
        if name not in raw:
            continue
        value = _number(raw[name], types.get(name, "BYTES"))
        if value is not None:
            metrics[name] = value
    return metrics


async def deltas(stream: AsyncIterator[Delta]) -> AsyncGenerator[Delta, None]:
    """The gateway's deltas from an llmapi stream: new text only, and the output tokens so far.

    The llmapi model reports no token counts. It streams one response per generation step, so
    the steps that added text are counted: the end token's step adds none (as the trtllm routes
    leave the end token out), and neither does a token that ends mid-character, which makes the
    count a slight undercount for text of multi-byte characters.

    Cumulative text is what 1.2 sends; should a release send deltas, the second response with
    text tells: cumulative text starts with everything sent before it.
    """
    sent = ""
    cumulative: bool | None = None
    steps = 0
    async with aclosing(stream):  # type: ignore[type-var]
        async for delta in stream:
            text = delta.text
            if text and sent and cumulative is None:
                cumulative = text.startswith(sent)
            if cumulative is False:
                new, sent = text, sent + text
            else:
                # A text that lost its tail (never seen) must not take back what was sent.
                new = text[len(sent) :]
                sent = text if len(text) > len(sent) else sent
            steps += bool(new)
            yield dataclasses.replace(delta, text=new, num_output_tokens=steps)


def _add(infer: service_pb2.ModelInferRequest, name: str, dtype: str, value: object) -> None:
    packed = _PACK[dtype](value)
    infer.inputs.add(name=name, datatype=dtype, shape=_SCALAR)
    infer.raw_input_contents.append(packed)


def _add_bytes(infer: service_pb2.ModelInferRequest, name: str, items: tuple[str, ...]) -> None:
    infer.inputs.add(name=name, datatype="BYTES", shape=(len(items),))
    encoded = [item.encode() for item in items]
    infer.raw_input_contents.append(b"".join(struct.pack("<I", len(e)) + e for e in encoded))


def _raw(response: service_pb2.ModelInferResponse) -> dict[str, bytes]:
    return {o.name: c for o, c in zip(response.outputs, response.raw_output_contents, strict=False)}


def _string(raw: bytes | None) -> str:
    if not raw or len(raw) < 4:
        return ""
    (length,) = struct.unpack_from("<I", raw)
    return raw[4 : 4 + length].decode("utf-8", errors="replace")


_NUMERIC = {"INT32": "<i", "INT64": "<q", "FP32": "<f", "FP64": "<d", "UINT64": "<Q"}


def _number(raw: bytes, datatype: str) -> float | None:
    if datatype == "BYTES":
        try:
            return float(_string(raw))
        except ValueError:
            return None
    fmt = _NUMERIC.get(datatype)
    if fmt is None or len(raw) < struct.calcsize(fmt):
        return None
    return float(struct.unpack_from(fmt, raw)[0])
