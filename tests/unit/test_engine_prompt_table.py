"""Prompt-table ids (TensorRT-LLM's image features): an id `V + i` is embedded from row `i` of
the request's table. Rows equal to some text ids' embeddings must give exactly the logits and
tokens of the text prompt; ids beyond the table are refused before anything is queued."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3MoeConfig

from moe_engine import Engine, EngineConfig, SamplingParams
from moe_engine.prompts import checked_prompt
from tests.engine_support import Collector

VOCAB = 256
HIDDEN = 64
TEXT = [11, 42, 7, 199, 3, 64, 128, 5]
IMAGE_AT = slice(2, 6)  # TEXT[2:6] is replaced by 4 prompt-table ids


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = Qwen3MoeConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        intermediate_size=64,
        max_position_embeddings=256,
        initializer_range=0.1,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-qwen3-moe")
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


@pytest.fixture
def engine(model_dir: Path) -> Iterator[Engine]:
    engine = Engine.from_pretrained(
        model_dir, EngineConfig(max_batch_size=4, max_seq_len=128, num_threads=1)
    )
    yield engine
    engine.shutdown()


def image_prompt(engine: Engine) -> tuple[list[int], torch.Tensor]:
    """TEXT with its IMAGE_AT tokens as table ids, the table holding those tokens' embeddings
    (in reverse row order, so the ids' offsets matter)."""
    replaced = TEXT[IMAGE_AT]
    rows = len(replaced)
    table = engine.model.w.embed[list(reversed(replaced))].clone()
    ids = list(TEXT)
    ids[IMAGE_AT] = [VOCAB + rows - 1 - i for i in range(rows)]
    return ids, table


def greedy(**kwargs: object) -> SamplingParams:
    return SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True, **kwargs)


def test_table_rows_equal_to_text_embeddings_give_the_text_prompts_logits(engine: Engine) -> None:
    model = engine.model
    ids, table = image_prompt(engine)
    text = model.prefill(torch.tensor(TEXT), model.new_cache(1), 0, all_logits=True)
    image = model.prefill(
        torch.tensor(ids), model.new_cache(1), 0, all_logits=True, prompt_table=table
    )
    assert torch.equal(image, text)


def test_an_image_request_generates_the_text_requests_tokens_beside_text_requests(
    engine: Engine,
) -> None:
    ids, table = image_prompt(engine)
    # Penalties keep a per-slot record of the prompt's ids: table ids must not index it.
    params = greedy(repetition_penalty=1.3, presence_penalty=0.5)
    text, image, other = Collector(), Collector(), Collector()
    engine.submit("text", TEXT, params, text)
    engine.submit("image", ids, params, image, prompt_table=table, extra_ids=[0] * len(ids))
    engine.submit("other", [5, 6, 7], greedy(), other)
    engine.start()
    assert image.wait().tokens == text.wait().tokens
    assert other.wait().tokens
    assert engine.stats().peak_active == 3  # decoded together


def test_a_half_precision_table_is_accepted(engine: Engine) -> None:
    ids, table = image_prompt(engine)
    collector = Collector()
    engine.start()
    engine.submit("half", ids, greedy(), collector, prompt_table=table.half())
    assert len(collector.wait().tokens) == 12


@pytest.mark.parametrize(
    ("ids", "rows", "message"),
    [
        ([1, VOCAB, 2], None, "no prompt_embedding_table"),
        ([1, VOCAB + 4, 2], 4, r"prompt table's ids \[256, 260\)"),
        ([1, -1, 2], 4, "outside the vocabulary"),
    ],
)
def test_ids_outside_the_vocabulary_and_the_table_are_refused(
    engine: Engine, ids: list[int], rows: int | None, message: str
) -> None:
    table = None if rows is None else torch.zeros(rows, HIDDEN)
    with pytest.raises(ValueError, match=message):
        engine.submit("bad", ids, greedy(), Collector(), prompt_table=table)
    assert engine.stats().waiting == 0


def test_a_table_of_the_wrong_width_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match=r"must be \[rows, 64\]"):
        engine.submit("bad", [1, VOCAB], greedy(), Collector(), prompt_table=torch.zeros(1, 32))


def test_extra_ids_must_have_one_value_per_prompt_token(engine: Engine) -> None:
    ids, table = image_prompt(engine)
    with pytest.raises(ValueError, match="prompt_table_extra_ids has 3 values"):
        engine.submit("bad", ids, greedy(), Collector(), prompt_table=table, extra_ids=[0] * 3)


def test_a_table_with_a_non_finite_value_is_refused() -> None:
    table = torch.zeros(2, HIDDEN)
    table[1, 3] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        checked_prompt(
            [1, VOCAB + 1], vocab_size=VOCAB, hidden_size=HIDDEN, dtype=torch.float32,
            prompt_table=table,
        )  # fmt: skip


def test_the_checked_table_is_a_copy_in_the_models_dtype() -> None:
    table = torch.ones(2, HIDDEN, dtype=torch.float16)
    prompt = checked_prompt(
        [1, VOCAB], vocab_size=VOCAB, hidden_size=HIDDEN, dtype=torch.float32, prompt_table=table
    )
    table.zero_()
    assert prompt.table is not None and prompt.table.dtype == torch.float32
    assert bool((prompt.table == 1).all())
