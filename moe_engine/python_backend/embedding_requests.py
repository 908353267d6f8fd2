"""The `embeddings` model's work: one input per request in, its embedding out, many at once.

Inputs take TensorRT-LLM's names, so a client of NVIDIA's models already knows them: one text as
`text_input` (BYTES `[1, 1]`), or its tokens as `input_ids` (INT32 `[1, L]`) with optional
`input_lengths` (`[1, 1]`). Outputs: `embedding` (FP32 `[1, hidden]`, unit L2 norm) and
`num_input_tokens` (INT32 `[1, 1]`). Triton's dynamic batcher hands one `execute` several
requests; their inputs run through the model in one packed forward
(`moe_engine.embeddings.Embedder.embed`), and a bad input fails only its own request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from moe_engine.python_backend.serving import InputError, Inputs, input_ids, scalar
from moe_engine.python_backend.text import TokenizerInfo, encode


@dataclass(frozen=True)
class EmbeddedBatch:
    """One `execute`'s results: per request its outputs or the InputError it gets."""

    results: list[dict[str, np.ndarray] | InputError]
    tokens: int  # tokens embedded in the one forward


class EmbeddingBatcher:
    """Tokenises and bounds each request's input, then embeds them together with `embed`
    (token sequences -> `[n, hidden]` float32)."""

    def __init__(
        self,
        embed: Callable[[Sequence[Sequence[int]]], np.ndarray],
        tokenizer: TokenizerInfo,
        *,
        max_tokens: int,
        vocab_size: int,
    ) -> None:
        self._embed = embed
        self._tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.vocab_size = vocab_size

    def run(self, requests: Sequence[Inputs]) -> EmbeddedBatch:
        parsed: list[list[int] | InputError] = []
        for inputs in requests:
            try:
                parsed.append(self.tokens(inputs))
            except InputError as exc:
                parsed.append(exc)
        good = [p for p in parsed if not isinstance(p, InputError)]
        vectors = iter(self._embed(good) if good else ())
        results: list[dict[str, np.ndarray] | InputError] = []
        for p in parsed:
            if isinstance(p, InputError):
                results.append(p)
                continue
            results.append(
                {
                    "embedding": np.asarray(next(vectors), dtype=np.float32)[None],
                    "num_input_tokens": np.asarray([[len(p)]], dtype=np.int32),
                }
            )
        return EmbeddedBatch(results, sum(len(p) for p in good))

    def tokens(self, inputs: Inputs) -> list[int]:
        """The request's token ids, checked: from `text_input` or `input_ids`, not both."""
        has_text = inputs.get("text_input") is not None
        if has_text and inputs.get("input_ids") is not None:
            raise InputError("send text_input or input_ids, not both")
        if has_text:
            text = scalar(inputs, "text_input", "")
            ids = encode(self._tokenizer, text) if text else []
            if not ids:
                raise InputError("text_input is empty")
        else:
            ids = input_ids(inputs)
            bad = [i for i in ids if not 0 <= i < self.vocab_size]
            if bad:
                raise InputError(f"input_ids holds {bad[0]}, outside the vocabulary")
        if len(ids) > self.max_tokens:
            raise InputError(
                f"the input has {len(ids)} tokens, more than the {self.max_tokens} allowed"
            )
        return ids
