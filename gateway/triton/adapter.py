"""The `trtllm` route protocol: a `GenerationRequest` as `tensorrt_llm_bls`/`ensemble` tensors, and
each streamed response as a `Delta`.

Tensor names and types are those of NVIDIA's TensorRT-LLM backend (`inflight_batcher_llm`, and
`multimodal` for `image_url_input`). Every input has a leading batch dimension of 1 because the
routes are batched (`max_batch_size` > 0).
Responses are read straight from the protobuf's raw contents: this runs once per generated token,
and going through numpy object arrays would cost more than everything else on that path.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from tritonclient.grpc import service_pb2

from gateway.core.backend import Delta, GenerationRequest
from gateway.errors import InvalidRequest

_UINT64 = 1 << 64

# Each input as Triton's raw little-endian contents, packed without numpy: building numpy arrays
# and `InferInput`s cost more per request than the whole rest of the adapter.
_PACK = {
    "BOOL": struct.Struct("<?").pack,
    "INT32": struct.Struct("<i").pack,
    "UINT64": struct.Struct("<Q").pack,
    "FP32": struct.Struct("<f").pack,
}
_BATCH_OF_ONE = (1, 1)


def build_request(
    route: str, request: GenerationRequest, accepts: AbstractSet[str] | None = None
) -> service_pb2.ModelInferRequest:
    """The Triton request for one streamed generation on a route that declares `accepts`.

    Tensors the gateway adds for itself are left out where the route does not declare them;
    a sampling setting the route cannot take is a 400 rather than silently ignored.
    """
    p = request.params
    seed = None if p.seed is None else p.seed % _UINT64
    guided = accepts is None or "guided_decoding_guide" in accepts or not p.guide_optional
    guide_type, guide = (p.guide_type, p.guide) if guided else (None, None)
    # (tensor, value or None for "not requested", Triton dtype, OpenAI parameter, neutral value)
    optional: list[tuple[str, object, str, str | None, object]] = [
        ("stream", request.stream or None, "BOOL", None, None),
        ("exclude_input_in_output", True, "BOOL", None, None),
        ("return_num_input_tokens", True, "BOOL", None, None),
        ("return_num_output_tokens", True, "BOOL", None, None),
        ("temperature", p.temperature, "FP32", "temperature", 1.0),
        ("top_p", p.top_p, "FP32", "top_p", 1.0),
        ("top_k", p.top_k, "INT32", "top_k", None),
        ("seed", seed, "UINT64", "seed", None),
        ("presence_penalty", p.presence_penalty or None, "FP32", "presence_penalty", None),
        ("frequency_penalty", p.frequency_penalty or None, "FP32", "frequency_penalty", None),
        ("repetition_penalty", p.repetition_penalty, "FP32", "repetition_penalty", None),
        ("min_tokens", p.min_tokens, "INT32", "min_tokens", None),
        ("ignore_eos", p.ignore_eos or None, "BOOL", "ignore_eos", None),
        ("stop_words", p.stop or None, "BYTES", "stop", None),
        ("return_log_probs", p.logprobs or None, "BOOL", "logprobs", None),
        ("num_logprobs", p.top_logprobs or None, "INT32", "top_logprobs", None),
        ("guided_decoding_guide_type", _one(guide_type), "BYTES", p.guide_param, None),
        ("guided_decoding_guide", _one(guide), "BYTES", p.guide_param, None),
    ]
    infer = service_pb2.ModelInferRequest(model_name=route, id=request.request_id)
    inputs, contents = infer.inputs, infer.raw_input_contents
    inputs.add(name="text_input", datatype="BYTES", shape=_BATCH_OF_ONE)
    contents.append(_bytes((request.prompt,)))
    inputs.add(name="max_tokens", datatype="INT32", shape=_BATCH_OF_ONE)
    contents.append(_PACK["INT32"](p.max_tokens))
    if request.images:
        if accepts is not None and "image_url_input" not in accepts:
            raise InvalidRequest(f"Model route '{route}' does not take images.", param="messages")
        # NVIDIA's multimodal input: one `data:` URL per image, in placeholder order.
        inputs.add(name="image_url_input", datatype="BYTES", shape=(1, len(request.images)))
        contents.append(_bytes(request.images))
    for name, value, dtype, param, neutral in optional:
        # A neutral value is the routes' own default: not sending it saves the route's work.
        if value is None or value == neutral:
            continue
        if accepts is not None and name not in accepts:
            if param is None:
                continue
            raise InvalidRequest(f"'{param}' is not supported by this model.", param=param)
        if dtype == "BYTES":
            words: tuple[str, ...] = value  # type: ignore[assignment]
            inputs.add(name=name, datatype=dtype, shape=(1, len(words)))
            contents.append(_bytes(words))
        else:
            try:
                packed = _PACK[dtype](value)
            except (struct.error, OverflowError) as exc:
                # Validation bounds these; this keeps any value it missed a 400, not a 500.
                raise InvalidRequest(f"'{param or name}' is out of range.", param=param) from exc
            inputs.add(name=name, datatype=dtype, shape=_BATCH_OF_ONE)
            contents.append(packed)
    return infer


def build_stop(route: str, request_id: str) -> service_pb2.ModelInferRequest:
    """TensorRT-LLM's way to end an in-flight request: `stop=true` with the request's id."""
    infer = service_pb2.ModelInferRequest(model_name=route, id=request_id)
    infer.inputs.add(name="text_input", datatype="BYTES", shape=_BATCH_OF_ONE)
    infer.raw_input_contents.append(_bytes(("",)))
    infer.inputs.add(name="max_tokens", datatype="INT32", shape=_BATCH_OF_ONE)
    infer.raw_input_contents.append(_PACK["INT32"](1))
    infer.inputs.add(name="stop", datatype="BOOL", shape=_BATCH_OF_ONE)
    infer.raw_input_contents.append(_PACK["BOOL"](True))
    return infer


def parse(response: service_pb2.ModelInferResponse) -> tuple[Delta, bool]:
    """One streamed response as a `Delta`, and whether it is the request's last."""
    outputs = response.outputs
    raw = {o.name: c for o, c in zip(outputs, response.raw_output_contents, strict=False)}
    final_flag = response.parameters.get("triton_final_response")
    final = bool(final_flag and final_flag.bool_param)
    # The last delta always names a reason, even from a route that only flags the end.
    finish_reason = _string(raw.get("finish_reason")) or ("stop" if final else None)
    delta = Delta(
        text=_string(raw.get("text_output")),
        finish_reason=finish_reason,
        num_input_tokens=_int32(raw.get("num_input_tokens")),
        num_output_tokens=_int32(raw.get("num_output_tokens")),
        logprobs=_float32s(raw.get("output_log_probs")),
    )
    if "top_token_ids" in raw:
        delta = _with_top_logprobs(delta, raw, outputs)
    return delta, finish_reason is not None


def _with_top_logprobs(delta: Delta, raw: dict[str, bytes], outputs: Sequence[Any]) -> Delta:
    # The BLS's [1, tokens, k] per response (tensorrt_llm's [1, beam, tokens, k] is not a route).
    shape = next(o.shape for o in outputs if o.name == "top_token_ids")
    k = int(shape[-1]) if shape else 0
    ids, lps = raw["top_token_ids"], raw.get("top_log_probs", b"")
    if not k or not ids:
        return delta
    flat_ids = struct.unpack(f"<{len(ids) // 4}i", ids)
    flat_lps = struct.unpack(f"<{len(lps) // 4}f", lps)
    rows = range(0, len(flat_ids), k)
    tokens = raw.get("output_token_ids")
    return dataclasses.replace(
        delta,
        token_ids=struct.unpack(f"<{len(tokens) // 4}i", tokens) if tokens else None,
        top_ids=tuple(flat_ids[i : i + k] for i in rows),
        top_logprobs=tuple(flat_lps[i : i + k] for i in rows),
    )


def _one(value: str | None) -> tuple[str, ...] | None:
    return (value,) if value else None


def _bytes(items: tuple[str, ...]) -> bytes:
    # BYTES tensors are serialised as <uint32 little-endian length><bytes> per element.
    encoded = [item.encode() for item in items]
    return b"".join(struct.pack("<I", len(e)) + e for e in encoded)


def _string(raw: bytes | None) -> str:
    # Ours hold one element.
    if not raw or len(raw) < 4:
        return ""
    (length,) = struct.unpack_from("<I", raw)
    return raw[4 : 4 + length].decode("utf-8", errors="replace")


def _int32(raw: bytes | None) -> int | None:
    if not raw or len(raw) < 4:
        return None
    return struct.unpack_from("<i", raw)[0]


def _float32s(raw: bytes | None) -> tuple[float, ...] | None:
    if not raw:
        return None
    return struct.unpack(f"<{len(raw) // 4}f", raw)
