"""Text side of serving: tokenizer loading, incremental detokenisation, stop strings.

Used by the Triton Python models (preprocessing, postprocessing, tensorrt_llm_bls); kept free of
Triton imports so it can be unit-tested.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer


@dataclass(frozen=True)
class TokenizerInfo:
    """A checkpoint's tokenizer plus the ids that end generation."""

    tokenizer: Tokenizer
    eos_ids: tuple[int, ...]
    pad_id: int


@lru_cache(maxsize=8)
def load_tokenizer(model_dir: str) -> TokenizerInfo:
    """Load `tokenizer.json` and the end-of-sequence ids from a Hugging Face checkpoint dir."""
    root = Path(model_dir)
    path = root / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {root}")
    tokenizer = Tokenizer.from_file(str(path))
    eos_ids = _eos_ids(root, tokenizer)
    pad_id = _token_id(tokenizer, _config_token(root, "pad_token"))
    return TokenizerInfo(tokenizer, eos_ids, pad_id if pad_id is not None else eos_ids[0])


def encode(info: TokenizerInfo, text: str) -> list[int]:
    """Token ids of `text`, special tokens (e.g. chat markers) recognised, none added."""
    return info.tokenizer.encode(text, add_special_tokens=False).ids


def encode_stop_words(info: TokenizerInfo, words: Iterable[str]) -> list[list[int]]:
    """Each stop string as a token sequence (for engines that stop on tokens)."""
    return [encode(info, w) for w in words if w]


def to_words_list(sequences: Sequence[Sequence[int]]) -> list[list[int]]:
    """TensorRT-LLM's `[2, N]` words list: flat ids, then cumulative end offsets padded -1."""
    flat: list[int] = []
    offsets: list[int] = []
    for seq in sequences:
        flat.extend(seq)
        offsets.append(len(flat))
    width = max(len(flat), 1)
    return [flat + [0] * (width - len(flat)), offsets + [-1] * (width - len(offsets))]


def from_words_list(words: Sequence[Sequence[int]]) -> list[list[int]]:
    """Inverse of `to_words_list`."""
    flat, offsets = list(words[0]), [o for o in words[1] if o >= 0]
    out, start = [], 0
    for end in offsets:
        if end > start:
            out.append(flat[start:end])
        start = end
    return out


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas without losing spaces or bytes.

    Decoding tokens one at a time breaks byte-level BPE twice over: leading spaces attached to
    the previous token vanish, and a multi-byte character split across tokens comes out as
    U+FFFD. We decode a small window (from `prefix` to the end) and emit only what the window
    adds beyond its first part, holding back text that still ends in an incomplete character.
    The window never grows with the length of the output.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = True) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def add(self, token_ids: Iterable[int]) -> str:
        """Append tokens; return the newly completed text (may be empty)."""
        self._ids.extend(token_ids)
        prefix_text = self._decode(self._prefix, self._read)
        new_text = self._decode(self._prefix, len(self._ids))
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            # Keep the window short: the prefix only needs to give the next token context.
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        prefix_text = self._decode(self._prefix, self._read)
        new_text = self._decode(self._prefix, len(self._ids))
        self._prefix = self._read = len(self._ids)
        return new_text[len(prefix_text) :]

    def _decode(self, start: int, end: int) -> str:
        return self._tok.decode(self._ids[start:end], skip_special_tokens=self._skip)


class StopStringMatcher:
    """Cuts streamed text at the first stop string, never emitting any part of one.

    Text that could still turn out to be the start of a stop string is held back; everything
    else is released at once. Work per delta is bounded by the longest stop string.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self._stop = [s for s in stop if s]
        self._held = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Add generated text; return the part that is safe to emit. Sets `stopped` on a hit."""
        if self.stopped:
            return ""
        if not self._stop:
            return delta
        held = self._held + delta
        hits = [i for i in (held.find(s) for s in self._stop) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return held[: min(hits)]
        keep = self._longest_partial(held)
        self._held = held[len(held) - keep :] if keep else ""
        return held[: len(held) - keep]

    def flush(self) -> str:
        """Release held text at the end of generation (it never completed a stop string)."""
        out, self._held = ("" if self.stopped else self._held), ""
        return out

    def _longest_partial(self, text: str) -> int:
        best = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best


def _eos_ids(root: Path, tokenizer: Tokenizer) -> tuple[int, ...]:
    ids: list[int] = []
    gen = root / "generation_config.json"
    if gen.is_file():
        value = json.loads(gen.read_text()).get("eos_token_id")
        ids.extend(value if isinstance(value, list) else [value] if value is not None else [])
    eos = _token_id(tokenizer, _config_token(root, "eos_token"))
    if eos is not None and eos not in ids:
        ids.append(eos)
    if not ids:
        raise ValueError(f"{root}: no eos_token_id in generation_config.json or tokenizer_config")
    return tuple(int(i) for i in ids)


def _config_token(root: Path, key: str) -> str | None:
    path = root / "tokenizer_config.json"
    if not path.is_file():
        return None
    value = json.loads(path.read_text()).get(key)
    return value.get("content") if isinstance(value, dict) else value


def _token_id(tokenizer: Tokenizer, token: str | None) -> int | None:
    return tokenizer.token_to_id(token) if token else None
