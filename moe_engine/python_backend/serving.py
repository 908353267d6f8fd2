"""Map TensorRT-LLM's request tensors to engine calls, and engine outputs back to tensors.

The Triton `tensorrt_llm` model on CPU is a thin adapter over these functions, so the tensor
interface (names, dtypes, shapes) is defined and tested here, without Triton.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from moe_engine.outputs import TopLogprobs
from moe_engine.python_backend.text import from_words_list

Inputs = Mapping[str, np.ndarray]


class InputError(ValueError):
    """A request tensor is missing or has an invalid value; the message names it."""


def scalar(inputs: Inputs, name: str, default: Any = None) -> Any:
    """The single value of an optional `[1]`/`[1,1]` input, or `default` when absent."""
    array = inputs.get(name)
    if array is None or array.size == 0:
        return default
    value = array.reshape(-1)[0]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value.item() if isinstance(value, np.generic) else value


def input_ids(inputs: Inputs) -> list[int]:
    """Prompt ids from `input_ids` (`[1, L]`), trimmed to `input_lengths` when given."""
    if "input_ids" not in inputs:
        raise InputError("input 'input_ids' is required")
    array = inputs["input_ids"]
    if array.ndim > 1 and array.shape[0] != 1:
        # One prompt per request: flattening a batch would run its prompts as one.
        raise InputError(f"input_ids holds a batch of {array.shape[0]} prompts; send one each")
    ids = array.reshape(-1).astype(np.int64).tolist()
    length = scalar(inputs, "input_lengths")
    if length is not None:
        if not 0 < int(length) <= len(ids):
            raise InputError(f"input_lengths={length} does not match input_ids of {len(ids)}")
        ids = ids[: int(length)]
    if not ids:
        raise InputError("input_ids is empty")
    return ids


def prompt_table(inputs: Inputs) -> tuple[np.ndarray | None, list[int] | None]:
    """The request's `prompt_embedding_table` (`[rows, hidden]`; None when absent or empty, as
    the multimodal ensemble sends for a text-only request) and its `prompt_table_extra_ids`.

    `prompt_vocab_size`, when given, must be the table's row count: TensorRT-LLM reads that
    many rows, so a table of another size means the request was put together wrong.
    """
    table = inputs.get("prompt_embedding_table")
    vocab = scalar(inputs, "prompt_vocab_size")
    rows = 0
    if table is not None:
        if table.ndim == 3 and table.shape[0] == 1:
            table = table[0]  # the batch dimension
        if table.ndim != 2:
            raise InputError(
                f"prompt_embedding_table must be [rows, hidden], got {list(table.shape)}"
            )
        rows = table.shape[0]
    if vocab is not None and int(vocab) != rows:
        raise InputError(f"prompt_vocab_size={vocab} but prompt_embedding_table has {rows} rows")
    extra = inputs.get("prompt_table_extra_ids")
    extra_ids = extra.reshape(-1).astype(np.uint64).tolist() if extra is not None else None
    return (table if rows else None), extra_ids


def sampling_kwargs(inputs: Inputs, default_end_ids: tuple[int, ...]) -> dict[str, Any]:
    """Keyword arguments for `moe_engine.SamplingParams` from TensorRT-LLM's input names."""
    max_new = scalar(inputs, "request_output_len")
    if max_new is None or int(max_new) < 1:
        raise InputError("request_output_len must be a positive integer")
    temperature = float(scalar(inputs, "temperature", 1.0))
    top_k = int(scalar(inputs, "runtime_top_k", 0))
    top_p = float(scalar(inputs, "runtime_top_p", 1.0))
    if temperature < 0:
        raise InputError("temperature must be >= 0")
    if top_k < 0:
        raise InputError("runtime_top_k must be >= 0")
    if not 0.0 < top_p <= 1.0:
        raise InputError("runtime_top_p must be in (0, 1]")
    end_id = scalar(inputs, "end_id")
    seed = scalar(inputs, "seed", scalar(inputs, "random_seed"))
    stop_words = inputs.get("stop_words_list")
    stop_seqs = (
        from_words_list(stop_words.reshape(2, -1).tolist()) if stop_words is not None else []
    )
    return {
        "max_new_tokens": int(max_new),
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "seed": None if seed is None else int(seed),
        "end_ids": (int(end_id),) if end_id is not None and int(end_id) >= 0 else default_end_ids,
        "ignore_eos": bool(scalar(inputs, "ignore_eos", False)),
        "min_tokens": int(scalar(inputs, "min_tokens", scalar(inputs, "min_length", 0))),
        "stop_token_seqs": tuple(tuple(s) for s in stop_seqs),
        "presence_penalty": float(scalar(inputs, "presence_penalty", 0.0)),
        "frequency_penalty": float(scalar(inputs, "frequency_penalty", 0.0)),
        "repetition_penalty": float(scalar(inputs, "repetition_penalty", 1.0)),
        "return_logprobs": bool(scalar(inputs, "return_log_probs", False)),
        "num_logprobs": int(scalar(inputs, "num_logprobs", 0)),
        "guide": guide(inputs),
    }


def guide(inputs: Inputs) -> tuple[str, str] | None:
    """TensorRT-LLM's `guided_decoding_guide_type` and `guided_decoding_guide`; None when no
    type is given (an unguided request). The engine refuses a guide that does not compile."""
    guide_type = scalar(inputs, "guided_decoding_guide_type")
    if not guide_type:
        return None
    return str(guide_type), str(scalar(inputs, "guided_decoding_guide", "") or "")


def output_tensors(
    token_ids: list[int],
    logprobs: list[float] | None,
    cum_logprob: float,
    tops: list[TopLogprobs] | None = None,
    num_logprobs: int = 0,
) -> dict[str, np.ndarray]:
    """TensorRT-LLM's outputs for one beam: `output_ids [1,1,len]`, lengths and logprobs; with
    `num_logprobs` > 0 also `top_token_ids`/`top_log_probs` `[1,1,len,k]`, best first."""
    n = len(token_ids)
    out = {
        "output_ids": np.asarray(token_ids, dtype=np.int32).reshape(1, 1, n),
        "sequence_length": np.asarray([[n]], dtype=np.int32),
        "cum_log_probs": np.asarray([[cum_logprob]], dtype=np.float32),
        "output_log_probs": np.asarray(
            logprobs if logprobs is not None else [0.0] * n, dtype=np.float32
        ).reshape(1, 1, n),
    }
    if num_logprobs > 0:
        tops = tops or []
        k = len(tops[0][0]) if tops else num_logprobs  # fewer when the vocabulary is smaller
        ids = [t[0] for t in tops]
        values = [t[1] for t in tops]
        out["top_token_ids"] = np.asarray(ids, dtype=np.int32).reshape(1, 1, n, k)
        out["top_log_probs"] = np.asarray(values, dtype=np.float32).reshape(1, 1, n, k)
    return out
