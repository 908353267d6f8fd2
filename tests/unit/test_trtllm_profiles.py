"""The GPU profiles (`localmoe build repository --profile trtllm-engine|trtllm-llmapi`) checked
without a GPU: every config.pbtxt they write parses with Triton's own `model_config.proto`,
leaves no placeholder, keeps the streaming models decoupled and declares NVIDIA's tensor names
and types; model.yaml's parallel sizes are consistent; the build commands printed for Mixtral,
Qwen3-MoE and DeepSeek-V3 (toy checkpoints from `transformers` configs) match golden files
(`LOCALMOE_UPDATE_GOLDEN=1` rewrites them)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from gateway.cli import main
from gateway.local.trtllm import engine
from gateway.local.trtllm.build import Request, build
from gateway.local.trtllm.families import UnsupportedModel
from gateway.local.trtllm.parallel import ParallelError

GOLDEN = Path(__file__).parent / "golden"
T = model_config_pb2.DataType

# NVIDIA's llmapi model (triton_backend/all_models/llmapi/tensorrt_llm/config.pbtxt): name ->
# (type, dims, optional). Ours must declare exactly these.
LLMAPI_INPUTS = {
    "text_input": (T.TYPE_STRING, [-1], False),
    "image_url": (T.TYPE_STRING, [-1], True),
    "streaming": (T.TYPE_BOOL, [1], True),
    "sampling_param_best_of": (T.TYPE_INT32, [1], True),
    "sampling_param_temperature": (T.TYPE_FP32, [1], True),
    "sampling_param_top_k": (T.TYPE_INT32, [1], True),
    "sampling_param_top_p": (T.TYPE_FP32, [1], True),
    "sampling_param_frequency_penalty": (T.TYPE_FP32, [1], True),
    "sampling_param_presence_penalty": (T.TYPE_FP32, [1], True),
    "sampling_param_max_tokens": (T.TYPE_INT32, [1], True),
    "sampling_param_stop": (T.TYPE_STRING, [-1], True),
    "sampling_param_seed": (T.TYPE_UINT64, [1], True),
    "sampling_param_exclude_input_from_output": (T.TYPE_BOOL, [1], True),
    "sampling_param_return_perf_metrics": (T.TYPE_BOOL, [1], True),
    "return_finish_reason": (T.TYPE_BOOL, [1], True),
    "return_stop_reason": (T.TYPE_BOOL, [1], True),
    "return_cumulative_logprob": (T.TYPE_BOOL, [1], True),
    "stop": (T.TYPE_BOOL, [1], True),
    "lora_id": (T.TYPE_UINT64, [1], True),
    "lora_name": (T.TYPE_STRING, [1], True),
    "lora_path": (T.TYPE_STRING, [1], True),
    "lora_ckpt_source": (T.TYPE_STRING, [1], True),
}
LLMAPI_OUTPUTS = {
    "text_output": (T.TYPE_STRING, [-1]),
    "finish_reason": (T.TYPE_STRING, [-1]),
    "stop_reason": (T.TYPE_STRING, [-1]),
    "cumulative_logprob": (T.TYPE_FP32, [-1]),
    "kv_cache_reused_block": (T.TYPE_INT32, [-1]),
    "kv_cache_missed_block": (T.TYPE_INT32, [-1]),
    "kv_cache_alloc_new_blocks": (T.TYPE_INT32, [-1]),
    "kv_cache_alloc_total_blocks": (T.TYPE_INT32, [-1]),
    "kv_cache_hit_rate": (T.TYPE_FP32, [-1]),
    "arrival_time_ns": (T.TYPE_INT64, [1]),
    "first_scheduled_time_ns": (T.TYPE_INT64, [1]),
    "first_token_time_ns": (T.TYPE_INT64, [1]),
    "last_token_time_ns": (T.TYPE_INT64, [1]),
    "acceptance_rate": (T.TYPE_FP32, [1]),
    "total_accepted_draft_tokens": (T.TYPE_INT32, [1]),
    "total_draft_tokens": (T.TYPE_INT32, [1]),
}
# NVIDIA's C++ `tensorrt_llm` model (inflight_batcher_llm/tensorrt_llm/config.pbtxt), the tensors
# ours shares with it: same names, same types. Ours adds only LOCAL_EXTRAS.
TRTLLM_TENSORS = {
    "input_ids": T.TYPE_INT32, "input_lengths": T.TYPE_INT32, "request_output_len": T.TYPE_INT32,
    "end_id": T.TYPE_INT32, "pad_id": T.TYPE_INT32, "beam_width": T.TYPE_INT32,
    "temperature": T.TYPE_FP32, "runtime_top_k": T.TYPE_INT32, "runtime_top_p": T.TYPE_FP32,
    "len_penalty": T.TYPE_FP32, "repetition_penalty": T.TYPE_FP32, "min_tokens": T.TYPE_INT32,
    "presence_penalty": T.TYPE_FP32, "frequency_penalty": T.TYPE_FP32, "seed": T.TYPE_UINT64,
    "return_log_probs": T.TYPE_BOOL, "num_return_sequences": T.TYPE_INT32,
    "stop_words_list": T.TYPE_INT32, "bad_words_list": T.TYPE_INT32, "stop": T.TYPE_BOOL,
    "streaming": T.TYPE_BOOL, "exclude_input_in_output": T.TYPE_BOOL,
    "return_num_input_tokens": T.TYPE_BOOL, "return_num_output_tokens": T.TYPE_BOOL,
    "prompt_embedding_table": T.TYPE_FP16, "prompt_vocab_size": T.TYPE_INT32,
    "prompt_table_extra_ids": T.TYPE_UINT64, "embedding_bias": T.TYPE_FP32,
    "output_ids": T.TYPE_INT32, "sequence_length": T.TYPE_INT32, "cum_log_probs": T.TYPE_FP32,
    "output_log_probs": T.TYPE_FP32, "num_input_tokens": T.TYPE_INT32,
    "num_output_tokens": T.TYPE_INT32,
    "encoder_output_lengths": T.TYPE_INT32, "draft_input_ids": T.TYPE_INT32,
    "decoder_input_ids": T.TYPE_INT32, "decoder_input_lengths": T.TYPE_INT32,
    "draft_acceptance_threshold": T.TYPE_FP32, "runtime_top_p_min": T.TYPE_FP32,
    "runtime_top_p_decay": T.TYPE_FP32, "runtime_top_p_reset_ids": T.TYPE_INT32,
    "early_stopping": T.TYPE_BOOL, "beam_search_diversity_rate": T.TYPE_FP32,
    "return_context_logits": T.TYPE_BOOL, "return_generation_logits": T.TYPE_BOOL,
    "return_perf_metrics": T.TYPE_BOOL, "cross_attention_mask": T.TYPE_BOOL,
    "mrope_rotary_cos_sin": T.TYPE_FP32, "mrope_position_deltas": T.TYPE_INT64,
    "lora_task_id": T.TYPE_UINT64, "lora_weights": T.TYPE_FP16, "lora_config": T.TYPE_INT32,
    "context_phase_params": T.TYPE_UINT8, "skip_cross_attn_blocks": T.TYPE_BOOL,
    "retention_token_range_starts": T.TYPE_INT32, "retention_token_range_ends": T.TYPE_INT32,
    "retention_token_range_priorities": T.TYPE_INT32,
    "retention_token_range_durations_ms": T.TYPE_INT32,
    "retention_decode_priority": T.TYPE_INT32, "retention_decode_duration_ms": T.TYPE_INT32,
    "guided_decoding_guide_type": T.TYPE_STRING, "guided_decoding_guide": T.TYPE_STRING,
    "lookahead_window_size": T.TYPE_INT32, "lookahead_ngram_size": T.TYPE_INT32,
    "lookahead_verification_set_size": T.TYPE_INT32,
    "batch_index": T.TYPE_INT32, "sequence_index": T.TYPE_INT32,
    "kv_cache_alloc_new_blocks": T.TYPE_INT32, "kv_cache_reused_blocks": T.TYPE_INT32,
    "kv_cache_alloc_total_blocks": T.TYPE_INT32, "arrival_time_ns": T.TYPE_INT64,
    "first_scheduled_time_ns": T.TYPE_INT64, "first_token_time_ns": T.TYPE_INT64,
    "last_token_time_ns": T.TYPE_INT64, "acceptance_rate": T.TYPE_FP32,
    "total_accepted_draft_tokens": T.TYPE_INT32, "total_draft_tokens": T.TYPE_INT32,
    # A `${…}` type in NVIDIA's template (the logits' precision): any float type.
    "encoder_input_features": None, "draft_logits": None, "context_logits": None,
    "generation_logits": None,
}  # fmt: skip
FLOATS = {T.TYPE_FP16, T.TYPE_BF16, T.TYPE_FP32}
# LocalMoE's own: inputs of older TensorRT-LLM releases its engine still takes, and top
# logprobs (NVIDIA's backend has none). A tensor that is neither NVIDIA's nor listed here fails.
LOCAL_EXTRAS = {
    "min_length",
    "random_seed",
    "ignore_eos",
    "num_logprobs",
    "top_token_ids",
    "top_log_probs",
}


def _toy(tmp: Path, name: str, config: object, vision: bool = False) -> Path:
    folder = tmp / name
    config.save_pretrained(folder)  # type: ignore[attr-defined]
    if vision:
        (folder / "vision").mkdir()
        (folder / "vision" / "config.json").write_text(json.dumps({"num_image_tokens": 16}))
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Toy checkpoints: config.json is all the build reads."""
    import transformers as tf

    tmp = tmp_path_factory.mktemp("checkpoints")
    small = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8, "vocab_size": 512}
    return {
        "mixtral": _toy(tmp, "mixtral-toy", tf.MixtralConfig(
            **small, intermediate_size=128, num_key_value_heads=4, num_local_experts=8,
            num_experts_per_tok=2, max_position_embeddings=4096)),
        "qwen3_moe": _toy(tmp, "qwen3-moe-toy", tf.Qwen3MoeConfig(
            **small, intermediate_size=128, moe_intermediate_size=32, num_key_value_heads=4,
            num_experts=16, num_experts_per_tok=4, head_dim=16, max_position_embeddings=40960)),
        "deepseek_v3": _toy(tmp, "deepseek-v3-toy", tf.DeepseekV3Config(
            **small, intermediate_size=128, moe_intermediate_size=32, num_key_value_heads=8,
            n_routed_experts=16, num_experts_per_tok=4, max_position_embeddings=4096)),
        "phimoe": _toy(tmp, "phimoe-toy", tf.PhimoeConfig(
            **small, intermediate_size=128, num_key_value_heads=4, num_local_experts=4)),
        "olmoe": _toy(tmp, "olmoe-toy", tf.OlmoeConfig(
            **small, intermediate_size=128, num_experts=8)),
        "vision": _toy(tmp, "qwen3-moe-vision-toy", tf.Qwen3MoeConfig(
            **small, intermediate_size=128, moe_intermediate_size=32, num_key_value_heads=4,
            num_experts=16, num_experts_per_tok=4, head_dim=16), vision=True),
        "llama4": _toy(tmp, "llama4-toy", tf.Llama4Config(
            text_config={**small, "intermediate_size": 128, "intermediate_size_mlp": 128,
                         "num_key_value_heads": 4, "num_local_experts": 4, "head_dim": 8},
            vision_config={"hidden_size": 32, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "intermediate_size": 64})),
    }  # fmt: skip


def _build(profile: str, model_dir: Path, out: Path, **kw: object) -> tuple[Path | None, str]:
    lines: list[str] = []
    request = Request(profile=profile, model_dir=model_dir, out_dir=out, **kw)  # type: ignore[arg-type]
    result = build(request, log=lines.append, tensorrt_llm=None)
    return result, "\n".join(lines) + "\n"


def _configs(repository: Path) -> dict[str, model_config_pb2.ModelConfig]:
    parsed = {}
    for path in sorted(repository.glob("*/config.pbtxt")):
        text = path.read_text()
        assert "${" not in text, f"{path}: a placeholder was left unfilled"
        parsed[path.parent.name] = text_format.Parse(text, model_config_pb2.ModelConfig())
    return parsed


ENGINE_CASES = [("mixtral", {"tp": 4, "ep": 2}), ("qwen3_moe", {"tp": 2}), ("vision", {})]
LLMAPI_CASES = [
    ("mixtral", {"tp": 2, "ep": 2}),
    ("qwen3_moe", {"tp": 4, "moe_tp": 2}),
    ("deepseek_v3", {"tp": 8, "ep": 8, "attention_dp": True}),
    ("llama4", {}),
]


@pytest.mark.parametrize(("name", "split"), ENGINE_CASES)
def test_engine_repository_parses_and_runs_tensorrt_llm_on_the_cpp_backend(
    checkpoints: dict[str, Path], tmp_path: Path, name: str, split: dict
) -> None:
    out, _ = _build("trtllm-engine", checkpoints[name], tmp_path / "repo", **split)
    assert out is not None
    configs = _configs(out)
    for model, config in configs.items():
        assert config.name == model
        assert config.backend or config.platform == "ensemble"
    llm = configs["tensorrt_llm"]
    assert llm.backend == "tensorrtllm"
    params = {k: v.string_value for k, v in llm.parameters.items()}
    assert params["gpt_model_type"] == "inflight_fused_batching"
    assert params["enable_kv_cache_reuse"] == "true"
    assert params["exclude_input_in_output"] == "true"
    assert float(params["kv_cache_free_gpu_mem_fraction"]) == 0.9
    assert Path(params["gpt_model_path"]).name.startswith(checkpoints[name].name)
    for streaming in ("tensorrt_llm", "tensorrt_llm_bls"):
        assert configs[streaming].model_transaction_policy.decoupled, streaming
    # The C++ backend serves tensorrt_llm; the Python models travel with the repository.
    assert not (out / "tensorrt_llm" / "1" / "model.py").exists()
    for model in ("preprocessing", "postprocessing", "tensorrt_llm_bls"):
        code = out / model / "1" / "model.py"
        assert code.is_file() and not code.is_symlink(), model


@pytest.mark.parametrize(("name", "split"), ENGINE_CASES)
def test_engine_tensors_are_nvidias(
    checkpoints: dict[str, Path], tmp_path: Path, name: str, split: dict
) -> None:
    out, _ = _build("trtllm-engine", checkpoints[name], tmp_path / "repo", **split)
    assert out is not None
    llm = _configs(out)["tensorrt_llm"]
    for tensor in [*llm.input, *llm.output]:
        if tensor.name in LOCAL_EXTRAS:
            continue
        assert tensor.name in TRTLLM_TENSORS, f"{tensor.name} is not one of NVIDIA's tensors"
        expected = TRTLLM_TENSORS[tensor.name]
        assert tensor.data_type in FLOATS if expected is None else tensor.data_type == expected


def test_a_vision_checkpoint_gets_the_encoder_and_a_prompt_table_in_the_engine(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    out, printed = _build("trtllm-engine", checkpoints["vision"], tmp_path / "repo")
    assert out is not None
    configs = _configs(out)
    assert {"multimodal_encoders", "ensemble_multimodal"} <= set(configs)
    bls = configs["tensorrt_llm_bls"].parameters
    assert bls["multimodal_encoders_name"].string_value == "multimodal_encoders"
    # 64 sequences x 1 image x 16 features.
    assert "--max_prompt_embedding_table_size 1024" in printed.replace(" \\\n  ", " ")


@pytest.mark.parametrize(("name", "split"), LLMAPI_CASES)
def test_llmapi_repository_is_nvidias_model_with_its_tensors(
    checkpoints: dict[str, Path], tmp_path: Path, name: str, split: dict
) -> None:
    out, _ = _build("trtllm-llmapi", checkpoints[name], tmp_path / "repo", **split)
    assert out is not None
    configs = _configs(out)
    assert set(configs) == {"tensorrt_llm"}
    config = configs["tensorrt_llm"]
    assert config.backend == "python"
    assert config.model_transaction_policy.decoupled
    assert config.max_batch_size == 0
    inputs = {t.name: (t.data_type, list(t.dims), t.optional) for t in config.input}
    outputs = {t.name: (t.data_type, list(t.dims)) for t in config.output}
    assert inputs == LLMAPI_INPUTS
    assert outputs == LLMAPI_OUTPUTS


@pytest.mark.parametrize(("name", "split"), LLMAPI_CASES)
def test_model_yaml_says_what_config_pbtxt_says_with_consistent_parallel_sizes(
    checkpoints: dict[str, Path], tmp_path: Path, name: str, split: dict
) -> None:
    out, _ = _build("trtllm-llmapi", checkpoints[name], tmp_path / "repo", **split)
    assert out is not None
    config = _configs(out)["tensorrt_llm"]
    args = yaml.safe_load((out / "tensorrt_llm" / "1" / "model.yaml").read_text())
    assert args["backend"] == "pytorch"
    assert args["model"] == str(checkpoints[name].resolve())
    tp = args["tensor_parallel_size"]
    assert tp == split.get("tp", 1)
    assert args["moe_tensor_parallel_size"] * args["moe_expert_parallel_size"] == tp
    assert args["enable_attention_dp"] == split.get("attention_dp", False)
    assert args["triton_config"]["decoupled"] == config.model_transaction_policy.decoupled
    assert args["triton_config"]["max_batch_size"] == config.max_batch_size
    assert 0 < args["kv_cache_config"]["free_gpu_memory_fraction"] <= 1
    multimodal = name == "llama4"
    assert args["triton_config"].get("multimodal", False) == multimodal
    assert config.parameters["multimodal"].string_value == str(multimodal).lower()


@pytest.mark.parametrize(
    ("profile", "name", "message"),
    [
        ("trtllm-llmapi", "phimoe", "Phi-3.5-MoE cannot be built for trtllm-llmapi"),
        ("trtllm-engine", "deepseek_v3", "use --profile trtllm-llmapi"),
        ("trtllm-engine", "olmoe", "OLMoE cannot be built for trtllm-engine"),
        ("trtllm-engine", "llama4", "use --profile trtllm-llmapi"),
    ],
)
def test_unsupported_families_are_refused_naming_what_works(
    checkpoints: dict[str, Path], tmp_path: Path, profile: str, name: str, message: str
) -> None:
    with pytest.raises(UnsupportedModel, match=message):
        _build(profile, checkpoints[name], tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ({"tp": 4, "ep": 2, "moe_tp": 4}, "moe_tp × ep must equal tp"),
        ({"tp": 4, "ep": 3}, "does not divide --tp"),
        ({"tp": 3}, "does not divide the 8 attention heads"),
        ({"tp": 8, "ep": 8}, "does not divide the 4 experts"),
        ({"tp": 4, "gpus": 2}, "--gpus is 2"),
    ],
)
def test_inconsistent_parallel_sizes_are_refused(
    checkpoints: dict[str, Path], tmp_path: Path, split: dict, message: str
) -> None:
    with pytest.raises(ParallelError, match=message):
        _build("trtllm-engine", checkpoints["phimoe"], tmp_path / "repo", **split)


def _golden(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("LOCALMOE_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.is_file(), f"no golden file {path}; run with LOCALMOE_UPDATE_GOLDEN=1"
    assert text == path.read_text()


def _normalised(text: str, *paths: tuple[Path, str]) -> str:
    for path, name in paths:
        text = text.replace(str(path.resolve()), name)
    return text


GOLDEN_CASES = [
    ("mixtral-engine-tp4-ep2", "trtllm-engine", "mixtral", ("--tp", "4", "--ep", "2")),
    ("qwen3-moe-engine-tp2-ep2", "trtllm-engine", "qwen3_moe", ("--tp", "2", "--ep", "2")),
    ("qwen3-moe-llmapi-tp2-ep2", "trtllm-llmapi", "qwen3_moe", ("--tp", "2", "--ep", "2")),
    ("deepseek-v3-llmapi-tp8-ep8", "trtllm-llmapi", "deepseek_v3", ("--tp", "8", "--ep", "8")),
]


@pytest.mark.parametrize(("golden", "profile", "name", "flags"), GOLDEN_CASES)
def test_printed_build_commands_match_the_golden_files(
    checkpoints: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    golden: str,
    profile: str,
    name: str,
    flags: Sequence[str],
) -> None:
    out = tmp_path / "repository"
    argv = ["build", "repository", "--profile", profile, "--model-dir", str(checkpoints[name])]
    code = main([*argv, "--out", str(out), *flags, "--dry-run"])
    assert code == 0
    assert not out.exists() and not (tmp_path / "engines").exists(), "a dry run wrote files"
    printed = capsys.readouterr().out
    _golden(golden, _normalised(printed, (checkpoints[name], "$MODEL"), (tmp_path, "$WORK")))


def test_deepseek_v3_on_the_engine_path_is_refused_by_the_command_line(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["build", "repository", "--profile", "trtllm-engine", "--tp", "8", "--ep", "8"]
    code = main([*argv, "--model-dir", str(checkpoints["deepseek_v3"]), "--out", str(tmp_path)])
    assert code == 1
    _golden("deepseek-v3-engine-refused", capsys.readouterr().err)


def test_inside_nvidias_container_the_steps_run_in_order_with_progress(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    ran: list[str] = []
    lines: list[str] = []
    request = Request(
        profile="trtllm-engine", model_dir=checkpoints["mixtral"], out_dir=tmp_path / "repo"
    )
    build(request, log=lines.append, tensorrt_llm="1.2.1", runner=lambda a: ran.append(a[0]) or 0)
    assert ran == ["python3", "trtllm-build"]
    assert [line for line in lines if line.startswith("[")][1] == "[1/2] done in 0.0 s"
    assert (tmp_path / "repo" / "tensorrt_llm" / "config.pbtxt").is_file()


def test_a_failed_step_stops_the_build_and_writes_no_repository(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    request = Request(
        profile="trtllm-engine", model_dir=checkpoints["mixtral"], out_dir=tmp_path / "repo"
    )
    with pytest.raises(engine.BuildError, match="step 1"):
        build(request, log=lambda _: None, tensorrt_llm="1.2.1", runner=lambda _: 2)
    assert not (tmp_path / "repo").exists()


def test_a_newer_tensorrt_llm_is_refused_for_the_engine_path(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    request = Request(
        profile="trtllm-engine", model_dir=checkpoints["mixtral"], out_dir=tmp_path / "repo"
    )
    with pytest.raises(engine.BuildError, match=r"1\.2\.1"):
        build(request, log=lambda _: None, tensorrt_llm="1.3.0", runner=lambda _: 0)


def test_the_prompt_table_holds_the_images_per_request_asked_for(
    checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["build", "repository", "--profile", "trtllm-engine", "--dry-run", "--max-images", "4"]
    argv += ["--model-dir", str(checkpoints["vision"]), "--out", str(tmp_path / "r")]
    argv += ["--max-batch-size", "8"]
    assert main(argv) == 0
    # 8 sequences x 4 images x 16 features.
    assert "--max_prompt_embedding_table_size 512" in capsys.readouterr().out.replace(
        " \\\n  ", " "
    )


def test_a_kv_cache_cap_reaches_the_backend_and_the_llm_api(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    out, _ = _build(
        "trtllm-engine", checkpoints["mixtral"], tmp_path / "e", max_kv_cache_tokens=65536
    )
    assert out is not None
    params = _configs(out)["tensorrt_llm"].parameters
    assert params["max_tokens_in_paged_kv_cache"].string_value == "65536"
    out, _ = _build(
        "trtllm-llmapi", checkpoints["mixtral"], tmp_path / "l", max_kv_cache_tokens=65536
    )
    assert out is not None
    args = yaml.safe_load((out / "tensorrt_llm" / "1" / "model.yaml").read_text())
    assert args["kv_cache_config"]["max_tokens"] == 65536


def test_a_kv_cache_fraction_outside_zero_to_one_is_refused(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="kv-cache-fraction"):
        _build("trtllm-llmapi", checkpoints["mixtral"], tmp_path / "r", kv_cache_fraction=1.5)
