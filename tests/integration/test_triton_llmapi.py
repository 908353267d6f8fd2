"""The CPU `llmapi` model on a real tritonserver: NVIDIA's LLM-API tensors (no batch dimension,
`sampling_param_*`, cumulative text, the prompt echoed by default, "None" until the finish
reason, stop by id), and the gateway's llmapi protocol (gateway/triton/llmapi.py) against it."""

from __future__ import annotations

import asyncio
import itertools
import struct

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.core.backend import Delta, GenerationRequest, SamplingOptions
from gateway.local.triton import TritonProcess
from gateway.triton import llmapi

PROMPT = "<|im_start|>user\nWhat does the json module do?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def grpc_url(triton: TritonProcess) -> str:
    """The session's Triton: the CPU repository serves the `llmapi` model beside the BLS."""
    return triton.grpc_url


def _raw(value: np.ndarray) -> bytes:
    if value.dtype == np.object_:
        return b"".join(struct.pack("<I", len(v)) + v for v in value.reshape(-1))
    return value.tobytes()


_TYPES = {np.bool_: "BOOL", np.int32: "INT32", np.float32: "FP32", np.uint64: "UINT64"}


def _infer(model: str, request_id: str, **inputs: object) -> service_pb2.ModelInferRequest:
    infer = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, value in inputs.items():
        if isinstance(value, str | list) and name in ("text_input", "sampling_param_stop"):
            items = [value] if isinstance(value, str) else value
            array = np.asarray([s.encode() for s in items], dtype=np.object_)
            dtype = "BYTES"
        else:
            kind = {bool: np.bool_, int: np.int32, float: np.float32}[type(value)]
            array = np.asarray([value], dtype=kind)
            dtype = _TYPES[kind]
        infer.inputs.add(name=name, datatype=dtype, shape=array.shape)
        infer.raw_input_contents.append(_raw(array))
    return infer


async def _stream(url: str, *requests: service_pb2.ModelInferRequest, until: int = 1) -> list:
    """Responses on one gRPC stream until `until` requests had their final response."""
    async with grpc.aio.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        queue: asyncio.Queue = asyncio.Queue()

        async def send():
            for request in requests:
                yield request
                await asyncio.sleep(0.3)
            await queue.get()  # keep the stream open until the responses are in

        out = []
        call = stub.ModelStreamInfer(send())
        finals = 0
        async for message in call:
            assert not message.error_message, message.error_message
            out.append(message.infer_response)
            if message.infer_response.parameters["triton_final_response"].bool_param:
                finals += 1
                if finals >= until:
                    break
        queue.put_nowait(None)
        call.cancel()
        return out


def _output(response: service_pb2.ModelInferResponse, name: str) -> str:
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=False):
        if tensor.name == name:
            (length,) = struct.unpack_from("<I", raw)
            return raw[4 : 4 + length].decode()
    return ""


def _texts(responses: list) -> list[tuple[str, str | None, bool]]:
    parsed = [llmapi.parse(r) for r in responses if r.outputs]
    return [(d.text, d.finish_reason, final) for d, final in parsed]


def test_streamed_text_is_cumulative_and_echoes_the_prompt_by_default(grpc_url: str) -> None:
    request = _infer(
        "llmapi", "a", text_input=PROMPT, streaming=True, sampling_param_max_tokens=6,
        sampling_param_top_k=1, return_finish_reason=True,
    )  # fmt: skip
    texts = _texts(asyncio.run(_stream(grpc_url, request)))
    assert len(texts) >= 2
    for (previous, _, _), (current, _, _) in itertools.pairwise(texts):
        assert current.startswith(previous)
    assert texts[0][0].startswith(PROMPT)
    assert [reason for _, reason, _ in texts[:-1]] == [None] * (len(texts) - 1)
    assert texts[-1][1] in ("stop", "length")


def test_exclude_input_leaves_the_prompt_out_and_max_tokens_ends_with_length(grpc_url: str) -> None:
    request = _infer(
        "llmapi", "b", text_input=PROMPT, streaming=True, sampling_param_max_tokens=4,
        sampling_param_exclude_input_from_output=True, return_finish_reason=True,
        sampling_param_top_k=1,
    )  # fmt: skip
    texts = _texts(asyncio.run(_stream(grpc_url, request)))
    assert not texts[-1][0].startswith("<|im_start|>")
    assert texts[-1][1] == "length"


def test_the_gateway_protocol_gets_the_bls_routes_answer(grpc_url: str) -> None:
    params = SamplingOptions(max_tokens=12, top_k=1)
    generation = GenerationRequest(prompt=PROMPT, params=params, request_id="g")

    async def via_llmapi() -> list[Delta]:
        responses = await _stream(grpc_url, llmapi.build_request("llmapi", generation))

        async def stream():
            for response in responses:
                yield llmapi.parse(response)[0]

        return [d async for d in llmapi.deltas(stream())]

    deltas = asyncio.run(via_llmapi())
    text = "".join(d.text for d in deltas)
    bls = _infer("tensorrt_llm_bls", "h", text_input=[PROMPT], max_tokens=12, top_k=1, stream=False)
    # The BLS is batched: its inputs carry a batch dimension of 1.
    for tensor in bls.inputs:
        tensor.shape.insert(0, 1)
    answer = asyncio.run(_stream(grpc_url, bls))
    expected = "".join(
        llmapi._string(
            dict(zip([o.name for o in r.outputs], r.raw_output_contents, strict=False)).get(
                "text_output"
            )
        )
        for r in answer
    )
    assert text == expected
    assert deltas[-1].finish_reason in ("stop", "length")
    assert deltas[-1].num_output_tokens and deltas[-1].num_output_tokens <= 12


def test_stop_with_the_request_id_ends_the_request(grpc_url: str) -> None:
    long = _infer(
        "llmapi", "s", text_input=PROMPT, streaming=True, sampling_param_max_tokens=200,
        return_finish_reason=True,
    )  # fmt: skip
    # The stop's own answer is an empty final response, which a stream delivers only on request.
    responses = asyncio.run(_stream(grpc_url, long, llmapi.build_stop("llmapi", "s")))
    assert responses[-1].parameters["triton_final_response"].bool_param
    assert len(responses) < 200


def test_a_bad_request_is_an_error_not_a_hang(grpc_url: str) -> None:
    async def go() -> str:
        async with grpc.aio.insecure_channel(grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

            async def send():
                yield _infer("llmapi", "e", text_input=PROMPT, sampling_param_best_of=2)
                await asyncio.sleep(5)

            async for message in stub.ModelStreamInfer(send()):
                return message.error_message
        return ""

    assert "best_of" in asyncio.run(go())
