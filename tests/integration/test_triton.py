"""The real tritonserver serving the tiny MoE through NVIDIA's TensorRT-LLM repository layout."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import (
    InferenceServerException,
    np_to_triton_dtype,
    serialize_byte_tensor,
)

from gateway.local.repository import fill_repository
from gateway.local.triton import TritonProcess, TritonStartError
from tests.support import free_port, metric_value, wait_for

MODELS = ["preprocessing", "tensorrt_llm", "postprocessing", "ensemble", "tensorrt_llm_bls"]
PROMPT = "<|im_start|>user\nWhat does the json module do?<|im_end|>\n<|im_start|>assistant\n"


def _tensor(name: str, value: Any, dtype: Any) -> grpcclient.InferInput:
    array = np.asarray(value, dtype=dtype)
    array = array.reshape((1, *array.shape)) if array.ndim else array.reshape(1, 1)
    tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def text_inputs(prompt: str = PROMPT, max_tokens: int = 16, **extra: Any) -> list:
    """Inputs of the ensemble / BLS text interface."""
    types = {
        "stream": np.bool_, "temperature": np.float32, "top_k": np.int32, "top_p": np.float32,
        "seed": np.uint64, "ignore_eos": np.bool_, "return_log_probs": np.bool_,
        "min_tokens": np.int32,
    }  # fmt: skip
    tensors = [
        _tensor("text_input", [prompt.encode()], np.object_),
        _tensor("max_tokens", [max_tokens], np.int32),
    ]
    for name, value in extra.items():
        if name == "stop_words":
            tensors.append(_tensor(name, [w.encode() for w in value], np.object_))
        else:
            tensors.append(_tensor(name, [value], types[name]))
    return tensors


async def infer_stream(url: str, model: str, inputs: list, *, stop_after: int | None = None):
    """All responses of one request over the gRPC stream (optionally abandoning it early)."""
    client = grpcclient.InferenceServerClient(url)
    out = []

    async def requests():
        yield {
            "model_name": model,
            "inputs": inputs,
            "request_id": "t",
            "enable_empty_final_response": True,
        }

    try:
        stream = client.stream_infer(requests())
        async for result, error in stream:
            if error is not None:
                raise error
            out.append(result)
            if stop_after is not None and len(out) >= stop_after:
                stream.cancel()
                break
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
    finally:
        await client.close()
    return out


def texts(responses: list, name: str = "text_output") -> str:
    parts = []
    for r in responses:
        array = r.as_numpy(name)
        if array is not None:
            parts.extend(v.decode("utf-8") for v in array.reshape(-1))
    return "".join(parts)


def last(responses: list, name: str) -> Any:
    values = [r.as_numpy(name) for r in responses if r.as_numpy(name) is not None]
    value = values[-1].reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else value


def bls(triton: TritonProcess, **kw: Any) -> list:
    return asyncio.run(infer_stream(triton.grpc_url, "tensorrt_llm_bls", text_inputs(**kw)))


def test_all_models_are_ready(triton: TritonProcess) -> None:
    async def check() -> list[bool]:
        client = grpcclient.InferenceServerClient(triton.grpc_url)
        try:
            return [await client.is_model_ready(m) for m in MODELS]
        finally:
            await client.close()

    assert asyncio.run(check()) == [True] * len(MODELS)


def test_tensorrt_llm_has_nvidia_tensor_interface(triton: TritonProcess) -> None:
    async def meta() -> Any:
        client = grpcclient.InferenceServerClient(triton.grpc_url)
        try:
            return await client.get_model_metadata("tensorrt_llm", as_json=True)
        finally:
            await client.close()

    metadata = asyncio.run(meta())
    inputs = {t["name"]: t["datatype"] for t in metadata["inputs"]}
    outputs = {t["name"]: t["datatype"] for t in metadata["outputs"]}
    assert inputs["input_ids"] == "INT32" and inputs["request_output_len"] == "INT32"
    assert inputs["runtime_top_k"] == "INT32" and inputs["seed"] == "UINT64"
    assert inputs["stop_words_list"] == "INT32" and inputs["stop"] == "BOOL"
    assert outputs == {
        "output_ids": "INT32",
        "sequence_length": "INT32",
        "cum_log_probs": "FP32",
        "output_log_probs": "FP32",
        "top_token_ids": "INT32",
        "top_log_probs": "FP32",
    }


def test_tensorrt_llm_returns_padded_beam_shaped_output_ids(triton: TritonProcess) -> None:
    ids = [[1, 2, 3, 4]]
    inputs = [
        _tensor("input_ids", ids[0], np.int32),
        _tensor("input_lengths", [4], np.int32),
        _tensor("request_output_len", [5], np.int32),
        _tensor("temperature", [0.0], np.float32),
        _tensor("ignore_eos", [True], np.bool_),
    ]
    responses = asyncio.run(infer_stream(triton.grpc_url, "tensorrt_llm", inputs))
    output_ids = [
        r.as_numpy("output_ids") for r in responses if r.as_numpy("output_ids") is not None
    ]
    assert len(output_ids) == 1 and output_ids[0].shape == (1, 1, 5)
    assert last(responses, "sequence_length") == 5


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
@pytest.mark.parametrize("stream", [False, True])
def test_text_routes_generate(triton: TritonProcess, model: str, stream: bool) -> None:
    inputs = text_inputs(max_tokens=12, stream=stream, temperature=0.0, ignore_eos=True)
    responses = asyncio.run(infer_stream(triton.grpc_url, model, inputs))
    data = [r for r in responses if r.as_numpy("text_output") is not None]
    assert len(data) > (1 if stream else 0)
    if not stream:
        assert len(data) == 1
    assert texts(responses)


def test_concurrent_requests_may_share_a_client_request_id(triton: TritonProcess) -> None:
    # The ensemble hands the client's id ("t" here, for both) to tensorrt_llm unchanged.
    async def two() -> list:
        inputs = [text_inputs(max_tokens=8, stream=True, ignore_eos=True) for _ in range(2)]
        return await asyncio.gather(*(infer_stream(triton.grpc_url, "ensemble", i) for i in inputs))

    results = asyncio.run(two())
    assert [sum(1 for r in rs if r.as_numpy("text_output") is not None) for rs in results] == [
        8,
        8,
    ]


def test_temperature_zero_is_deterministic(triton: TritonProcess) -> None:
    first = texts(bls(triton, max_tokens=16, temperature=0.0))
    second = texts(bls(triton, max_tokens=16, temperature=0.0))
    assert first and first == second


def test_seed_reproduces_sampled_text(triton: TritonProcess) -> None:
    runs = [texts(bls(triton, max_tokens=24, temperature=1.0, seed=s)) for s in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_max_tokens_ends_with_length_and_exact_count(triton: TritonProcess) -> None:
    responses = bls(triton, max_tokens=9, temperature=0.0, ignore_eos=True, stream=True)
    assert last(responses, "finish_reason") == "length"
    assert last(responses, "num_output_tokens") == 9
    assert last(responses, "num_input_tokens") > 5


def test_stop_string_cuts_output_before_it(triton: TritonProcess) -> None:
    full = texts(bls(triton, max_tokens=24, temperature=0.0, ignore_eos=True))
    words = full.split()
    assert len(words) > 3, full
    stop = words[2]
    cut = full[: full.index(stop)]
    for stream in (False, True):
        responses = bls(
            triton,
            max_tokens=24,
            temperature=0.0,
            ignore_eos=True,
            stop_words=[stop],
            stream=stream,
        )
        assert texts(responses) == cut
        assert last(responses, "finish_reason") == "stop"


def test_streamed_text_equals_non_streamed_with_spaces_and_non_ascii(triton: TritonProcess) -> None:
    # Hot sampling over many tokens reaches byte tokens of multi-byte characters; try seeds
    # until one does, then compare the two routes token for token.
    for seed in range(20):
        kw = {"max_tokens": 64, "temperature": 3.0, "seed": seed, "ignore_eos": True}
        whole = texts(bls(triton, stream=False, **kw))
        if " " in whole and any(ord(c) > 127 for c in whole):
            break
    else:
        pytest.fail("no seed produced non-ASCII output")
    streamed = bls(triton, stream=True, **kw)
    assert len(streamed) > 10
    assert texts(streamed) == whole


def test_invalid_utf8_stop_word_is_an_error_not_a_hang(triton: TritonProcess) -> None:
    inputs = text_inputs(max_tokens=8)
    inputs.append(_tensor("stop_words", [b"\xff\xfe"], np.object_))
    with pytest.raises(InferenceServerException, match="utf-8"):
        asyncio.run(asyncio.wait_for(infer_stream(triton.grpc_url, "tensorrt_llm_bls", inputs), 30))


def _engine_counter(triton: TritonProcess, kind: str) -> float:
    return metric_value(triton.metrics_url, "nv_moe_engine_steps_total", kind=kind)


def _engine_readings(triton: TritonProcess) -> tuple[float, float, float]:
    active = {"request_type": "active", "model": "tensorrt_llm"}
    return (
        metric_value(triton.metrics_url, "nv_trt_llm_request_metrics", **active),
        _engine_counter(triton, "finished_requests"),
        _engine_counter(triton, "decode_tokens"),
    )


def _settled_engine(triton: TritonProcess) -> tuple[float, float]:
    """Wait until the engine is idle and its published metrics have caught up with it; return
    (finished requests, decoded tokens). Metrics are published every 100 ms, so a reading is
    trusted once it stays the same for 250 ms."""
    last: list[tuple[float, float, float]] = []

    def settled() -> bool:
        now = _engine_readings(triton)
        same = bool(last) and now == last[-1] and now[0] == 0
        last.append(now)
        return same

    assert wait_for(settled, timeout=10, interval=0.25)
    return last[-1][1], last[-1][2]


def _assert_engine_freed(triton: TritonProcess, before: tuple[float, float]) -> None:
    """The request started after `_settled_engine` returned `before` has finished in the engine,
    long before the 1,500 tokens it asked for."""
    finished_before, decoded_before = before

    def freed() -> bool:
        active, finished, _ = _engine_readings(triton)
        return finished > finished_before and active == 0

    assert wait_for(freed, timeout=1.5)
    assert _engine_counter(triton, "decode_tokens") - decoded_before < 500


def test_cancelled_stream_frees_the_engine(triton: TritonProcess) -> None:
    inputs = text_inputs(max_tokens=1500, stream=True, ignore_eos=True, temperature=0.0)
    before = _settled_engine(triton)
    responses = asyncio.run(infer_stream(triton.grpc_url, "tensorrt_llm_bls", inputs, stop_after=3))
    assert len(responses) == 3
    _assert_engine_freed(triton, before)


def test_client_dropping_its_engine_stream_frees_the_engine(triton: TritonProcess) -> None:
    """No `stop` here: the client of `tensorrt_llm` itself just goes away mid-stream, and the
    model's cancel watcher (not the engine thread) notices and cancels the engine request."""
    inputs = [
        _tensor("input_ids", [1, 2, 3, 4], np.int32),
        _tensor("input_lengths", [4], np.int32),
        _tensor("request_output_len", [1500], np.int32),
        _tensor("streaming", [True], np.bool_),
        _tensor("ignore_eos", [True], np.bool_),
    ]
    before = _settled_engine(triton)
    responses = asyncio.run(infer_stream(triton.grpc_url, "tensorrt_llm", inputs, stop_after=3))
    assert len(responses) == 3
    _assert_engine_freed(triton, before)


def _raw_request(request_id: str, **inputs: Any) -> service_pb2.ModelInferRequest:
    """A BLS request as the protobuf itself, with empty final responses switched on (the aio
    client drops that option, and a stopped request ends with an empty final)."""
    request = service_pb2.ModelInferRequest(model_name="tensorrt_llm_bls", id=request_id)
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    types = {str: np.object_, bool: np.bool_, int: np.int32, float: np.float32}
    for name, value in inputs.items():
        array = np.asarray([[value.encode() if isinstance(value, str) else value]])
        array = array.astype(types[type(value)])
        tensor = request.inputs.add(name=name, shape=array.shape)
        tensor.datatype = np_to_triton_dtype(array.dtype)
        raw = serialize_byte_tensor(array).item() if array.dtype == np.object_ else array.tobytes()
        request.raw_input_contents.append(raw)
    return request


def test_stop_request_ends_the_request_with_its_id(triton: TritonProcess) -> None:
    # TensorRT-LLM's cancellation, which the gateway uses on the streams it shares: a second
    # request on the same stream, `stop=true` with the first one's id.
    long = _raw_request(
        "a", text_input=PROMPT, max_tokens=1500, stream=True, ignore_eos=True, temperature=0.0
    )
    stop = _raw_request("a", text_input="", max_tokens=1, stop=True)
    before = _settled_engine(triton)

    async def run() -> list:
        async with grpc.aio.insecure_channel(triton.grpc_url) as channel:
            call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
            await call.write(long)
            responses, finals = [], 0
            while finals < 2:  # the long request's and the stop request's
                response = await call.read()
                assert not response.error_message, response.error_message
                assert response.infer_response.id == "a"
                responses.append(response)
                if len(responses) == 3:
                    await call.write(stop)
                final = response.infer_response.parameters["triton_final_response"]
                finals += final.bool_param
            call.cancel()
            return responses

    responses = asyncio.run(asyncio.wait_for(run(), 30))
    assert len(responses) < 100  # ended long before its 1,500 tokens
    _assert_engine_freed(triton, before)


def test_concurrent_streams_share_decode_steps(triton: TritonProcess) -> None:
    def counter(kind: str) -> float:
        return metric_value(triton.metrics_url, "nv_moe_engine_steps_total", kind=kind)

    steps, tokens = counter("decode_steps"), counter("decode_tokens")

    async def eight() -> list:
        return await asyncio.gather(
            *(
                infer_stream(
                    triton.grpc_url,
                    "tensorrt_llm_bls",
                    text_inputs(max_tokens=32, stream=True, ignore_eos=True, seed=i),
                )
                for i in range(8)
            )
        )

    results = asyncio.run(eight())
    assert all(last(r, "num_output_tokens") == 32 for r in results)
    assert wait_for(lambda: counter("decode_tokens") - tokens >= 8 * 31, timeout=2)
    tokens_per_step = (counter("decode_tokens") - tokens) / (counter("decode_steps") - steps)
    assert tokens_per_step > 3, tokens_per_step
    peak = {"request_type": "peak_active", "model": "tensorrt_llm"}
    assert metric_value(triton.metrics_url, "nv_trt_llm_request_metrics", **peak) >= 4


def test_expert_counters_grow_with_traffic(triton: TritonProcess) -> None:
    def routed() -> float:
        return metric_value(triton.metrics_url, "nv_moe_expert_tokens_total")

    before = routed()
    responses = bls(triton, max_tokens=8, temperature=0.0, ignore_eos=True)
    # Every token processed (prompt and generated) is routed to top-2 experts in each layer.
    tokens = last(responses, "num_input_tokens") + 8 - 1
    assert wait_for(lambda: routed() - before >= tokens * 2, timeout=2)


def test_broken_model_config_fails_with_the_model_error(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    repo = fill_repository(
        tmp_path / "repo", model_dir=tiny_model_dir, overrides={"engine_dtype": "float7"}
    )
    server = TritonProcess(
        repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    with pytest.raises(TritonStartError) as info:
        server.start(timeout=120)
    assert "tensorrt_llm" in str(info.value)
    assert "float7" in str(info.value)
    assert server._proc is not None and server._proc.poll() is not None
    shutil.rmtree(repo)
