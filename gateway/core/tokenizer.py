"""Prompt token counting with the model's own `tokenizer.json` (the `tokenizers` library)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tokenizers import Tokenizer

# Below this many characters encoding takes microseconds: do it inline rather than pay a thread hop.
_INLINE_CHARS = 8192


class PromptTokenizer:
    """Counts tokens the way the model will see them."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer

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

    async def count_async(self, text: str, *, add_special_tokens: bool) -> int:
        """`count` that keeps long prompts off the event loop."""
        if len(text) < _INLINE_CHARS:
            return self.count(text, add_special_tokens=add_special_tokens)
        return await asyncio.to_thread(self.count, text, add_special_tokens=add_special_tokens)
