"""`moe_build.tiny`: the generated default model loads, tokenizes, templates and rebuilds."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment
from moe_build.checkpoint import save_checkpoint
from moe_build.shapes import draw_shape
from moe_build.tiny import build_tiny_model
from moe_build.tools import call_text, render, tool_turns
from moe_build.train import tiny_config
from safetensors import safe_open
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from moe_engine.vision import VisionEncoder, is_vision_checkpoint

STEPS = 5  # enough to exercise training; quality is not under test here
VISION_STEPS = 5
TOOL_STEPS = 5
REPO_ROOT = Path(__file__).resolve().parents[2]

# Every test but one trains a tiny model (the module's, and rebuilds); that one needs torch and
# transformers all the same. `make test-quick` leaves the module out.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny") / "model",
        steps=STEPS,
        vision_steps=VISION_STEPS,
        tool_steps=TOOL_STEPS,
        progress=False,
    )


def quick_build(out: Path, **kw) -> Path:
    """A rebuild without the held-out checks, which change no byte of the weights."""
    return build_tiny_model(
        out,
        steps=STEPS,
        vision_steps=VISION_STEPS,
        tool_steps=TOOL_STEPS,
        evaluate=False,
        progress=False,
        **kw,
    )


def render_chat(model_dir: Path, messages: list[dict], *, add_generation_prompt: bool) -> str:
    """Render the saved chat template the way transformers does: a sandboxed Jinja env."""
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(config["chat_template"]).render(
        messages=messages, add_generation_prompt=add_generation_prompt
    )


def test_checkpoint_loads_in_transformers_without_missing_or_unexpected_keys(model_dir: Path):
    model, info = AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True)

    assert type(model).__name__ == "Qwen3MoeForCausalLM"
    assert info["missing_keys"] == set()
    assert info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set()


def test_config_is_qwen3_moe_with_at_least_eight_experts_routed_top_two(model_dir: Path):
    config = json.loads((model_dir / "config.json").read_text())

    assert config["model_type"] == "qwen3_moe"
    assert config["num_experts"] >= 8
    assert config["num_experts_per_tok"] == 2
    assert config["mlp_only_layers"] == []
    assert config["num_hidden_layers"] >= 4


def test_weights_use_the_hub_per_expert_names(model_dir: Path):
    with safe_open(model_dir / "model.safetensors", "pt") as f:
        names = set(f.keys())

    assert "model.layers.3.mlp.experts.7.gate_proj.weight" in names
    assert "model.layers.3.mlp.experts.7.up_proj.weight" in names
    assert "model.layers.3.mlp.experts.7.down_proj.weight" in names
    assert "model.layers.0.mlp.gate.weight" in names
    assert "model.layers.0.self_attn.q_norm.weight" in names
    assert not [n for n in names if n.endswith(("gate_up_proj", "experts.down_proj"))]
    assert "lm_head.weight" not in names  # tied to the embeddings


def test_saved_per_expert_weights_reproduce_the_in_memory_model(tmp_path: Path):
    torch.manual_seed(0)
    config = tiny_config(256, eos_token_id=2, pad_token_id=0)
    config.num_hidden_layers = 2
    original = AutoModelForCausalLM.from_config(config).eval()
    save_checkpoint(original, tmp_path, generation_config={})
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 256, (1, 16))

    with torch.no_grad():
        expected, actual = original(ids).logits, loaded(ids).logits

    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_tokenizer_round_trips_spaces_and_non_ascii_exactly(model_dir: Path):
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    text = "  café — 東京 🙂\n\tdouble  space, trailing "

    ids = tokenizer.encode(text).ids

    assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_tokenizer_config_loads_with_chatml_special_tokens(model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    assert tokenizer.model_max_length == 2048
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.encode("<|im_start|>user") == [im_start, *tokenizer.encode("user")]


def test_chat_template_renders_chatml_ending_in_assistant_generation_prompt(model_dir: Path):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What does os.path.join do?"},
    ]

    prompt = render_chat(model_dir, messages, add_generation_prompt=True)

    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat does os.path.join do?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chat_template_joins_the_text_parts_of_list_content(model_dir: Path):
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": "world"}]
    messages = [{"role": "user", "content": parts}]

    prompt = render_chat(model_dir, messages, add_generation_prompt=False)

    assert prompt == "<|im_start|>user\nHello\nworld<|im_end|>\n"


def test_generation_stops_at_im_end_and_endoftext(model_dir: Path):
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    generation = json.loads((model_dir / "generation_config.json").read_text())

    assert generation["eos_token_id"] == [
        tokenizer.token_to_id("<|im_end|>"),
        tokenizer.token_to_id("<|endoftext|>"),
    ]
    assert generation["pad_token_id"] == tokenizer.token_to_id("<|endoftext|>")


def test_same_seed_rebuilds_byte_identical_weights_and_tokenizer(model_dir: Path, tmp_path: Path):
    again = quick_build(tmp_path / "again")

    for name in ("model.safetensors", "tokenizer.json", "config.json", "vision/model.safetensors"):
        assert (again / name).read_bytes() == (model_dir / name).read_bytes(), name


def test_different_seed_gives_different_weights(model_dir: Path, tmp_path: Path):
    other = quick_build(tmp_path / "other", seed=1)

    for weights in ("model.safetensors", "vision/model.safetensors"):
        assert (other / weights).read_bytes() != (model_dir / weights).read_bytes()


def test_rebuild_replaces_an_existing_model_directory(tmp_path: Path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.bin").write_bytes(b"old model")

    build_tiny_model(out, steps=0, vision_steps=0, tool_steps=0, evaluate=False, progress=False)

    assert not (out / "stale.bin").exists()
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# The child dumps every thread's stack on SIGUSR1, so a build that ignores a signal says where.
_STACKS_ON_USR1 = "import faulthandler, signal; faulthandler.register(signal.SIGUSR1); "


def _stop_mid_build(proc: subprocess.Popen, staging: Path, signum: int) -> bytes:
    """Send `signum` once the build is training (its tokenizer is written) until it exits.

    Returns its stderr. One clean-clone CI run (loaded machine) sat
    60 s after a single SIGINT, never reproduced since: a miss dumps the stacks and is warned.
    """
    try:
        deadline = time.monotonic() + 120
        while not (staging / "tokenizer.json").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "build never reached training"
            time.sleep(0.2)
        for sent in range(1, 7):
            proc.send_signal(signum)
            try:
                _, stderr = proc.communicate(timeout=20)
                break
            except subprocess.TimeoutExpired:
                if sent == 1:
                    proc.send_signal(signal.SIGUSR1)
        else:
            proc.send_signal(signal.SIGUSR1)
            time.sleep(1)
            proc.kill()
            pytest.fail(f"the build ignored {signum!r} for 2 minutes: {proc.stderr.read()[-4000:]}")
    finally:
        proc.kill()
        proc.wait()
    if sent > 1:
        warnings.warn(f"the build needed {sent} signals; stacks: {stderr[-4000:]!r}", stacklevel=2)
    return stderr


def test_interrupted_build_leaves_no_model_directory(tmp_path: Path):
    out = tmp_path / "model"
    staging = tmp_path / "model.tmp"
    code = _STACKS_ON_USR1 + (
        "from pathlib import Path; from moe_build.tiny import build_tiny_model; "
        f"build_tiny_model(Path({str(out)!r}), steps=10**6, vision_steps=10**6, progress=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stderr=subprocess.PIPE)

    stderr = _stop_mid_build(proc, staging, signal.SIGINT)

    assert b"KeyboardInterrupt" in stderr
    assert not out.exists()
    assert not staging.exists()


def test_sigterm_stops_the_build_command_and_cleans_up(tmp_path: Path):
    out = tmp_path / "model"
    staging = tmp_path / "model.tmp"
    argv = ["build", "tiny", "--out", str(out), "--steps", str(10**6)]
    code = _STACKS_ON_USR1 + f"import sys; from gateway.cli import main; sys.exit(main({argv!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stderr=subprocess.PIPE)

    _stop_mid_build(proc, staging, signal.SIGTERM)

    assert proc.returncode == 130  # the CLI's exit status for an interrupted command
    assert not out.exists()
    assert not staging.exists()


def test_readme_describes_the_model(model_dir: Path):
    readme = (model_dir / "README.md").read_text()

    assert "Qwen3MoeForCausalLM" in readme
    assert f"--steps {STEPS}" in readme
    assert 'of "What is in this image?"' in readme  # the held-out accuracy
    assert "classification pre-training" in readme
    assert "of single calls exactly right" in readme  # the held-out tool turns
    assert "Tool warm-up: the attention layers alone" in readme


def test_the_checkpoint_has_a_vision_tower_the_encoder_loads(model_dir: Path):
    encoder = VisionEncoder.from_dir(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    pixels = torch.from_numpy(encoder.preprocess(draw_shape("red", "circle")))[None]

    assert is_vision_checkpoint(model_dir)
    assert encoder.config.text_hidden_size == config["hidden_size"]
    assert encoder.encode(pixels).shape == (1, encoder.config.num_image_tokens, 256)


def test_the_image_token_is_one_special_id(model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    image_id = tokenizer.convert_tokens_to_ids("<|image|>")

    assert tokenizer.encode("<|image|>\nWhat is in this image?")[0] == image_id
    assert tokenizer.encode("<|image|>").count(image_id) == 1
    assert "<|image|>" in tokenizer.all_special_tokens


def test_chat_template_renders_image_parts_as_the_image_token(model_dir: Path):
    parts = [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "What is in this image?"},
    ]
    messages = [{"role": "user", "content": parts}]

    prompt = render_chat(model_dir, messages, add_generation_prompt=True)

    assert prompt == (
        "<|im_start|>user\n<|image|>\nWhat is in this image?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_eval_json_records_the_held_out_checks(model_dir: Path):
    report = json.loads((model_dir / "vision" / "eval.json").read_text())

    assert report["vqa"]["held_out_images"] == 360
    assert 0.0 <= report["vqa"]["what"] <= 1.0
    assert 0.0 <= report["docstrings"]["rate"] <= 1.0
    assert "first 3 words" in report["docstrings"]["criterion"]
    assert report["settings"]["steps"] == STEPS
    assert 0.0 <= report["tools"]["call"] <= 1.0
    assert set(report["tools"]["turns"]) == {"call", "calls", "reply", "text"}


def test_chat_template_renders_tools_as_transformers_does(model_dir: Path):
    # transformers' apply_chat_template is the reference renderer: the model trains on prompts
    # rendered as every server renders them.
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for turn in tool_turns(30, seed=1):
        rendered = tokenizer.apply_chat_template(
            list(turn.messages), tools=list(turn.tools), tokenize=False, add_generation_prompt=True
        )
        assert rendered == render(turn)


def test_the_tool_call_tags_are_tokens_that_decoding_keeps(model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = call_text("get_weather", {"city": "Paris"})
    ids = tokenizer.encode(text)

    assert ids[0] == tokenizer.convert_tokens_to_ids("<tool_call>")
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
