"""The engine's scheduling, sampling and lifecycle behaviour on a tiny random Qwen3-MoE."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3MoeConfig

from moe_engine import Engine, EngineConfig, SamplingParams, StepOutput
from moe_engine.sampler import Sampler
from tests.engine_support import Collector

VOCAB = 256
TOP_K = 2
PROMPT = [11, 42, 7, 199, 3, 64, 128, 5]
TIMEOUT = 30


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three layers, the middle one dense, so expert counts cover both kinds."""
    config = Qwen3MoeConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=4,
        num_experts_per_tok=TOP_K,
        moe_intermediate_size=32,
        intermediate_size=64,
        mlp_only_layers=[1],
        max_position_embeddings=512,
        initializer_range=0.1,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-qwen3-moe")
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


@pytest.fixture
def engine(model_dir: Path) -> Iterator[Engine]:
    """A fresh engine, not yet started (tests that need a full batch submit first)."""
    engine = Engine.from_pretrained(
        model_dir, EngineConfig(max_batch_size=4, max_seq_len=256, num_threads=1)
    )
    yield engine
    engine.shutdown()


def run(engine: Engine, params: SamplingParams, prompt: list[int] = PROMPT) -> Collector:
    engine.start()
    collector = Collector()
    engine.submit(f"req-{time.monotonic_ns()}", prompt, params, collector)
    return collector.wait()


def greedy(max_new_tokens: int = 16, **kwargs) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=0, **kwargs)


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.001)


def test_greedy_generation_is_deterministic(engine: Engine) -> None:
    assert run(engine, greedy()).tokens == run(engine, greedy()).tokens


def test_top_k_one_is_greedy(engine: Engine) -> None:
    sampled = SamplingParams(max_new_tokens=16, temperature=1.5, top_k=1)
    assert run(engine, sampled).tokens == run(engine, greedy()).tokens


def test_same_seed_gives_same_tokens_alone_and_in_a_batch(engine: Engine) -> None:
    params = SamplingParams(max_new_tokens=24, temperature=1.0, top_p=0.95, top_k=50, seed=7)
    alone = run(engine, params).tokens
    # Submitted before the batch runs, these four are prefilled together and decoded as one batch.
    batch = [Collector() for _ in range(4)]
    for i, collector in enumerate(batch):
        seed = 7 if i == 2 else 100 + i
        prompt = PROMPT if i == 2 else [i + 1, 2 * i + 9, 77]
        engine.submit(f"b{i}", prompt, SamplingParams(**{**vars(params), "seed": seed}), collector)
    for collector in batch:
        collector.wait()
    assert engine.stats().peak_active == 4
    assert batch[2].tokens == alone
    assert batch[0].tokens != alone


def test_max_new_tokens_gives_exactly_that_many_and_length(engine: Engine) -> None:
    result = run(engine, SamplingParams(max_new_tokens=9, temperature=1.0, seed=1))
    assert len(result.tokens) == 9
    assert [out.finished for out in result.outputs] == [False] * 8 + [True]
    assert result.final.finish_reason == "length"


def test_end_id_stops_without_returning_the_end_token(engine: Engine) -> None:
    reference = run(engine, greedy()).tokens
    end = first_new_token_at(reference, 3)
    result = run(engine, greedy(end_ids=(end,)))
    assert result.tokens == reference[: reference.index(end)]
    assert result.final.finish_reason == "stop"
    assert result.final.token_ids == []


def test_ignore_eos_keeps_generating_past_end_id(engine: Engine) -> None:
    reference = run(engine, greedy()).tokens
    result = run(engine, greedy(end_ids=(reference[0],), ignore_eos=True))
    assert result.tokens == reference
    assert result.final.finish_reason == "length"


def test_min_tokens_suppresses_end_id(engine: Engine) -> None:
    reference = run(engine, greedy()).tokens
    end = reference[0]  # greedy would stop immediately without min_tokens
    result = run(engine, greedy(end_ids=(end,), min_tokens=5))
    assert len(result.tokens) >= 5
    assert end not in result.tokens[:5]


def test_stop_token_sequence_stops_and_is_included(engine: Engine) -> None:
    reference = run(engine, greedy()).tokens
    i = reference.index(first_new_token_at(reference, 4))
    stop = tuple(reference[i - 1 : i + 1])
    result = run(engine, greedy(stop_token_seqs=((999_999,), stop)))
    assert result.tokens == reference[: i + 1]
    assert result.final.finish_reason == "stop"


def test_logprobs_are_returned_for_each_token(engine: Engine) -> None:
    result = run(engine, SamplingParams(max_new_tokens=6, seed=3, return_logprobs=True))
    logprobs = [lp for out in result.outputs for lp in out.logprobs]
    assert len(logprobs) == 6
    assert all(lp <= 0 for lp in logprobs)


def test_presence_and_frequency_penalties_push_generated_tokens_down() -> None:
    sampler = Sampler(num_slots=1, vocab_size=4)
    params = greedy(presence_penalty=1.0, frequency_penalty=0.5)
    sampler.assign(0, params, prompt=torch.tensor([0]))
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0]])
    # Token 1 wins, then pays 1.0 + 0.5 = 1.5 (→ 1.5, so token 2 wins), then 1.0 + 0.5 again.
    picks = [sampler.sample(logits.clone(), 0, 1)[0][0] for _ in range(3)]
    assert picks == [1, 2, 1]


def test_repetition_penalty_applies_to_prompt_tokens() -> None:
    sampler = Sampler(num_slots=1, vocab_size=3)
    sampler.assign(0, greedy(repetition_penalty=2.0), prompt=torch.tensor([2]))
    tokens = sampler.sample(torch.tensor([[0.0, 1.5, 2.0]]), 0, 1).tokens
    assert tokens == [1]  # token 2's logit 2.0 is halved below token 1's 1.5


def test_cancel_finishes_request_and_frees_slot_within_one_step(engine: Engine) -> None:
    engine.start()
    collector = Collector()
    engine.submit("long", PROMPT, greedy(200), collector)
    wait_until(lambda: len(collector.outputs) >= 3)
    assert engine.cancel("long")
    produced = len(collector.tokens)
    collector.wait()
    assert collector.final.finish_reason == "cancelled"
    assert len(collector.tokens) <= produced + 1
    wait_until(lambda: engine.stats().active == 0)
    assert not engine.cancel("long")


def test_request_submitted_mid_generation_joins_the_running_batch(engine: Engine) -> None:
    late_prompt = [9, 8, 7, 6]
    alone = run(engine, greedy(20), late_prompt).tokens
    first, late = Collector(), Collector()
    engine.submit("first", PROMPT, greedy(120), first)
    wait_until(lambda: len(first.outputs) >= 5)
    engine.submit("late", late_prompt, greedy(20), late)
    late.wait()
    assert not first.done.is_set()  # the late request finished while the first was running
    first.wait()
    stats = engine.stats()
    assert stats.peak_active == 2
    assert stats.decode_tokens_total > stats.decode_steps_total
    assert late.tokens == alone


def test_request_keeps_its_tokens_when_moved_into_a_freed_slot(engine: Engine) -> None:
    params = SamplingParams(max_new_tokens=30, temperature=1.0, seed=5)
    alone = run(engine, params).tokens
    short, long = Collector(), Collector()
    # Slot 0 finishes first, so the long request's KV cache and sampler state move to slot 0.
    engine.submit("short", [1, 2, 3], greedy(4), short)
    engine.submit("long", PROMPT, params, long)
    assert long.wait().tokens == alone
    assert short.done.is_set()


def test_requests_beyond_max_batch_size_wait_for_a_free_slot(engine: Engine) -> None:
    collectors = [Collector() for _ in range(6)]
    for i, collector in enumerate(collectors):
        engine.submit(f"q{i}", PROMPT, greedy(8), collector)
    assert engine.stats().waiting == 6
    engine.start()
    for collector in collectors:
        assert collector.wait().final.finish_reason == "length"
    stats = engine.stats()
    assert (stats.peak_active, stats.finished_total, stats.active) == (4, 6, 0)


def test_expert_counts_sum_to_tokens_times_top_k_per_moe_layer(engine: Engine) -> None:
    assert engine.expert_counts() == [[0] * 4] * 3
    run(engine, SamplingParams(max_new_tokens=10, seed=0))
    counts = engine.expert_counts()
    # The model sees the prompt, then each generated token except the last.
    tokens_seen = len(PROMPT) + 10 - 1
    assert [sum(row) for row in counts] == [tokens_seen * TOP_K, 0, tokens_seen * TOP_K]
    assert engine.moe_layers == [0, 2]
    assert sum(map(sum, counts)) == tokens_seen * TOP_K * len(engine.moe_layers)


def test_callback_error_finishes_request_with_error_and_engine_keeps_serving(
    engine: Engine,
) -> None:
    engine.start()
    seen: list[StepOutput] = []

    def failing(output: StepOutput) -> None:
        seen.append(output)
        if not output.finished:
            raise RuntimeError("client went away")

    engine.submit("bad", PROMPT, greedy(10), failing)
    wait_until(lambda: bool(seen) and seen[-1].finished)
    assert seen[-1].finish_reason == "error"
    assert run(engine, greedy(3)).final.finish_reason == "length"


@pytest.mark.parametrize(
    ("prompt", "params", "message"),
    [
        ([], greedy(), "prompt must contain at least one token"),
        ([1, VOCAB], greedy(), f"prompt token id {VOCAB} is outside the vocabulary"),
        ([-1], greedy(), "prompt token id -1 is outside the vocabulary"),
        (PROMPT, greedy(250), "exceeds the engine's max_seq_len of 256"),
        (PROMPT, greedy(0), "max_new_tokens must be >= 1"),
        (PROMPT, SamplingParams(4, temperature=-1), "temperature must be >= 0"),
        (PROMPT, SamplingParams(4, top_p=0), r"top_p must be in \(0, 1\]"),
        (PROMPT, greedy(4, min_tokens=5), "min_tokens must be between 0 and max_new_tokens"),
        (PROMPT, greedy(end_ids=(VOCAB,)), "end_ids must be token ids"),
    ],
)
def test_bad_input_raises_value_error(
    engine: Engine, prompt: list[int], params: SamplingParams, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        engine.submit("x", prompt, params, Collector())


def test_duplicate_request_id_raises_value_error(engine: Engine) -> None:
    engine.submit("same", PROMPT, greedy(), Collector())  # not started: still in flight
    with pytest.raises(ValueError, match="request id 'same' is already in flight"):
        engine.submit("same", PROMPT, greedy(), Collector())


def test_shutdown_cancels_outstanding_requests_and_stops_the_thread(engine: Engine) -> None:
    running, queued = Collector(), Collector()
    engine.start()
    engine.submit("running", PROMPT, greedy(200), running)
    wait_until(lambda: len(running.outputs) >= 2)
    engine.shutdown()
    assert running.wait().final.finish_reason == "cancelled"
    assert not any(t.name == "moe-engine" for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="shut down"):
        engine.submit("queued", PROMPT, greedy(), queued)


def first_new_token_at(tokens: list[int], start: int) -> int:
    """A token at or after `start` that does not occur earlier (so the stop point is unique)."""
    for i in range(start, len(tokens)):
        if tokens[i] not in tokens[:i]:
            return tokens[i]
    pytest.skip("greedy output has no fresh token to stop on")
