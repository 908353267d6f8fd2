"""Guided decoding and top logprobs through the request tensors: `tensorrt_llm`'s inputs and
outputs, and the BLS forwarding them and relaying top logprobs the same streamed or not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moe_engine.python_backend.bls_requests import parse_generation
from moe_engine.python_backend.bls_stream import TextState, text_tensors
from moe_engine.python_backend.serving import guide, output_tensors, sampling_kwargs
from moe_engine.python_backend.text import TokenizerInfo, load_tokenizer


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> TokenizerInfo:
    return load_tokenizer(str(tiny_model_dir))


def strings(value: str) -> np.ndarray:
    return np.asarray([[value.encode()]], dtype=np.object_)


def test_guide_inputs_become_the_engine_guide() -> None:
    inputs = {
        "guided_decoding_guide_type": strings("json_schema"),
        "guided_decoding_guide": strings('{"type": "object"}'),
    }
    assert guide(inputs) == ("json_schema", '{"type": "object"}')
    assert guide({}) is None
    assert guide({"guided_decoding_guide_type": strings("")}) is None


def test_num_logprobs_is_a_sampling_parameter() -> None:
    inputs = {"request_output_len": np.asarray([[4]]), "num_logprobs": np.asarray([[5]])}
    assert sampling_kwargs(inputs, (0,))["num_logprobs"] == 5
    assert sampling_kwargs({"request_output_len": np.asarray([[4]])}, (0,))["num_logprobs"] == 0


def test_top_outputs_are_beam_len_k_best_first() -> None:
    tops = [([5, 2], [-0.1, -2.5]), ([7, 1], [-0.3, -1.0])]
    out = output_tensors([5, 7], None, 0.0, tops, num_logprobs=2)
    assert out["top_token_ids"].shape == (1, 1, 2, 2)
    assert out["top_token_ids"].dtype == np.int32
    assert out["top_log_probs"][0, 0].ravel().tolist() == pytest.approx([-0.1, -2.5, -0.3, -1.0])
    assert "top_log_probs" not in output_tensors([5, 7], None, 0.0)
    empty = output_tensors([], None, 0.0, [], num_logprobs=3)
    assert empty["top_log_probs"].shape == (1, 1, 0, 3)


def test_the_bls_forwards_guide_and_num_logprobs(tok: TokenizerInfo) -> None:
    inputs = {
        "text_input": strings("hello"),
        "max_tokens": np.asarray([[8]], dtype=np.int32),
        "guided_decoding_guide_type": strings("regex"),
        "guided_decoding_guide": strings("[0-9]+"),
        "num_logprobs": np.asarray([[3]], dtype=np.int32),
    }
    call = parse_generation(inputs, tok)
    assert call.inputs["guided_decoding_guide_type"].tolist() == [[b"regex"]]
    assert call.inputs["guided_decoding_guide"].tolist() == [[b"[0-9]+"]]
    assert call.inputs["num_logprobs"].tolist() == [[3]]
    assert {"top_token_ids", "top_log_probs"} <= set(call.outputs)


def test_the_bls_refuses_more_than_twenty_logprobs(tok: TokenizerInfo) -> None:
    inputs = {
        "text_input": strings("hello"),
        "max_tokens": np.asarray([[8]], dtype=np.int32),
        "num_logprobs": np.asarray([[21]], dtype=np.int32),
    }
    with pytest.raises(ValueError, match="num_logprobs"):
        parse_generation(inputs, tok)


def relay_tops(tok: TokenizerInfo, stream: bool) -> tuple[list[int], np.ndarray, np.ndarray]:
    ids = tok.tokenizer.encode("hello world, again").ids
    state = TextState(tok.tokenizer, [], 100, stream=stream, logprobs=False, num_logprobs=2)
    tensors = []
    for i, token in enumerate(ids):
        piece = state.add([token], None, [([token, 0], [-0.5 * i, -9.0])])
        if piece is not None:
            tensors.append(text_tensors(piece, 3))
    tensors.append(text_tensors(state.finish(), 3))
    out_ids = [t for x in tensors for t in x["output_token_ids"][0].tolist()]
    top_ids = np.concatenate([x["top_token_ids"][0] for x in tensors])
    top_lp = np.concatenate([x["top_log_probs"][0] for x in tensors])
    return out_ids, top_ids, top_lp


def test_top_logprobs_are_the_same_streamed_and_not(tok: TokenizerInfo) -> None:
    streamed, whole = relay_tops(tok, stream=True), relay_tops(tok, stream=False)
    assert streamed[0] == whole[0]
    assert streamed[1].tolist() == whole[1].tolist()
    assert streamed[2].tolist() == whole[2].tolist()
    assert len(streamed[0]) == len(streamed[1])
