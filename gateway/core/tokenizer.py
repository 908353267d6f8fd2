"""Prompt token counting with the model's own `tokenizer.json` (the `tokenizers` library)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tokenizers import Tokenizer

# Below this many characters encoding takes microseconds: do it inline rather than pay a thread hop.
_INLINE_CHARS = 8192
# How many UTF-8 bytes' worth of tokens a normaliser can make of one byte of text, for those
# whose expansion is bounded and small (NFC at most triples a code point's encoding).
_EXPANSION = {None: 1, "NFC": 3}


class PromptTokenizer:
    """Counts tokens the way the model will see them."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._texts: dict[int, str] = {}
        self._byte_level = "ByteLevel" in repr(tokenizer.decoder)
        normalizer = tokenizer.normalizer
        self._expansion = _EXPANSION.get(None if normalizer is None else type(normalizer).__name__)
        if self._expansion is not None and _adds_prefix_spaces(tokenizer):
            # A prefix space may start every piece between added tokens: one more token a byte.
            self._expansion *= 2
        self._specials = tokenizer.num_special_tokens_to_add(False)
        # The most UTF-8 bytes one token may stand for (×3: a normaliser may shrink the text).
        self._max_token_bytes = 3 * max(len(t.encode()) for t in tokenizer.get_vocab(True))

    @classmethod
    def from_dir(cls, model_dir: Path) -> PromptTokenizer:
        """Load `tokenizer.json` from a Hugging Face checkpoint or tokenizer folder."""
        path = Path(model_dir) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {model_dir}")
        return cls(Tokenizer.from_file(str(path)))

    def count(self, text: str, *, add_special_tokens: bool) -> int:
        """Number of tokens in `text`; chat prompts already carry their special tokens."""
        return len(self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def bound(self, text: str, *, add_special_tokens: bool) -> int | None:
        """An upper bound on `count(text)` that costs next to nothing, or None for tokenizers
        whose normaliser may grow the text without a small bound.

        Every token of a byte-level or byte-fallback tokenizer covers at least one byte of the
        normalised text, bar prefix-space tokens and the special tokens it adds; requests that
        fit the context and the token budget even at this bound need no exact count."""
        if self._expansion is None:
            return None
        specials = self._specials if add_special_tokens else 0
        return self._expansion * len(text.encode()) + specials + 1

    def floor(self, text: str) -> int:
        """A lower bound on the token count of `text`, from its length alone: a prompt whose
        floor overflows the context is refused without tokenising it (megabytes cost seconds)."""
        return len(text.encode()) // self._max_token_bytes

    def token_text(self, token_id: int) -> str:
        """One token's text as it reads in the output (cached: logprobs render many per token)."""
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = self._tokenizer.decode(
                [token_id], skip_special_tokens=False
            )
        return text

    def token_bytes(self, token_id: int) -> list[int]:
        """One token's UTF-8 bytes: a byte-level token may hold part of a character, which its
        text cannot show."""
        piece = self._tokenizer.id_to_token(token_id)
        if self._byte_level and piece is not None and all(c in _UNICODE_TO_BYTE for c in piece):
            return [_UNICODE_TO_BYTE[c] for c in piece]
        return list(self.token_text(token_id).encode())

    async def count_async(self, text: str, *, add_special_tokens: bool) -> int:
        """`count` that keeps long prompts off the event loop."""
        if len(text) < _INLINE_CHARS:
            return self.count(text, add_special_tokens=add_special_tokens)
        return await asyncio.to_thread(self.count, text, add_special_tokens=add_special_tokens)


def _byte_to_unicode() -> dict[int, str]:
    # GPT-2's printable stand-ins for the 256 byte values, which byte-level vocabularies spell in.
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_UNICODE_TO_BYTE = {c: b for b, c in _byte_to_unicode().items()}


def _adds_prefix_spaces(tokenizer: Tokenizer) -> bool:
    # ByteLevel(add_prefix_space=True) and Metaspace add a space before each piece of text.
    described = repr(tokenizer.pre_tokenizer)
    return "add_prefix_space=True" in described or "Metaspace" in described
