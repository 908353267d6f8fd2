"""The `trtllm` route protocol: a `GenerationRequest` as `tensorrt_llm_bls`/`ensemble` tensors, and
each streamed response as a `Delta`.

Tensor names and types are those of NVIDIA's TensorRT-LLM backend (`inflight_batcher_llm`). Every
input has a leading batch dimension of 1 because the routes are batched (`max_batch_size` > 0).
Responses are read straight from the protobuf's raw contents: this runs once per generated token,
and going through numpy object arrays would cost more than everything else on that path.
"""

from __future__ import annotations

import struct
from collections.abc import Set as AbstractSet

import numpy as np
from tritonclient.grpc import InferInput, InferResult
from tritonclient.utils import np_to_triton_dtype

from gateway.errors import InvalidRequest
from gateway.generation import Delta, GenerationRequest

_UINT64 = 1 << 64


def build_inputs(
    request: GenerationRequest, accepts: AbstractSet[str] | None = None
) -> list[InferInput]:
    """The input tensors for one streamed generation on a route that declares `accepts`.

    Tensors the gateway adds for itself are left out where the route does not declare them;
    a sampling setting the route cannot take is a 400 rather than silently ignored.
    """
    p = request.params
    stop = np.array([[s.encode() for s in p.stop]], dtype=np.object_) if p.stop else None
    seed = None if p.seed is None else p.seed % _UINT64
    # (tensor, value or None for "not requested", dtype, OpenAI parameter, neutral value)
    optional: list[tuple[str, object, type, str | None, object]] = [
        ("stream", True, np.bool_, None, None),
        ("exclude_input_in_output", True, np.bool_, None, None),
        ("return_num_input_tokens", True, np.bool_, None, None),
        ("return_num_output_tokens", True, np.bool_, None, None),
        ("temperature", p.temperature, np.float32, "temperature", 1.0),
        ("top_p", p.top_p, np.float32, "top_p", 1.0),
        ("top_k", p.top_k, np.int32, "top_k", None),
        ("seed", seed, np.uint64, "seed", None),
        ("presence_penalty", p.presence_penalty or None, np.float32, "presence_penalty", None),
        ("frequency_penalty", p.frequency_penalty or None, np.float32, "frequency_penalty", None),
        ("repetition_penalty", p.repetition_penalty, np.float32, "repetition_penalty", None),
        ("min_tokens", p.min_tokens, np.int32, "min_tokens", None),
        ("ignore_eos", p.ignore_eos or None, np.bool_, "ignore_eos", None),
        ("stop_words", stop, np.object_, "stop", None),
        ("return_log_probs", p.logprobs or None, np.bool_, "logprobs", None),
    ]
    inputs = [
        _tensor("text_input", np.array([[request.prompt.encode()]], dtype=np.object_)),
        _scalar("max_tokens", p.max_tokens, np.int32),
    ]
    for name, value, dtype, param, neutral in optional:
        if value is None:
            continue
        if accepts is not None and name not in accepts:
            if param is None or value == neutral:
                continue
            raise InvalidRequest(f"'{param}' is not supported by this model.", param=param)
        if isinstance(value, np.ndarray):
            inputs.append(_tensor(name, value))
        else:
            inputs.append(_scalar(name, value, dtype))
    return inputs


def parse(result: InferResult) -> tuple[Delta, bool]:
    """One streamed response as a `Delta`, and whether it is the request's last."""
    response = result.get_response()
    raw = {o.name: c for o, c in zip(response.outputs, response.raw_output_contents, strict=False)}
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
    return delta, finish_reason is not None


def _tensor(name: str, array: np.ndarray) -> InferInput:
    tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def _scalar(name: str, value: object, dtype: type) -> InferInput:
    return _tensor(name, np.array([[value]], dtype=dtype))


def _string(raw: bytes | None) -> str:
    # BYTES tensors are serialised as <uint32 little-endian length><bytes>; ours hold one element.
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
