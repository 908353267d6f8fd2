"""Embeddings from the MoE model: transformers' final hidden states, mean-pooled and normalised,
the same for an input alone or packed with others; the `embeddings` model's tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3MoeConfig

from moe_engine.embeddings import Embedder
from moe_engine.python_backend.embedding_requests import EmbeddingBatcher
from moe_engine.python_backend.serving import InputError
from moe_engine.python_backend.text import TokenizerInfo
from tests.support import byte_level_tokenizer

VOCAB = 256
CONFIG = Qwen3MoeConfig(
    vocab_size=VOCAB,
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_experts_per_tok=2,
    max_position_embeddings=64,
    initializer_range=0.1,
    num_hidden_layers=2,
    head_dim=32,
    num_experts=4,
    moe_intermediate_size=32,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_config(CONFIG).eval()
    path = tmp_path_factory.mktemp("qwen3_moe")
    reference.save_pretrained(path)
    return reference, path


@pytest.fixture(scope="module")
def embedder(checkpoint: tuple[torch.nn.Module, Path]) -> Embedder:
    return Embedder.from_pretrained(checkpoint[1], max_seq_len=32)


def test_embedding_is_the_normalised_mean_of_transformers_last_hidden_state(
    checkpoint: tuple[torch.nn.Module, Path], embedder: Embedder
) -> None:
    reference, _ = checkpoint
    ids = [5, 17, 99, 3, 42, 7, 200]
    with torch.no_grad():
        hidden = reference.model(torch.tensor([ids])).last_hidden_state[0]
    expected = hidden.mean(dim=0)
    expected = expected / expected.norm()
    torch.testing.assert_close(embedder.embed([ids])[0], expected, atol=1e-5, rtol=0)


def test_inputs_packed_together_equal_each_alone(embedder: Embedder) -> None:
    generator = torch.Generator().manual_seed(1)
    sequences = [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in (3, 11, 1)]
    together = embedder.embed(sequences)
    for row, ids in enumerate(sequences):
        torch.testing.assert_close(together[row], embedder.embed([ids])[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(together.norm(dim=-1), torch.ones(3))


def test_an_input_longer_than_the_context_is_refused(embedder: Embedder) -> None:
    with pytest.raises(ValueError, match=r"1\.\.32 tokens"):
        embedder.embed([[1] * 33])


@pytest.fixture(scope="module")
def batcher(embedder: Embedder) -> EmbeddingBatcher:
    tokenizer = byte_level_tokenizer(["hello world", "a b c"], vocab_size=VOCAB)
    info = TokenizerInfo(tokenizer, eos_ids=(0,), pad_id=0)
    return EmbeddingBatcher(
        lambda seqs: embedder.embed(seqs).numpy(), info, max_tokens=32, vocab_size=VOCAB
    )


def test_a_batch_answers_each_request_and_fails_only_the_bad_ones(
    batcher: EmbeddingBatcher,
) -> None:
    text = {"text_input": np.array([[b"hello world"]], dtype=object)}
    ids = batcher.tokens(text)
    requests = [
        text,
        {
            "input_ids": np.array([[*ids, 0, 0]], dtype=np.int32),
            "input_lengths": np.array([[len(ids)]], dtype=np.int32),
        },
        {"input_ids": np.array([[1] * 40], dtype=np.int32)},
        {"text_input": np.array([[b""]], dtype=object)},
    ]
    batch = batcher.run(requests)
    first, second, too_long, empty = batch.results
    assert isinstance(first, dict) and isinstance(second, dict)
    assert first["embedding"].shape == (1, 64) and first["embedding"].dtype == np.float32
    np.testing.assert_allclose(first["embedding"], second["embedding"], atol=1e-6)
    assert first["num_input_tokens"].tolist() == [[len(ids)]]
    assert isinstance(too_long, InputError) and "40 tokens" in str(too_long)
    assert isinstance(empty, InputError)
    assert batch.tokens == 2 * len(ids)


def test_text_and_ids_together_or_ids_outside_the_vocabulary_are_refused(
    batcher: EmbeddingBatcher,
) -> None:
    with pytest.raises(InputError, match="not both"):
        batcher.tokens(
            {"text_input": np.array([[b"a"]], dtype=object), "input_ids": np.array([[1]])}
        )
    with pytest.raises(InputError, match="outside the vocabulary"):
        batcher.tokens({"input_ids": np.array([[VOCAB]], dtype=np.int32)})
