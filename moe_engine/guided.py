"""Guided decoding: grammars from TensorRT-LLM's guide types, and their token masks per batch row.

llguidance (one Rust wheel, no torch/transformers dependency, µs-scale masks) compiles a guide
once per `(guide_type, guide)`; a bounded LRU keeps the compiled matcher and each request gets a
cheap copy of it. The engine asks for masks only for the rows of requests that carry a guide, so
requests without one cost nothing. End ids are the engine's business, not the grammar's: they are
allowed exactly where the grammar accepts, and a grammar that cannot go on ends the request.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # llguidance is imported on the first guided request
    import llguidance

# TensorRT-LLM's `guided_decoding_guide_type` values (GuidedDecodingParams.GuideType).
GUIDE_TYPES = ("json", "json_schema", "regex", "ebnf_grammar", "structural_tag")
DEFAULT_CACHE_SIZE = 64
PARALLEL_MASK_VOCAB = 32768
# Compact JSON: a flexible-whitespace grammar lets a weak model pad with spaces until max_tokens.
_JSON_OPTIONS = {"whitespace_flexible": False}


class GuideError(ValueError):
    """A guide that cannot be compiled; the message starts with "invalid guide:"."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid guide: {reason}")


class Grammars:
    """Compiles guides for one tokenizer, each once, and hands out a fresh matcher per request.

    The tokenizer is read on the first guided request (about a second for a 150k vocabulary),
    so an engine that never sees one never pays for it. Safe from any thread.
    """

    def __init__(
        self,
        tokenizer_dir: str | Path | None,
        vocab_size: int,
        eos_ids: Sequence[int] = (),
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self._dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
        self.vocab_size = vocab_size
        self.eos_ids = tuple(eos_ids)
        self.cache_size = max(1, cache_size)
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._tokens: dict[str, int] = {}  # added tokens llguidance takes as special, by text
        self._cache: OrderedDict[tuple[str, str], llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()
        self.compiled = 0  # cache misses, for tests and benchmarks

    def matcher(self, guide_type: str, guide: str) -> llguidance.LLMatcher:
        """A matcher at the grammar's start; GuideError if the guide does not compile."""
        key = (guide_type, guide)
        with self._lock:
            template = self._cache.get(key)
            if template is not None:
                self._cache.move_to_end(key)
                return template.deep_copy()
        template = self._compile(guide_type, guide)  # outside the lock: may take milliseconds
        with self._lock:
            self._cache[key] = template
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return template.deep_copy()

    def eos_tokens(self) -> list[int]:
        """The ids llguidance allows where a grammar accepts (the tokenizer's, or ours)."""
        return list(self._load_tokenizer().eos_tokens)

    def cached(self) -> int:
        with self._lock:
            return len(self._cache)

    def _compile(self, guide_type: str, guide: str) -> llguidance.LLMatcher:
        import llguidance

        tokenizer = self._load_tokenizer()
        grammar = _grammar(llguidance, guide_type, guide, self._tokens)
        error = llguidance.LLMatcher.validate_grammar(grammar, tokenizer)
        if error:
            raise GuideError(error.strip().splitlines()[0])
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise GuideError(matcher.get_error().strip().splitlines()[0])
        self.compiled += 1
        return matcher

    def _load_tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                import llguidance

                path = self._dir / "tokenizer.json" if self._dir is not None else None
                if path is None or not path.is_file():
                    raise GuideError("this model has no tokenizer.json for guided decoding")
                text = path.read_text(encoding="utf-8")
                tokenizer = llguidance.LLTokenizer(
                    text, n_vocab=self.vocab_size, eos_token=list(self.eos_ids) or None
                )
                added = json.loads(text).get("added_tokens") or []
                self._tokens = {
                    token["content"]: token["id"]
                    for token in added
                    if token["id"] < self.vocab_size and tokenizer.is_special_token(token["id"])
                }
                self._tokenizer = tokenizer
            return self._tokenizer


def _grammar(llguidance, guide_type: str, guide: str, tokens: dict[str, int]) -> str:
    if guide_type == "json":
        # Any JSON object, as TensorRT-LLM's JSON guide (OpenAI's json_object); guide ignored.
        return llguidance.LLMatcher.grammar_from_json_schema(
            {"type": "object"}, defaults=_JSON_OPTIONS
        )
    if not guide:
        raise GuideError(f"guided_decoding_guide is empty for guide type {guide_type!r}")
    if guide_type == "json_schema":
        try:
            schema = json.loads(guide)
        except ValueError as exc:
            raise GuideError(f"the JSON schema is not JSON: {exc}") from None
        if not isinstance(schema, dict | bool):
            raise GuideError("the JSON schema must be an object")
        try:
            return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
        except ValueError as exc:
            raise GuideError(str(exc)) from None
    if guide_type == "regex":
        return llguidance.LLMatcher.grammar_from_regex(guide)
    if guide_type == "ebnf_grammar":
        try:
            return llguidance.grammar_from("ebnf", guide)  # GBNF or Lark syntax
        except ValueError as exc:
            raise GuideError(str(exc)) from None
    if guide_type == "structural_tag":
        return _structural_tag(llguidance, guide, tokens)
    raise GuideError(
        f"unknown guided_decoding_guide_type {guide_type!r}; known: {', '.join(GUIDE_TYPES)}"
    )


def _structural_tag(llguidance, guide: str, tokens: dict[str, int]) -> str:
    """TensorRT-LLM's (xgrammar's) structural tag: `{"structures": [{"begin", "schema", "end"}],
    "triggers": [...]}`: free text where a trigger starts a tagged, schema-constrained part.

    Written as llguidance's own `StructTag.to_grammar` writes it, with one difference: a tag
    text that is an added token (`<tool_call>`, `</tool_call>` in Qwen's and the tiny model's
    tokenizers) is matched as that token, the way the model writes it. llguidance treats every
    added token as special, and a special token never matches text, so a text-only grammar
    masks the very token a model starts its call with (measured: the tiny model then answered
    "I have no tool for that." where it calls `get_weather` without the grammar).
    """
    try:
        spec = json.loads(guide)
        structures = [
            (
                next(t for t in spec["triggers"] if s["begin"].startswith(t)),
                s["begin"],
                json.dumps(_compact(s["schema"])),
                s["end"],
            )
            for s in spec["structures"]
        ]
        if not structures:
            raise ValueError("no structures")
    except (ValueError, KeyError, TypeError, StopIteration) as exc:
        raise GuideError(f"structural_tag must be {{structures, triggers}}: {exc!r}") from None
    rules = [f"tag_{i}" for i in range(len(structures))]
    lark = [
        "%llguidance {}",
        f"start: ({' | '.join(rules)})* tag_end",
        "tag_end: TAG_TEXT",
        "TAG_TEXT: /(.|\\n)*/",
    ]
    for rule, (trigger, begin, schema, end) in zip(rules, structures, strict=True):
        body = (
            f"{_lark_text(begin[len(trigger) :], tokens)} %json {schema} {_lark_text(end, tokens)}"
        )
        if trigger in tokens:
            lark.append(f"{rule}: TAG_TEXT <[{tokens[trigger]}]> {body}")
        else:  # text ends where the trigger's text first appears
            lark.append(f"{rule}_trig[lazy]: TAG_TEXT {json.dumps(trigger)}")
            lark.append(f"{rule}: {rule}_trig {body}")
    try:
        return llguidance.LLMatcher.grammar_from_lark("\n".join(lark) + "\n")
    except ValueError as exc:
        raise GuideError(str(exc)) from None


def _lark_text(text: str, tokens: dict[str, int]) -> str:
    # A literal in Lark, its added tokens as token references (`<[151658]>`).
    if not text:
        return ""
    if not tokens:
        return json.dumps(text)
    names = sorted(tokens, key=len, reverse=True)
    pieces = re.split("(" + "|".join(map(re.escape, names)) + ")", text)
    return " ".join(f"<[{tokens[p]}]>" if p in tokens else json.dumps(p) for p in pieces if p)


def _compact(schema: object) -> object:
    # A tag's JSON schema gets the same compact whitespace as a json_schema guide.
    if not isinstance(schema, dict):
        return schema
    return {**schema, "x-guidance": {**_JSON_OPTIONS, **schema.get("x-guidance", {})}}


class GuidedRows:
    """Masks the logits of batch rows whose requests carry a matcher (engine thread only)."""

    def __init__(self, vocab_size: int, max_rows: int, eos_ids: Sequence[int] = ()) -> None:
        self.vocab_size = vocab_size
        self._eos = list(eos_ids)  # what llguidance allows where the grammar accepts
        self._words = (vocab_size + 31) // 32
        self._bitmask = torch.full((max_rows, self._words), -1, dtype=torch.int32)
        # Threads pay off only for large vocabularies; a small one is ~2 µs a row in sequence.
        self._parallel = vocab_size >= PARALLEL_MASK_VOCAB
        self._executor = None

    def apply(
        self,
        logits: torch.Tensor,
        rows: Sequence[tuple[int, llguidance.LLMatcher, Sequence[int]]],
    ) -> None:
        """Disallow in `logits` (in place) what each row's grammar refuses next; `rows` are
        (row, matcher, end ids), and end ids stay allowed only where the grammar accepts."""
        if not rows:
            return
        n = len(rows)
        self._fill(rows)
        # Little-endian words: byte-wise little bit order is the token order.
        bits = np.unpackbits(self._bitmask[:n].numpy().view(np.uint8), axis=1, bitorder="little")
        allowed = torch.from_numpy(bits[:, : logits.shape[1]]).bool()
        # The request's end ids replace the tokenizer's (`end_id`, `ignore_eos`).
        allowed[:, self._eos] = False
        for i, (_, matcher, end_ids) in enumerate(rows):
            if end_ids and matcher.is_accepting():
                allowed[i, list(end_ids)] = True
        index = [row for row, _, _ in rows]
        if index == list(range(n)):
            logits[:n].masked_fill_(~allowed, -float("inf"))
        else:
            at = torch.tensor(index, dtype=torch.long)
            logits[at] = logits[at].masked_fill(~allowed, -float("inf"))

    def _fill(self, rows: Sequence[tuple[int, llguidance.LLMatcher, Sequence[int]]]) -> None:
        # Straight into the tensor's memory, as llguidance.torch does; that module is not
        # imported: it runs torch.compile at import (inductor, seconds, and locale trouble).
        row_bytes = self._words * 4
        base = self._bitmask.data_ptr()
        if not self._parallel or len(rows) == 1:
            for i, (_, matcher, _) in enumerate(rows):
                matcher.unsafe_compute_mask_ptr(base + i * row_bytes, row_bytes)
            return
        if self._executor is None:
            import llguidance

            self._executor = llguidance.LLExecutor()
        pairs = [(matcher, i) for i, (_, matcher, _) in enumerate(rows)]
        self._executor.unsafe_compute_mask_ptr(pairs, base, row_bytes, len(rows))


def advance(matcher: llguidance.LLMatcher, token: int) -> bool:
    """Feed the sampled token; True when the grammar is complete (nothing may follow)."""
    matcher.consume_token(token)
    return matcher.is_stopped()
