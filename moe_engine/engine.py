"""The in-flight batching engine: a scheduler thread that prefills, decodes and streams requests."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import SUPPORTED_DTYPES, EngineConfig, ModelConfig, resolve_max_seq_len
from .guided import Grammars, GuidedRows, advance
from .model import MoEModel
from .outputs import EngineStats, IterationStats, StepOutput, TopLogprobs
from .prompts import checked_prompt
from .sampler import Sampled, Sampler, SamplingParams
from .weights import load_weights

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Request:
    id: str
    prompt: list[int]
    params: SamplingParams
    on_output: Callable[[StepOutput], None]
    table: torch.Tensor | None = None  # rows for the prompt's ids >= vocab_size
    guide: Any = None  # its grammar's matcher (llguidance.LLMatcher), when guided
    output: list[int] = field(default_factory=list)
    slot: int = -1
    length: int = 0  # positions filled in the KV cache
    finished: bool = False


class Engine:
    """Runs a MoE model on CPU for many concurrent requests with continuous batching.

    `submit` and `cancel` may be called from any thread. A single background thread owns the
    model: each iteration it drops cancelled requests, prefills waiting requests into free slots,
    then runs one batched decode step over every running request. `on_output` callbacks run on
    that thread, so they must be quick and must not call back into a blocking engine method.
    """

    def __init__(
        self,
        model: MoEModel,
        config: EngineConfig | None = None,
        tokenizer_dir: str | Path | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        if self.config.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.config.max_batch_size}")
        self.model = model
        self._num_threads = self.config.num_threads or torch.get_num_threads()
        self._cache = model.new_cache(self.config.max_batch_size)
        self._sampler = Sampler(self.config.max_batch_size, model.config.vocab_size)
        # Guides (`SamplingParams.guide`) compile on the submitting thread, cached per guide.
        self.grammars = Grammars(tokenizer_dir, model.config.vocab_size, model.config.eos_token_ids)
        self._guided: GuidedRows | None = None

        self._cond = threading.Condition()
        # Guarded by _cond: the hand-over from client threads to the engine thread.
        self._incoming: deque[_Request] = deque()
        self._cancel_ids: set[str] = set()
        self._live: dict[str, _Request] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None

        # Engine thread only. Invariant: self._running[i].slot == i.
        self._waiting: deque[_Request] = deque()
        self._running: list[_Request] = []
        self._peak_active = 0
        self._decode_steps = 0
        self._decode_tokens = 0
        self._prefill_tokens = 0
        self._finished = 0
        self._iterations = 0
        self._iteration = _IDLE
        self._iteration_time = 0.0

    @classmethod
    def from_pretrained(cls, path: str | Path, config: EngineConfig | None = None) -> Engine:
        """Load a Hugging Face MoE checkpoint folder (`config.json` + `*.safetensors`)."""
        config = config or EngineConfig()
        if config.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype must be one of {SUPPORTED_DTYPES}, got {config.dtype!r}")
        if config.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {config.max_batch_size}")
        if config.num_threads is not None and config.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {config.num_threads}")
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        model_config = ModelConfig.from_dir(path)
        max_seq_len = resolve_max_seq_len(model_config, config.max_seq_len)
        weights = load_weights(path, model_config, getattr(torch, config.dtype))
        return cls(MoEModel(model_config, weights, max_seq_len), config, tokenizer_dir=path)

    @property
    def model_config(self) -> ModelConfig:
        return self.model.config

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    @property
    def max_seq_len(self) -> int:
        return self.model.max_seq_len

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size

    @property
    def num_layers(self) -> int:
        return self.model.config.num_layers

    @property
    def num_experts(self) -> int:
        return self.model.config.num_experts

    @property
    def moe_layers(self) -> list[int]:
        """Indices of layers with a sparse MoE block (the others' expert counts stay 0)."""
        return [i for i, is_moe in enumerate(self.model.config.moe_layers) if is_moe]

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """End ids from the checkpoint's generation/model config (may be empty)."""
        return self.model.config.eos_token_ids

    def start(self) -> None:
        """Start the background scheduler thread (idempotent)."""
        with self._cond:
            if self._stopping:
                raise RuntimeError("engine is shut down")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="moe-engine", daemon=True)
                self._thread.start()

    def submit(
        self,
        request_id: str,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        on_output: Callable[[StepOutput], None],
        prompt_table: torch.Tensor | None = None,
        extra_ids: Sequence[int] | None = None,
    ) -> None:
        """Queue a request; raise ValueError (and queue nothing) if it cannot be served.

        `on_output` is called on the engine thread for each step's tokens and exactly once with
        `finished=True`. Ids `vocab_size + i` take row `i` of `prompt_table` (see `prompts`).
        """
        c = self.model_config
        checked = checked_prompt(
            prompt_ids, vocab_size=c.vocab_size, hidden_size=c.hidden_size,
            dtype=self.model.dtype, prompt_table=prompt_table, extra_ids=extra_ids,
        )  # fmt: skip
        prompt = checked.ids
        params.validate(self.vocab_size)
        if len(prompt) + params.max_new_tokens > self.max_seq_len:
            raise ValueError(
                f"prompt ({len(prompt)} tokens) + max_new_tokens ({params.max_new_tokens}) "
                f"exceeds the engine's max_seq_len of {self.max_seq_len}"
            )
        guide = self.grammars.matcher(*params.guide) if params.guide else None
        request = _Request(request_id, prompt, params, on_output, checked.table, guide)
        with self._cond:
            if self._stopping:
                raise RuntimeError("engine is shut down")
            if request_id in self._live:
                raise ValueError(f"request id {request_id!r} is already in flight")
            self._live[request_id] = request
            self._incoming.append(request)
            self._cond.notify()

    def cancel(self, request_id: str) -> bool:
        """Ask the engine to finish a request as "cancelled" within one step.

        Returns False if the request is unknown or already finished.
        """
        with self._cond:
            if request_id not in self._live:
                return False
            self._cancel_ids.add(request_id)
            self._cond.notify()
            return True

    def stats(self) -> EngineStats:
        """A snapshot of load and counters; safe from any thread."""
        with self._cond:
            waiting = len(self._incoming)
        # Finished requests leave _running only after their final callback; don't count them.
        running = [r for r in list(self._running) if not r.finished]
        cache = self._cache
        return EngineStats(
            active=len(running),
            waiting=waiting + len(self._waiting),
            max_batch_size=self.config.max_batch_size,
            peak_active=self._peak_active,
            decode_steps_total=self._decode_steps,
            decode_tokens_total=self._decode_tokens,
            prefill_tokens_total=self._prefill_tokens,
            finished_total=self._finished,
            iterations_total=self._iterations,
            last_iteration=self._iteration,
            last_iteration_time=self._iteration_time,
            kv_used_blocks=sum(cache.blocks_for(r.length) for r in running),
            kv_max_blocks=cache.max_blocks,
            kv_tokens_per_block=cache.tokens_per_block,
        )

    def expert_counts(self) -> list[list[int]]:
        """Cumulative tokens routed to each expert, `[layer][expert]`, prefill and decode."""
        return self.model.expert_counts.tolist()

    def expert_counts_tensor(self) -> torch.Tensor:
        """`expert_counts()` as a `[layers, experts]` int64 copy; safe from any thread."""
        return self.model.expert_counts.clone()

    def shutdown(self, timeout: float | None = 30.0) -> None:
        """Stop the thread; every unfinished request gets a final "cancelled" output."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread
        if thread is threading.current_thread():
            return  # called from a callback: the loop sees _stopping and drains on its way out
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.error("engine thread did not stop within %s s", timeout)
        else:
            self._drain()

    # --- engine thread ---------------------------------------------------------------------

    def _run(self) -> None:
        # Thread counts are per OS thread with OpenMP; set it where the math runs.
        torch.set_num_threads(self._num_threads)
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not (
                        self._stopping or self._incoming or self._cancel_ids or self._has_work()
                    ):
                        self._iteration = _IDLE
                        self._cond.wait()
                    if self._stopping:
                        break
                    self._waiting.extend(self._incoming)
                    self._incoming.clear()
                    cancel_ids, self._cancel_ids = self._cancel_ids, set()
                try:
                    self._step(cancel_ids)
                    if self.config.step_delay_s:
                        time.sleep(self.config.step_delay_s)
                except Exception:
                    logger.exception("engine step failed; finishing running requests as errors")
                    for request in self._running:
                        self._finish(request, "error")
                    self._running = []
        self._drain()

    def _has_work(self) -> bool:
        return bool(self._running or self._waiting)

    def _step(self, cancel_ids: set[str]) -> None:
        for request in [*self._running, *self._waiting]:
            if request.id in cancel_ids:
                self._finish(request, "cancelled")
        self._waiting = deque(r for r in self._waiting if not r.finished)
        self._compact()

        prefilled: list[_Request] = []
        while self._waiting and len(self._running) < self.config.max_batch_size:
            request = self._waiting.popleft()
            if self._prefill(request):
                prefilled.append(request)
        self._compact()
        self._peak_active = max(self._peak_active, len(self._running))

        batch = len(self._running)
        # Requests that ended on their first token are scheduled too, though not decoded.
        done_at_prefill = sum(r.finished for r in prefilled)
        if self._running:
            self._decode()
            self._compact()
        if batch or prefilled:
            self._iterations += 1
            self._iteration = IterationStats(
                scheduled=batch + done_at_prefill,
                context_requests=len(prefilled),
                context_tokens=sum(len(r.prompt) for r in prefilled),
                generation_requests=batch,
            )
            self._iteration_time = time.time()

    def _prefill(self, request: _Request) -> bool:
        """Prefill `request` into the next slot; False if its prefill failed."""
        slot = len(self._running)
        try:
            prompt = torch.tensor(request.prompt, dtype=torch.long)
            logits = self.model.prefill(prompt, self._cache, slot, prompt_table=request.table)
            self._sampler.assign(slot, request.params, prompt)
            self._suppress_end_ids([request], logits)
            self._mask([request], logits)
            sampled = self._sampler.sample(logits, slot, slot + 1)
        except Exception:
            logger.exception("prefill failed for request %s", request.id)
            self._finish(request, "error")
            return False
        request.slot, request.length = slot, len(request.prompt)
        request.table = None  # in the KV cache now; decode sees generated (text) ids only
        self._running.append(request)
        self._prefill_tokens += len(request.prompt)
        self._accept(request, sampled, 0)
        return True

    def _decode(self) -> None:
        running = self._running
        tokens = torch.tensor([r.output[-1] for r in running], dtype=torch.long)
        positions = torch.tensor([r.length for r in running], dtype=torch.long)
        max_len = max(r.length for r in running) + 1
        logits = self.model.decode(tokens, positions, self._cache, max_len)
        for request in running:
            request.length += 1
        self._suppress_end_ids(running, logits)
        self._mask(running, logits)
        sampled = self._sampler.sample(logits, 0, len(running))
        self._decode_steps += 1
        self._decode_tokens += len(running)
        for i, request in enumerate(running):
            self._accept(request, sampled, i)

    def _suppress_end_ids(self, requests: list[_Request], logits: torch.Tensor) -> None:
        for row, request in enumerate(requests):
            p = request.params
            if p.end_ids and not p.ignore_eos and len(request.output) < p.min_tokens:
                logits[row, list(p.end_ids)] = -float("inf")

    def _mask(self, requests: list[_Request], logits: torch.Tensor) -> None:
        rows = [
            (row, r.guide, () if r.params.ignore_eos else r.params.end_ids)
            for row, r in enumerate(requests)
            if r.guide is not None
        ]
        if rows:
            if self._guided is None:
                eos = self.grammars.eos_tokens()
                self._guided = GuidedRows(self.vocab_size, self.max_batch_size, eos)
            self._guided.apply(logits, rows)

    def _accept(self, request: _Request, sampled: Sampled, row: int) -> None:
        token = sampled.tokens[row]
        logprob = sampled.logprobs[row] if sampled.logprobs else None
        top = sampled.top[row] if sampled.top else None
        p = request.params
        past_min = len(request.output) >= p.min_tokens
        if past_min and not p.ignore_eos and token in p.end_ids:
            self._finish(request, "stop")
            return
        request.output.append(token)
        reason = None
        stops = len(request.output) >= p.min_tokens and p.stop_token_seqs
        if request.guide is not None and advance(request.guide, token):
            reason = "stop"  # the grammar is complete: only the end could follow
        elif stops and _ends_with_any(request.output, p.stop_token_seqs):
            reason = "stop"
        elif len(request.output) >= p.max_new_tokens:
            reason = "length"
        logprobs = [logprob] if p.return_logprobs else None
        tops = [top] if top is not None else None
        if reason is not None:
            self._finish(request, reason, [token], logprobs, tops)
        else:
            self._emit(request, StepOutput(request.id, [token], logprobs, False, None, tops))

    def _finish(
        self,
        request: _Request,
        reason: str,
        token_ids: list[int] | None = None,
        logprobs: list[float] | None = None,
        tops: list[TopLogprobs] | None = None,
    ) -> None:
        if request.finished:
            return
        request.finished = True
        if logprobs is None and request.params.return_logprobs:
            logprobs = []
        if tops is None and request.params.num_logprobs:
            tops = []
        with self._cond:
            self._live.pop(request.id, None)
            self._cancel_ids.discard(request.id)
        self._finished += 1
        output = StepOutput(request.id, token_ids or [], logprobs, True, reason, tops)
        self._emit(request, output)

    def _emit(self, request: _Request, output: StepOutput) -> None:
        try:
            request.on_output(output)
        except Exception:
            logger.exception("on_output raised for request %s", request.id)
            if not output.finished:
                self._finish(request, "error")

    def _compact(self) -> None:
        """Drop finished requests and move survivors down so slots stay `0..n-1`."""
        if all(not r.finished for r in self._running):
            return
        survivors = [r for r in self._running if not r.finished]
        n = len(survivors)
        holes = [r.slot for r in self._running[:n] if r.finished]
        movers = [r for r in survivors if r.slot >= n]
        for hole, request in zip(holes, movers, strict=True):
            self._cache.move(request.slot, hole, request.length)
            self._sampler.move(request.slot, hole)
            request.slot = hole
        self._running = sorted(survivors, key=lambda r: r.slot)

    def _drain(self) -> None:
        with self._cond:
            pending = [*self._incoming, *self._waiting, *self._running]
            self._incoming.clear()
        for request in pending:
            self._finish(request, "cancelled")
        self._waiting.clear()
        self._running = []


_IDLE = IterationStats()


def _ends_with_any(output: list[int], sequences: tuple[tuple[int, ...], ...]) -> bool:
    for seq in sequences:
        n = len(seq)
        if len(output) >= n and tuple(output[-n:]) == tuple(seq):
            return True
    return False
