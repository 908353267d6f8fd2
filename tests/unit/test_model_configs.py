"""Every `config.pbtxt` the CPU profile writes parses with Triton's own schema
(`model_config.proto`, shipped by tritonclient as `model_config_pb2`), and says what a serving
Triton relies on: no placeholder left, the streaming models decoupled, the ensemble's steps
wired to tensors their models declare. Triton would refuse a broken one only at load time."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from gateway.local.repository import fill_repository
from tests.support import byte_level_tokenizer

MODELS = ("preprocessing", "tensorrt_llm", "postprocessing", "ensemble", "tensorrt_llm_bls")


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, model_config_pb2.ModelConfig]:
    # A checkpoint folder with just what filling reads (config.json's context length).
    model_dir = tmp_path_factory.mktemp("checkpoint")
    (model_dir / "config.json").write_text('{"max_position_embeddings": 2048}')
    byte_level_tokenizer(["hello world"], 300).save(str(model_dir / "tokenizer.json"))
    out = fill_repository(tmp_path_factory.mktemp("repo") / "cpu", model_dir=model_dir)
    parsed = {}
    for name in MODELS:
        text = (out / name / "config.pbtxt").read_text()
        assert "${" not in text, f"{name}: a placeholder was left unfilled"
        parsed[name] = text_format.Parse(text, model_config_pb2.ModelConfig())
    return parsed


def test_every_config_parses_with_tritons_schema_and_names_its_model(
    configs: dict[str, model_config_pb2.ModelConfig],
) -> None:
    for name, config in configs.items():
        assert config.name == name
        assert config.backend or config.platform == "ensemble", name


def test_the_streaming_models_are_decoupled(
    configs: dict[str, model_config_pb2.ModelConfig],
) -> None:
    for name in ("tensorrt_llm", "tensorrt_llm_bls"):
        assert configs[name].model_transaction_policy.decoupled, name


def test_the_ensemble_maps_only_tensors_its_models_declare(
    configs: dict[str, model_config_pb2.ModelConfig],
) -> None:
    ensemble = configs["ensemble"]
    declared_in = {i.name for i in ensemble.input}
    produced = set(declared_in)
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        inputs = {i.name for i in model.input}
        outputs = {o.name for o in model.output}
        for model_input, ensemble_tensor in step.input_map.items():
            assert model_input in inputs, f"{step.model_name} has no input {model_input}"
            assert ensemble_tensor in produced, f"{ensemble_tensor} is not produced before use"
        for model_output, ensemble_tensor in step.output_map.items():
            assert model_output in outputs, f"{step.model_name} has no output {model_output}"
            produced.add(ensemble_tensor)
    assert {o.name for o in ensemble.output} <= produced
