"""Incremental detokenisation and stop strings, on a real byte-level BPE tokenizer."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from moe_engine.python_backend.text import (
    IncrementalDetokenizer,
    StopStringMatcher,
    from_words_list,
    to_words_list,
)
from tests.support import byte_level_tokenizer

SAMPLE = "Hello  world, café — 東京 🙂 naïve\tcode\n  indented ünïcödé"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return byte_level_tokenizer(["hello world code indented"] * 50, vocab_size=400)


def test_token_by_token_deltas_equal_full_decode(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(SAMPLE).ids
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.add([i]) for i in ids] + [detok.flush()]
    assert "".join(deltas) == tokenizer.decode(ids) == SAMPLE
    assert all("\ufffd" not in d for d in deltas)


def test_split_multibyte_character_is_held_until_complete(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("🙂").ids
    assert len(ids) > 1  # four UTF-8 bytes, unmerged in this vocabulary
    detok = IncrementalDetokenizer(tokenizer)
    assert [detok.add([i]) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.add(ids[-1:]) == "🙂"


def test_stop_string_is_cut_and_never_emitted_across_deltas() -> None:
    matcher = StopStringMatcher(["END"])
    out = [matcher.feed(d) for d in ["abc E", "N", "D tail"]]
    assert "".join(out) == "abc "
    assert matcher.stopped


def test_partial_stop_string_is_released_when_it_does_not_complete() -> None:
    matcher = StopStringMatcher(["END"])
    assert matcher.feed("x EN") == "x "
    assert matcher.feed("O") == "ENO"
    assert matcher.feed("E") == ""
    assert matcher.flush() == "E"
    assert not matcher.stopped


def test_earliest_of_several_stop_strings_wins() -> None:
    matcher = StopStringMatcher(["world", "lo"])
    assert matcher.feed("hello world") == "hel"


def test_words_list_round_trips() -> None:
    seqs = [[5, 6], [7], [8, 9, 10]]
    words = to_words_list(seqs)
    assert words == [[5, 6, 7, 8, 9, 10], [2, 3, 6, -1, -1, -1]]
    assert from_words_list(words) == seqs
