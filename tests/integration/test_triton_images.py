"""Images through a real tritonserver: NVIDIA's multimodal ensemble and the BLS, driven with
tritonclient, each image through preprocessing and the vision encoder into the engine's prompt
table; text-only requests on the same routes; bad images refused with Triton still serving.

The model is the session's tiny build when it is a vision-language checkpoint (`vision/`);
otherwise a copy of it with a random-weight vision tower and `<|image|>` added to its tokenizer,
which exercises every tensor but cannot name what it sees.
"""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
from PIL import Image, ImageDraw
from tritonclient.utils import InferenceServerException

from gateway.local.repository import fill_repository, is_vision_checkpoint
from gateway.local.triton import TritonProcess
from tests.integration.test_triton import _tensor, infer_stream, last, text_inputs, texts
from tests.support import free_port, metric_value

IMAGE_TOKEN = "<|image|>"
QUESTION = "What is in this image?"
F = 16  # the tiny tower's features per image


def chat(question: str = QUESTION, images: int = 1) -> str:
    return f"<|im_start|>user\n{IMAGE_TOKEN * images}{question}<|im_end|>\n<|im_start|>assistant\n"


def drawn(colour: str = "red", shape: str = "circle", size: int = 96) -> Image.Image:
    """One shape on a plain background: the tiny model's own drawing once its builder has it."""
    try:
        from moe_build.shapes import draw_plain
    except ImportError:  # a random tower cannot tell shapes apart: any drawing serves
        pass
    else:
        return draw_plain(colour, shape, size=(size, size), seed=1)
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(size // 2, size // 4), box[:1] + box[3:], box[2:]], fill=colour)
    return image


def data_url(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return b"data:image/png;base64," + base64.b64encode(out.getvalue())


def url_input(*urls: bytes) -> grpcclient.InferInput:
    array = np.asarray([list(urls)], dtype=np.object_)
    tensor = grpcclient.InferInput("image_url_input", list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


def bytes_input(*images: Image.Image) -> grpcclient.InferInput:
    array = np.stack([np.asarray(i.convert("RGB"), dtype=np.uint8) for i in images])[None]
    tensor = grpcclient.InferInput("image_bytes_input", list(array.shape), "UINT8")
    tensor.set_data_from_numpy(array)
    return tensor


@pytest.fixture(scope="module")
def vision_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if is_vision_checkpoint(tiny_model_dir):
        return tiny_model_dir
    from tokenizers import Tokenizer

    from moe_engine.vision import save_random_vision

    model_dir = tmp_path_factory.mktemp("vlm") / "tiny-vlm"
    shutil.copytree(tiny_model_dir, model_dir)
    save_random_vision(model_dir, text_hidden_size=256)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.add_special_tokens([IMAGE_TOKEN])
    tokenizer.save(str(model_dir / "tokenizer.json"))
    return model_dir


@pytest.fixture(scope="module")
def trained(vision_model_dir: Path, tiny_model_dir: Path) -> bool:
    """Whether the tower was trained (the tiny build's own), so answers can be checked."""
    return vision_model_dir == tiny_model_dir


@pytest.fixture(scope="module")
def vlm(
    vision_model_dir: Path,
    trained: bool,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TritonProcess]:
    if trained:  # the session's server already serves the vision checkpoint
        yield request.getfixturevalue("triton")
        return
    repo = fill_repository(tmp_path_factory.mktemp("repo") / "cpu", model_dir=vision_model_dir)
    server = TritonProcess(
        repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    server.start()
    yield server
    server.stop()


def run(triton: TritonProcess, model: str, inputs: list) -> list:
    return asyncio.run(infer_stream(triton.grpc_url, model, inputs))


def image_inputs(images: Any, prompt: str = chat(), **extra: Any) -> list:
    extra.setdefault("temperature", 0.0)
    extra.setdefault("max_tokens", 8)
    return [*text_inputs(prompt, **extra), images]


def assert_names(answer: str, colour: str, shape: str, trained: bool) -> None:
    if trained:
        assert colour in answer.lower() and shape in answer.lower(), answer


def test_the_image_models_are_ready(vlm: TritonProcess) -> None:
    async def ready() -> list[bool]:
        client = grpcclient.InferenceServerClient(vlm.grpc_url)
        try:
            return [
                await client.is_model_ready(m)
                for m in ("multimodal_encoders", "ensemble_multimodal")
            ]
        finally:
            await client.close()

    assert asyncio.run(ready()) == [True, True]


def test_the_multimodal_ensemble_answers_image_bytes(vlm: TritonProcess, trained: bool) -> None:
    responses = run(vlm, "ensemble_multimodal", image_inputs(bytes_input(drawn("red", "circle"))))
    answer = texts(responses)
    assert answer
    assert_names(answer, "red", "circle", trained)


def test_the_multimodal_ensemble_answers_data_urls(vlm: TritonProcess, trained: bool) -> None:
    responses = run(
        vlm, "ensemble_multimodal", image_inputs(url_input(data_url(drawn("blue", "square"))))
    )
    answer = texts(responses)
    assert answer
    assert_names(answer, "blue", "square", trained)


def test_the_multimodal_ensemble_serves_text_only_requests(vlm: TritonProcess) -> None:
    prompt = "<|im_start|>user\nWhat does the json module do?<|im_end|>\n<|im_start|>assistant\n"
    text = texts(
        run(vlm, "ensemble_multimodal", text_inputs(prompt, max_tokens=8, temperature=0.0))
    )
    same = texts(run(vlm, "ensemble", text_inputs(prompt, max_tokens=8, temperature=0.0)))
    assert text and text == same


def test_the_bls_streams_an_image_answer_and_counts_image_tokens(
    vlm: TritonProcess, trained: bool
) -> None:
    image = url_input(data_url(drawn("green", "triangle")))
    responses = run(
        vlm, "tensorrt_llm_bls", image_inputs(image, stream=True, max_tokens=12, ignore_eos=True)
    )
    chunks = [r for r in responses if r.as_numpy("text_output") is not None]
    assert len(chunks) > 1
    text_only = run(vlm, "tensorrt_llm_bls", text_inputs(chat(images=0), max_tokens=1))
    # The image token became F table ids.
    assert last(responses, "num_input_tokens") == last(text_only, "num_input_tokens") + F
    assert_names(texts(responses), "green", "triangle", trained)


def test_two_images_in_one_request(vlm: TritonProcess) -> None:
    images = url_input(data_url(drawn("red", "circle")), data_url(drawn("blue", "square")))
    responses = run(vlm, "tensorrt_llm_bls", image_inputs(images, prompt=chat(images=2)))
    assert texts(responses)
    text_only = run(vlm, "tensorrt_llm_bls", text_inputs(chat(images=0), max_tokens=1))
    assert last(responses, "num_input_tokens") == last(text_only, "num_input_tokens") + 2 * F


def test_image_and_text_requests_in_flight_together_all_finish(vlm: TritonProcess) -> None:
    def encoder(metric: str) -> float:
        return metric_value(vlm.metrics_url, metric, model="multimodal_encoders")

    before = encoder("nv_inference_request_success")

    async def mixed() -> list[list]:
        jobs = []
        for i in range(8):
            model = "tensorrt_llm_bls" if i % 2 else "ensemble_multimodal"
            if i % 4 < 2:
                image = drawn(["red", "green", "blue", "yellow"][i % 4], "circle")
                inputs = image_inputs(url_input(data_url(image)), stream=True, ignore_eos=True)
            else:
                inputs = text_inputs(max_tokens=8, stream=True, ignore_eos=True, temperature=0.0)
            jobs.append(infer_stream(vlm.grpc_url, model, inputs))
        return await asyncio.gather(*jobs)

    results = asyncio.run(mixed())
    assert all(texts(r) for r in results)
    # Each image request went through the encoder (the ensemble's text ones did too, with 0 images).
    assert encoder("nv_inference_request_success") - before >= 6
    assert encoder("nv_inference_exec_count") > 0


def random_data_url() -> bytes:
    return b"data:image/png;base64," + base64.b64encode(np.random.default_rng(1).bytes(300))


@pytest.mark.parametrize("model", ["ensemble_multimodal", "tensorrt_llm_bls"])
@pytest.mark.parametrize(
    ("images", "prompt", "message"),
    [
        (lambda: url_input(random_data_url()), chat(), "not supported"),
        (lambda: url_input(b"http://127.0.0.1:9/cat.png"), chat(), "must be a data: URL"),
        (lambda: url_input(data_url(drawn())), chat(images=2), "2 image placeholders but 1 image"),
        (lambda: bytes_input(Image.new("RGB", (1, 1))), chat(), "at least 2 pixels"),
    ],
    ids=["random-bytes", "http-url", "too-many-placeholders", "one-pixel"],
)  # fmt: skip
def test_a_bad_image_is_an_error_and_triton_still_serves(
    vlm: TritonProcess, model: str, images: Any, prompt: str, message: str
) -> None:
    with pytest.raises(InferenceServerException, match=message):
        run(vlm, model, image_inputs(images(), prompt=prompt))
    assert texts(run(vlm, model, image_inputs(url_input(data_url(drawn())))))


def test_preprocessing_refuses_a_bad_image_as_invalid_argument(vlm: TritonProcess) -> None:
    async def call() -> None:
        client = grpcclient.InferenceServerClient(vlm.grpc_url)
        try:
            inputs = [
                _tensor("QUERY", [chat().encode()], np.object_),
                _tensor("REQUEST_OUTPUT_LEN", [4], np.int32),
            ]
            urls = np.asarray([[b"data:image/png;base64,AAAA"]], dtype=np.object_)
            url = grpcclient.InferInput("IMAGE_URL", list(urls.shape), "BYTES")
            url.set_data_from_numpy(urls)
            await client.infer("preprocessing", [*inputs, url])
        finally:
            await client.close()

    with pytest.raises(InferenceServerException) as raised:
        asyncio.run(call())
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "image" in raised.value.message().lower()
