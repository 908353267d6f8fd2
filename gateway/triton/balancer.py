"""Choosing an upstream among the eligible ones (ready, circuit closed, under their cap).

- `round_robin`: in turn.
- `least_outstanding`: the fewest requests in flight from this gateway (ties in turn) — Envoy's
  least-request with a full scan, which a handful of replicas makes cheap.
- `engine_aware`: the shortest expected time per token, from what each Triton's metrics port
  says: the engine's measured time per iteration (each running request gets a token per
  iteration), stretched by its waiting queue over its batch size and by KV-cache use — the
  queue and KV scorers of the Gateway API Inference Extension's picker, weighted by how fast the
  replica actually is, so a slow replica with a short queue does not look idle. This gateway's
  requests sent since the reading count as queued. An upstream whose metrics could not be read
  scores by its in-flight count alone.

With affinity, a request that carries a key (session, user or prompt prefix) goes to the key's
upstream on a consistent-hash ring, unless that one holds more than `load_factor` × the mean
in-flight count, in which case the ring is walked to the next one under the bound (consistent
hashing with bounded loads, Mirrokni et al. 2018): a replica's KV cache keeps the conversation,
and a hot key cannot overload it.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Strategy = Literal["round_robin", "least_outstanding", "engine_aware"]

# Points per upstream on the hash ring: enough for an even spread over a few upstreams.
_VNODES = 64


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """One reading of an upstream's engine gauges (`nv_trt_llm_*` on its metrics port)."""

    active: float = 0.0
    waiting: float = 0.0
    max_batch: float = 0.0
    kv_fraction: float = 0.0
    in_flight_then: int = 0
    """This gateway's in-flight count on the upstream when the reading was taken."""
    iterations: float = 0.0
    """The engine's iteration counter (`nv_trt_llm_general_metrics{iteration_counter}`)."""
    step_s: float | None = None
    """Seconds per engine iteration while it had work, averaged over readings; None until
    measured."""

    def score(self, in_flight_now: int, step_s: float) -> float:
        """Expected seconds per token for a request sent now."""
        batch = max(self.max_batch, 1.0)
        sent_since = max(0, in_flight_now - self.in_flight_then)
        queued = self.waiting + max(0.0, self.active + sent_since - batch)
        return step_s * (1 + queued / batch) * (1 + self.kv_fraction)


class Candidate(Protocol):
    url: str
    in_flight: int
    engine: EngineLoad | None


class Balancer:
    """Picks one of the eligible upstreams for a request."""

    def __init__(
        self, strategy: Strategy = "least_outstanding", *, load_factor: float = 1.25
    ) -> None:
        self.strategy = strategy
        self.load_factor = load_factor
        self._turn = 0
        self._ring_of: tuple[str, ...] = ()
        self._ring: list[tuple[int, int]] = []

    def pick(self, eligible: Sequence[Candidate], key: str | None = None) -> Candidate:
        """`eligible` is never empty; `key` asks for affinity."""
        if len(eligible) == 1:
            return eligible[0]
        if key is not None:
            return self._affine(eligible, key)
        self._turn += 1
        if self.strategy == "round_robin":
            return eligible[self._turn % len(eligible)]
        if self.strategy == "least_outstanding":
            scores = [float(u.in_flight) for u in eligible]
        else:
            scores = _engine_scores(eligible)
        best = min(scores)
        tied = [u for u, s in zip(eligible, scores, strict=True) if s == best]
        return tied[self._turn % len(tied)]  # ties go in turn

    def _affine(self, eligible: Sequence[Candidate], key: str) -> Candidate:
        urls = tuple(u.url for u in eligible)
        if urls != self._ring_of:
            self._ring = sorted(
                (_hash(f"{url}#{v}"), i) for i, url in enumerate(urls) for v in range(_VNODES)
            )
            self._ring_of = urls
        total = sum(u.in_flight for u in eligible)
        bound = math.ceil(self.load_factor * (total + 1) / len(eligible))
        position = bisect.bisect(self._ring, (_hash(key), len(urls)))
        seen: set[int] = set()
        for step in range(len(self._ring)):
            index = self._ring[(position + step) % len(self._ring)][1]
            if index in seen:
                continue
            if eligible[index].in_flight < bound:
                return eligible[index]
            seen.add(index)
            if len(seen) == len(eligible):
                break
        return min(eligible, key=lambda u: u.in_flight)


def _engine_scores(eligible: Sequence[Candidate]) -> list[float]:
    # A replica not measured yet (idle since it started) is taken to be as fast as the fastest.
    steps = [u.engine.step_s for u in eligible if u.engine is not None and u.engine.step_s]
    fastest = min(steps, default=1.0)
    if any(u.engine is None for u in eligible):  # no readings at all: fewest in flight
        return [float(u.in_flight) for u in eligible]
    return [
        u.engine.score(u.in_flight, u.engine.step_s or fastest)  # type: ignore[union-attr]
        for u in eligible
    ]


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
