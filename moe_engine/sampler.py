"""Sampling parameters and the batched, per-request-seeded token sampler."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch


@dataclass
class SamplingParams:
    """How one request picks its tokens and when it stops."""

    max_new_tokens: int
    temperature: float = 1.0  # 0 → greedy
    top_k: int = 0  # 0 = off; 1 = greedy
    top_p: float = 1.0
    seed: int | None = None  # same seed → same tokens, whatever else is in the batch
    end_ids: tuple[int, ...] = ()  # finish "stop"; the end token itself is not returned
    ignore_eos: bool = False
    min_tokens: int = 0  # end ids and stop sequences are ignored until this many tokens
    stop_token_seqs: tuple[tuple[int, ...], ...] = ()  # finish "stop", sequence is returned
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    return_logprobs: bool = False
    num_logprobs: int = 0  # top-k alternatives (ids, logprobs) per token, sorted descending
    guide: tuple[str, str] | None = None  # (guided_decoding_guide_type, guided_decoding_guide)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def penalised(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty) or self.repetition_penalty != 1

    def validate(self, vocab_size: int) -> None:
        """Raise ValueError naming the first parameter that is out of range."""
        checks = [
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (_finite(self.temperature) and self.temperature >= 0,
             f"temperature must be >= 0, got {self.temperature}"),
            (self.top_k >= 0, f"top_k must be >= 0 (0 disables it), got {self.top_k}"),
            (_finite(self.top_p) and 0 < self.top_p <= 1,
             f"top_p must be in (0, 1], got {self.top_p}"),
            (0 <= self.min_tokens <= self.max_new_tokens,
             f"min_tokens must be between 0 and max_new_tokens, got {self.min_tokens}"),
            (_finite(self.presence_penalty) and -2 <= self.presence_penalty <= 2,
             f"presence_penalty must be in [-2, 2], got {self.presence_penalty}"),
            (_finite(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2,
             f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}"),
            (_finite(self.repetition_penalty) and self.repetition_penalty > 0,
             f"repetition_penalty must be > 0, got {self.repetition_penalty}"),
            (all(0 <= t < vocab_size for t in self.end_ids),
             f"end_ids must be token ids in [0, {vocab_size}), got {list(self.end_ids)}"),
            (all(len(s) > 0 for s in self.stop_token_seqs),
             "stop_token_seqs must not contain an empty sequence"),
            (0 <= self.num_logprobs <= MAX_NUM_LOGPROBS,
             f"num_logprobs must be in [0, {MAX_NUM_LOGPROBS}], got {self.num_logprobs}"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


MAX_NUM_LOGPROBS = 20  # OpenAI's top_logprobs limit


class Sampled(NamedTuple):
    """One sampling step's picks for a range of rows."""

    tokens: list[int]
    logprobs: list[float] | None  # each token's, when any row asked for them
    top: list[tuple[list[int], list[float]] | None] | None  # per row: its top-k, when asked


@dataclass
class _Rows:
    """Per-row tensors for one contiguous range of slots, rebuilt only when that range changes."""

    temperature: torch.Tensor  # [n, 1]; 1 on greedy rows so scaling is a no-op there
    greedy: torch.Tensor  # [n] bool
    top_k: torch.Tensor  # [n, 1]; vocab size where off
    top_p: torch.Tensor  # [n, 1]
    presence: torch.Tensor  # [n, 1]
    frequency: torch.Tensor  # [n, 1]
    repetition: torch.Tensor  # [n, 1]
    all_greedy: bool
    any_greedy: bool
    any_top_k: bool
    any_top_p: bool
    any_penalty: bool
    any_logprobs: bool
    max_top: int  # the largest num_logprobs of the rows


class Sampler:
    """Samples one token per row from a batch of logits, each row by its own request's rules.

    Rows are slot indices. Each slot has its own `torch.Generator`, and every random draw for a
    request comes from that generator alone, so a seeded request reproduces its tokens whatever
    else shares the batch.
    """

    def __init__(self, num_slots: int, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.params: list[SamplingParams | None] = [None] * num_slots
        self.generators: list[torch.Generator | None] = [None] * num_slots
        # Penalty state per slot: generated-token counts (presence/frequency) and tokens seen
        # in prompt or output (repetition, as in HF/vLLM/TensorRT-LLM).
        self.counts = torch.zeros(num_slots, vocab_size)
        self.seen = torch.zeros(num_slots, vocab_size, dtype=torch.bool)
        self._vocab_pos = torch.arange(vocab_size)
        self._rows_cache: dict[tuple[int, int], _Rows] = {}

    def assign(self, slot: int, params: SamplingParams, prompt: torch.Tensor) -> None:
        """Give `slot` to a new request."""
        generator = torch.Generator()
        if params.seed is None:
            generator.seed()
        else:
            generator.manual_seed(params.seed)
        self.params[slot], self.generators[slot] = params, generator
        if params.penalised:
            self.counts[slot].zero_()
            self.seen[slot].zero_()
            # Prompt-table ids (>= vocab, image features) are no token the sampler can pick.
            self.seen[slot, prompt[prompt < self.vocab_size]] = True
        self._rows_cache.clear()

    def move(self, src: int, dst: int) -> None:
        """Move a request's sampling state from slot `src` to `dst`."""
        self.params[dst], self.generators[dst] = self.params[src], self.generators[src]
        self.params[src] = self.generators[src] = None
        if self.params[dst].penalised:
            self.counts[dst] = self.counts[src]
            self.seen[dst] = self.seen[src]
        self._rows_cache.clear()

    def sample(self, logits: torch.Tensor, start: int, stop: int) -> Sampled:
        """Pick a token for each slot in `start..stop-1` from `logits` `[stop - start, vocab]`.

        Returns the tokens and, if any row asked for them, their logprobs under the penalised,
        temperature-scaled distribution (temperature 1 for greedy rows; a guide's mask applied),
        before top-k/top-p, and each asking row's `num_logprobs` best under the same one.
        """
        rows = self._rows(start, stop)
        if rows.any_penalty:
            logits = self._penalise(logits, rows, start, stop)
        greedy = logits.argmax(dim=-1) if rows.any_greedy else None
        if rows.all_greedy:
            tokens, scaled = greedy, logits
        else:
            scaled = logits / rows.temperature
            sampled = self._draw(scaled, rows, start, stop)
            tokens = torch.where(rows.greedy, greedy, sampled) if rows.any_greedy else sampled
        if rows.any_penalty:
            slots = torch.arange(start, stop)
            self.counts.index_put_((slots, tokens), torch.ones(()), accumulate=True)
            self.seen[slots, tokens] = True
        logprobs = top = None
        if rows.any_logprobs or rows.max_top:
            log_probs = scaled.log_softmax(dim=-1)
            if rows.any_logprobs:
                logprobs = log_probs.gather(1, tokens[:, None])[:, 0].tolist()
            if rows.max_top:
                top = self._top(log_probs, rows.max_top, start, stop)
        return Sampled(tokens.tolist(), logprobs, top)

    def _top(
        self, log_probs: torch.Tensor, k: int, start: int, stop: int
    ) -> list[tuple[list[int], list[float]] | None]:
        values, ids = log_probs.topk(min(k, self.vocab_size), dim=-1)  # sorted, descending
        values, ids = values.tolist(), ids.tolist()
        out: list[tuple[list[int], list[float]] | None] = []
        for i in range(stop - start):
            n = self.params[start + i].num_logprobs
            out.append((ids[i][:n], values[i][:n]) if n else None)
        return out

    def _draw(self, scaled: torch.Tensor, rows: _Rows, start: int, stop: int) -> torch.Tensor:
        # Inverse-CDF sampling with one uniform per row from that row's generator: the same
        # distribution as multinomial, but vectorised over the batch.
        u = torch.zeros(stop - start, 1)
        for i in range(stop - start):
            if not self.params[start + i].greedy:
                u[i].uniform_(generator=self.generators[start + i])
        if rows.any_top_k or rows.any_top_p:
            sorted_logits, order = scaled.sort(dim=-1, descending=True)
            if rows.any_top_k:
                sorted_logits.masked_fill_(self._vocab_pos >= rows.top_k, -math.inf)
            probs = sorted_logits.softmax(dim=-1)
            if rows.any_top_p:
                # Keep the smallest prefix whose mass reaches top_p (always the first token).
                mass_before = probs.cumsum(dim=-1) - probs
                probs.masked_fill_(mass_before > rows.top_p, 0.0)
        else:
            order, probs = None, scaled.softmax(dim=-1)
        cdf = probs.cumsum(dim=-1)
        pick = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=self.vocab_size - 1)
        return (order.gather(1, pick) if order is not None else pick)[:, 0]

    def _penalise(self, logits: torch.Tensor, rows: _Rows, start: int, stop: int) -> torch.Tensor:
        counts = self.counts[start:stop]
        logits = logits - rows.frequency * counts - rows.presence * (counts > 0)
        penalised = torch.where(logits > 0, logits / rows.repetition, logits * rows.repetition)
        return torch.where(self.seen[start:stop], penalised, logits)

    def _rows(self, start: int, stop: int) -> _Rows:
        key = (start, stop)
        if key not in self._rows_cache:
            params = self.params[start:stop]

            def column(values: list[float]) -> torch.Tensor:
                return torch.tensor(values, dtype=torch.float32)[:, None]

            greedy = [p.greedy for p in params]
            self._rows_cache[key] = _Rows(
                temperature=column([1.0 if p.greedy else p.temperature for p in params]),
                greedy=torch.tensor(greedy),
                top_k=column([p.top_k or self.vocab_size for p in params]),
                top_p=column([p.top_p for p in params]),
                presence=column([p.presence_penalty for p in params]),
                frequency=column([p.frequency_penalty for p in params]),
                repetition=column([p.repetition_penalty for p in params]),
                all_greedy=all(greedy),
                any_greedy=any(greedy),
                any_top_k=any(p.top_k > 1 for p in params),
                any_top_p=any(p.top_p < 1 for p in params),
                any_penalty=any(p.penalised for p in params),
                any_logprobs=any(p.return_logprobs for p in params),
                max_top=max(p.num_logprobs for p in params),
            )
        return self._rows_cache[key]


def _finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)
