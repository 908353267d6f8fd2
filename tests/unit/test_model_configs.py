"""Every `config.pbtxt` the CPU profile writes parses with Triton's own schema
(`model_config.proto`, shipped by tritonclient as `model_config_pb2`), and says what a serving
Triton relies on: no placeholder left, the streaming models decoupled, the ensembles' steps
wired to tensors their models declare, the image tensors named and typed as NVIDIA's multimodal
templates name them. Triton would refuse a broken one only at load time."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from gateway.local.repository import fill_repository
from tests.support import byte_level_tokenizer

TEXT_MODELS = (
    "preprocessing", "tensorrt_llm", "postprocessing", "ensemble", "tensorrt_llm_bls", "llmapi",
    "embeddings",
)  # fmt: skip
VISION_MODELS = (*TEXT_MODELS, "multimodal_encoders", "ensemble_multimodal")

Configs = dict[str, model_config_pb2.ModelConfig]

# The image tensors as NVIDIA's templates declare them (TensorRT-LLM,
# triton_backend/all_models/multimodal/{ensemble,multimodal_encoders} and
# inflight_batcher_llm/{preprocessing,tensorrt_llm,tensorrt_llm_bls}/config.pbtxt):
# model -> ("input" | "output", name) -> data type.
NVIDIA_IMAGE_TENSORS: dict[str, dict[tuple[str, str], str]] = {
    "preprocessing": {
        ("input", "IMAGE_BYTES"): "TYPE_UINT8",
        ("input", "IMAGE_URL"): "TYPE_STRING",
        ("output", "INPUT_ID"): "TYPE_INT32",
        ("output", "PIXEL_VALUES"): "TYPE_FP16",
        ("output", "OUT_PROMPT_TABLE_EXTRA_IDS"): "TYPE_UINT64",
    },
    "multimodal_encoders": {
        ("input", "IMAGE"): "TYPE_FP16",
        ("input", "pixel_values"): "TYPE_FP16",
        ("output", "OUT_PROMPT_EMBEDDING_TABLE"): "TYPE_FP16",
        ("output", "OUT_PROMPT_VOCAB_SIZE"): "TYPE_INT32",
    },
    "tensorrt_llm": {
        ("input", "prompt_embedding_table"): "TYPE_FP16",
        ("input", "prompt_vocab_size"): "TYPE_INT32",
        ("input", "prompt_table_extra_ids"): "TYPE_UINT64",
    },
    "tensorrt_llm_bls": {
        ("input", "image_input"): "TYPE_FP16",
        ("input", "image_bytes_input"): "TYPE_UINT8",
        ("input", "image_url_input"): "TYPE_STRING",
    },
    "ensemble_multimodal": {
        ("input", "text_input"): "TYPE_STRING",
        ("input", "image_input"): "TYPE_FP16",
        ("input", "image_bytes_input"): "TYPE_UINT8",
        ("input", "image_url_input"): "TYPE_STRING",
        ("input", "max_tokens"): "TYPE_INT32",
        ("output", "text_output"): "TYPE_STRING",
    },
}
# Every image input is optional: a text-only request leaves them out (NVIDIA's too).
OPTIONAL_IMAGE_INPUTS = {
    "preprocessing": {"IMAGE_BYTES", "IMAGE_URL"},
    "multimodal_encoders": {"IMAGE", "pixel_values"},
    "tensorrt_llm": {"prompt_embedding_table", "prompt_vocab_size", "prompt_table_extra_ids"},
    "tensorrt_llm_bls": {"image_input", "image_bytes_input", "image_url_input"},
    "ensemble_multimodal": {"image_input", "image_bytes_input", "image_url_input"},
}


def fill(tmp: pytest.TempPathFactory, *, vision: bool) -> tuple[Path, Configs]:
    # A checkpoint folder with just what filling reads (config.json's context length, and
    # whether vision/config.json exists).
    model_dir = tmp.mktemp("checkpoint")
    (model_dir / "config.json").write_text('{"max_position_embeddings": 2048}')
    byte_level_tokenizer(["hello world"], 300).save(str(model_dir / "tokenizer.json"))
    if vision:
        (model_dir / "vision").mkdir()
        (model_dir / "vision" / "config.json").write_text('{"image_token": "<|image|>"}')
    out = fill_repository(tmp.mktemp("repo") / "cpu", model_dir=model_dir)
    parsed = {}
    for config in sorted(out.glob("*/config.pbtxt")):
        text = config.read_text()
        name = config.parent.name
        assert "${" not in text, f"{name}: a placeholder was left unfilled"
        parsed[name] = text_format.Parse(text, model_config_pb2.ModelConfig())
    return out, parsed


@pytest.fixture(scope="module")
def text_configs(tmp_path_factory: pytest.TempPathFactory) -> Configs:
    return fill(tmp_path_factory, vision=False)[1]


@pytest.fixture(scope="module")
def vision_configs(tmp_path_factory: pytest.TempPathFactory) -> Configs:
    return fill(tmp_path_factory, vision=True)[1]


@pytest.fixture(params=["text", "vision"])
def configs(request: pytest.FixtureRequest) -> Configs:
    return request.getfixturevalue(f"{request.param}_configs")


def test_a_text_checkpoint_gets_the_text_models_and_a_vision_one_the_image_models_too(
    text_configs: Configs, vision_configs: Configs
) -> None:
    assert set(text_configs) == set(TEXT_MODELS)
    assert set(vision_configs) == set(VISION_MODELS)


def test_every_config_parses_with_tritons_schema_and_names_its_model(configs: Configs) -> None:
    for name, config in configs.items():
        assert config.name == name
        assert config.backend or config.platform == "ensemble", name


def test_the_streaming_models_are_decoupled(configs: Configs) -> None:
    for name in ("tensorrt_llm", "tensorrt_llm_bls", "llmapi"):
        assert configs[name].model_transaction_policy.decoupled, name


@pytest.mark.parametrize("ensemble", ["ensemble", "ensemble_multimodal"])
def test_the_ensembles_map_only_tensors_their_models_declare(
    vision_configs: Configs, ensemble: str
) -> None:
    config = vision_configs[ensemble]
    produced = {i.name for i in config.input}
    for step in config.ensemble_scheduling.step:
        model = vision_configs[step.model_name]
        inputs = {i.name for i in model.input}
        outputs = {o.name for o in model.output}
        for model_input, ensemble_tensor in step.input_map.items():
            assert model_input in inputs, f"{step.model_name} has no input {model_input}"
            assert ensemble_tensor in produced, f"{ensemble_tensor} is not produced before use"
        for model_output, ensemble_tensor in step.output_map.items():
            assert model_output in outputs, f"{step.model_name} has no output {model_output}"
            produced.add(ensemble_tensor)
    assert {o.name for o in config.output} <= produced


def test_the_image_tensors_have_nvidias_names_and_types(vision_configs: Configs) -> None:
    for model, expected in NVIDIA_IMAGE_TENSORS.items():
        config = vision_configs[model]
        declared = {
            **{("input", t.name): t for t in config.input},
            **{("output", t.name): t for t in config.output},
        }
        for key, dtype in expected.items():
            assert key in declared, f"{model} declares no {key[0]} {key[1]}"
            assert model_config_pb2.DataType.Name(declared[key].data_type) == dtype, (model, key)
        for name in OPTIONAL_IMAGE_INPUTS[model]:
            assert declared[("input", name)].optional, f"{model}: {name} must be optional"


def test_the_bls_names_the_encoder_only_for_a_vision_checkpoint(
    text_configs: Configs, vision_configs: Configs
) -> None:
    def encoder_name(configs: Configs) -> str:
        return configs["tensorrt_llm_bls"].parameters["multimodal_encoders_name"].string_value

    assert encoder_name(vision_configs) == "multimodal_encoders"
    assert encoder_name(text_configs) == ""


def test_the_encoder_batches_concurrent_requests_of_any_image_count(
    vision_configs: Configs,
) -> None:
    encoder = vision_configs["multimodal_encoders"]
    assert encoder.HasField("dynamic_batching") and encoder.max_batch_size > 1
    assert encoder.dynamic_batching.max_queue_delay_microseconds > 0
    assert all(i.allow_ragged_batch for i in encoder.input)
