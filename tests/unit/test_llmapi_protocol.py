"""The `llmapi` route protocol (gateway/triton/llmapi.py): NVIDIA's LLM-API model's tensors out,
its responses (cumulative text, "None" finish reasons, perf metrics as strings) back as deltas."""

from __future__ import annotations

import asyncio
import dataclasses
import struct

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from gateway.core.backend import Delta, GenerationRequest, SamplingOptions
from gateway.errors import InvalidRequest
from gateway.triton import llmapi

# The inputs NVIDIA's llmapi config.pbtxt declares.
ACCEPTS = frozenset(
    {
        "text_input", "image_url", "streaming", "sampling_param_best_of",
        "sampling_param_temperature", "sampling_param_top_k", "sampling_param_top_p",
        "sampling_param_frequency_penalty", "sampling_param_presence_penalty",
        "sampling_param_max_tokens", "sampling_param_stop", "sampling_param_seed",
        "sampling_param_exclude_input_from_output", "sampling_param_return_perf_metrics",
        "return_finish_reason", "return_stop_reason", "return_cumulative_logprob", "stop",
    }
)  # fmt: skip


def _inputs(infer: service_pb2.ModelInferRequest) -> dict[str, tuple[str, list, object]]:
    out = {}
    for tensor, raw in zip(infer.inputs, infer.raw_input_contents, strict=True):
        if tensor.datatype == "BYTES":
            items, offset = [], 0
            while offset < len(raw):
                (n,) = struct.unpack_from("<I", raw, offset)
                items.append(raw[offset + 4 : offset + 4 + n].decode())
                offset += 4 + n
            value: object = items
        else:
            dtype = {"BOOL": np.bool_, "INT32": np.int32, "UINT64": np.uint64, "FP32": np.float32}
            value = np.frombuffer(raw, dtype=dtype[tensor.datatype]).tolist()
        out[tensor.name] = (tensor.datatype, list(tensor.shape), value)
    return out


def _request(**params: object) -> GenerationRequest:
    return GenerationRequest(
        prompt="Hello", params=SamplingOptions(max_tokens=16, **params), request_id="r1"
    )


def _response(*, final: bool = False, **outputs: object) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(model_name="tensorrt_llm", id="r1")
    for name, value in outputs.items():
        if isinstance(value, str):
            encoded = value.encode()
            response.outputs.add(name=name, datatype="BYTES", shape=(1,))
            response.raw_output_contents.append(struct.pack("<I", len(encoded)) + encoded)
        else:
            dtype, packed = value  # type: ignore[misc]
            response.outputs.add(name=name, datatype=dtype, shape=(1,))
            response.raw_output_contents.append(packed)
    if final:
        response.parameters["triton_final_response"].bool_param = True
    return response


def test_the_request_streams_leaves_the_prompt_out_and_asks_for_the_finish_reason() -> None:
    tensors = _inputs(llmapi.build_request("tensorrt_llm", _request(), ACCEPTS))
    assert tensors["text_input"] == ("BYTES", [1], ["Hello"])
    assert tensors["streaming"] == ("BOOL", [1], [True])
    assert tensors["sampling_param_max_tokens"] == ("INT32", [1], [16])
    assert tensors["sampling_param_exclude_input_from_output"] == ("BOOL", [1], [True])
    assert tensors["return_finish_reason"] == ("BOOL", [1], [True])
    assert set(tensors) <= ACCEPTS


def test_sampling_settings_go_as_sampling_param_tensors_and_neutral_ones_stay_home() -> None:
    request = _request(temperature=0.5, top_p=1.0, top_k=4, seed=-1, stop=("\n", "END"))
    tensors = _inputs(llmapi.build_request("tensorrt_llm", request, ACCEPTS))
    assert tensors["sampling_param_temperature"][2] == [0.5]
    assert "sampling_param_top_p" not in tensors
    assert tensors["sampling_param_top_k"] == ("INT32", [1], [4])
    assert tensors["sampling_param_seed"] == ("UINT64", [1], [2**64 - 1])
    assert tensors["sampling_param_stop"] == ("BYTES", [2], ["\n", "END"])


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"repetition_penalty": 1.1}, "repetition_penalty"),
        ({"min_tokens": 3}, "min_tokens"),
        ({"logprobs": True}, "logprobs"),
    ],
)
def test_a_setting_the_llmapi_model_has_no_tensor_for_is_a_400(params: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        llmapi.build_request("tensorrt_llm", _request(**params), ACCEPTS)
    assert raised.value.param == param


def test_a_route_without_a_declared_tensor_refuses_the_setting() -> None:
    with pytest.raises(InvalidRequest):
        llmapi.build_request("m", _request(top_k=3), ACCEPTS - {"sampling_param_top_k"})


def test_images_go_as_image_url_when_the_request_has_them() -> None:
    if "images" not in {f.name for f in dataclasses.fields(GenerationRequest)}:
        pytest.skip("GenerationRequest has no images yet (issue 11)")
    request = dataclasses.replace(_request(), images=("data:image/png;base64,AAAA",))
    tensors = _inputs(llmapi.build_request("tensorrt_llm", request, ACCEPTS))
    assert tensors["image_url"] == ("BYTES", [1], ["data:image/png;base64,AAAA"])


def test_images_on_a_route_without_image_url_are_a_400() -> None:
    if "images" not in {f.name for f in dataclasses.fields(GenerationRequest)}:
        pytest.skip("GenerationRequest has no images yet (issue 11)")
    request = dataclasses.replace(_request(), images=("data:image/png;base64,AAAA",))
    with pytest.raises(InvalidRequest):
        llmapi.build_request("tensorrt_llm", request, ACCEPTS - {"image_url"})


def test_stop_is_stop_true_with_the_request_id() -> None:
    infer = llmapi.build_stop("tensorrt_llm", "r7")
    assert infer.id == "r7"
    assert _inputs(infer)["stop"] == ("BOOL", [1], [True])


def test_none_as_a_finish_reason_is_no_finish_reason() -> None:
    delta, final = llmapi.parse(_response(text_output="Hel", finish_reason="None"))
    assert (delta.text, delta.finish_reason, final) == ("Hel", None, False)


@pytest.mark.parametrize(
    ("sent", "expected"),
    [("stop", "stop"), ("length", "length"), ("timeout", "length"), ("cancelled", "cancelled")],
)
def test_finish_reasons_map_to_openais(sent: str, expected: str) -> None:
    delta, _ = llmapi.parse(_response(text_output="x", finish_reason=sent, final=True))
    assert delta.finish_reason == expected


def test_a_final_response_without_a_reason_stops() -> None:
    delta, final = llmapi.parse(_response(text_output="x", final=True))
    assert final and delta.finish_reason == "stop"


def test_perf_metrics_are_read_from_strings_and_numbers_alike() -> None:
    response = _response(
        text_output="x",
        kv_cache_hit_rate="0.25",
        arrival_time_ns=("INT64", struct.pack("<q", 123)),
        first_token_time_ns="not a number",
    )
    assert llmapi.perf_metrics(response) == {"kv_cache_hit_rate": 0.25, "arrival_time_ns": 123.0}


async def _collect(texts: list[str]) -> list[Delta]:
    async def stream():
        for i, text in enumerate(texts):
            yield Delta(text=text, finish_reason="stop" if i == len(texts) - 1 else None)

    return [d async for d in llmapi.deltas(stream())]


def test_cumulative_text_becomes_deltas_with_a_token_count() -> None:
    out = asyncio.run(_collect(["He", "Hell", "Hello", "Hello!"]))
    assert [d.text for d in out] == ["He", "ll", "o", "!"]
    assert [d.num_output_tokens for d in out] == [1, 2, 3, 4]
    assert out[-1].finish_reason == "stop"


def test_a_release_that_sends_deltas_is_recognised() -> None:
    out = asyncio.run(_collect(["He", "ll", "o", "!"]))
    assert "".join(d.text for d in out) == "Hello!"


def test_steps_that_add_no_text_are_not_counted() -> None:
    # A token that ends mid-character, and the end token's step, add no text.
    out = asyncio.run(_collect(["", "caf", "caf", "café", "café"]))
    assert "".join(d.text for d in out) == "café"
    assert [d.num_output_tokens for d in out] == [0, 1, 1, 2, 2]


def test_the_protocol_is_told_by_the_declared_inputs() -> None:
    assert llmapi.speaks_llmapi(ACCEPTS)
    assert not llmapi.speaks_llmapi(frozenset({"text_input", "max_tokens", "temperature"}))
