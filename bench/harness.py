"""The benchmark run: start the stack, plan every measurement, run them with the rounds of the
things compared interleaved, and hand the measurements to the report.

A measurement is one load run of one target (the gateway, the LiteLLM proxy, Triton directly over
HTTP or gRPC) at one concurrency. Around each run the CPU time of every process involved is read
from /proc, so each result carries CPU per request (or per token) for each of them, and whether
the load generator itself was the limit.
"""

from __future__ import annotations

import contextlib
import json
import math
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench.loadgen import LoadGenerator
from bench.procs import cpu_seconds
from bench.stack import ECHO_MODEL, MOE_MODEL, MOE_ROUTE, Service, Stack, chat_body, http_post
from bench.wrk import COUNTER, run_wrk, wrk_binary

SCENARIOS = ("gateway_cost", "real_route", "peer", "streaming", "cache", "engine", "workers")
CHAT_PATH = "/v1/chat/completions"
# A client using more than this share of one core is reported as the likely bottleneck.
_CLIENT_BOUND_CORES = 0.85
_SETTLE_S = 0.25
# Distinct answers the Redis-hit measurement goes round.
_REDIS_KEYS = 256


@dataclass(frozen=True)
class BenchConfig:
    """Everything a run can be told. `quick()` is the seconds-long setting the tests use."""

    out_dir: Path
    model_dir: Path
    concurrency: tuple[int, ...] = (1, 16, 64)
    duration: float = 2.0
    warmup: float = 0.5
    rounds: int = 2
    stream_tokens: tuple[int, ...] = (64, 256)
    # Streams on the MoE beyond the engine's batch of 8 only wait in its queue: their runs last
    # minutes and measure the queue, so MoE streams stop at this concurrency.
    moe_stream_max_concurrency: int = 16
    engine_concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    engine_tokens: int = 64
    cache_concurrency: tuple[int, ...] = (1, 16)
    workers: tuple[int, ...] = (1, 2)
    scenarios: tuple[str, ...] = SCENARIOS
    litellm: bool = True
    moe: bool = True  # False: Triton serves only `echo` (starts in seconds; MoE runs skipped)
    profile: bool = False
    profile_seconds: float = 8.0
    echo_instances: int = 1
    gateway_settings: tuple[tuple[str, Any], ...] = ()  # extra YAML settings for every gateway
    quick: bool = False

    def quick_variant(self) -> BenchConfig:
        """The same run shrunk to seconds: one concurrency, short windows, one round."""
        return replace(
            self,
            concurrency=(4,),
            duration=0.6,
            warmup=0.2,
            rounds=1,
            stream_tokens=(16,),
            engine_concurrency=(1, 4),
            engine_tokens=8,
            cache_concurrency=(1,),
            workers=(1,),
            profile_seconds=1.5,
            quick=True,
        )


@dataclass
class Target:
    """Something to put load on, and how."""

    name: str
    tool: str  # "wrk" or "loadgen"
    url: str = ""
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    job: dict[str, Any] | None = None
    front: str | None = None  # the process in front of Triton: "gateway", "litellm" or None
    counter_from: int | None = None  # first number for `__COUNTER__` bodies (default: fresh)
    cycle: int | None = None  # go round `cycle` numbers from `counter_from` instead
    warm_with: Target | None = None  # what to send during the warm-up instead


@dataclass
class Run:
    """One planned measurement."""

    scenario: str
    route: str
    target: Target
    concurrency: int
    round: int
    max_tokens: int
    stream: bool = False
    variant: str = ""
    before: Callable[[], None] | None = None
    metrics_url: str | None = None


class Harness:
    """Owns the stack and the load generator for one benchmark run."""

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.stack = Stack(
            config.out_dir / "work",
            model_dir=config.model_dir,
            echo_instances=config.echo_instances,
            gateway_settings=dict(config.gateway_settings),
        )
        self.loadgen: LoadGenerator | None = None
        self.gateway: Service | None = None
        self.extra_gateways: dict[str, Service] = {}
        self.litellm: Service | None = None
        self.features: Any = None
        self.notes: list[str] = []
        self.measurements: list[dict[str, Any]] = []
        self.profiles: list[dict[str, Any]] = []
        self.drains: list[str] = []
        self.failures: list[str] = []
        self._gateway_lost = False
        self._counter = 0
        self._salt = secrets.randbelow(10**4) * 10**9
        self._prompt_cache: dict[str, str] = {}

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start Triton, the gateway, the LiteLLM proxy and what the chosen scenarios need."""
        cfg = self.config
        if not wrk_binary():
            self.notes.append(
                "wrk is not installed: HTTP throughput was measured with the Python client, "
                "which saturates near 1,000-2,000 requests/s (apt-get install wrk)."
            )
        wants_litellm = cfg.litellm and {"gateway_cost", "real_route", "peer", "streaming"} & set(
            cfg.scenarios
        )
        self.stack.start_triton(with_moe=cfg.moe)
        if not cfg.moe:
            self.notes.append("Echo only: Triton served no MoE model, so no MoE runs were made.")
        if wants_litellm:
            self.litellm = self.stack.start_litellm()
            if self.litellm is None:
                self.notes.append("LiteLLM is not installed: the peer comparison was skipped.")
        self.gateway = self.stack.start_gateway("gateway")
        self.features = self.stack.probe_gateway(self.gateway)
        self.loadgen = LoadGenerator(self.stack.workdir / "loadgen.log")
        self.stack.cleanup.add("loadgen", self.loadgen.close)
        if "cache" in cfg.scenarios and self.features.cache:
            redis = self.stack.start_redis()
            self.extra_gateways["gateway-redis-a"] = self.stack.start_gateway(
                "gateway-redis-a", redis_url=redis.url
            )
            self.extra_gateways["gateway-redis-b"] = self.stack.start_gateway(
                "gateway-redis-b", redis_url=redis.url, settings={"cache": {"max_entries": 1}}
            )
        if "workers" in cfg.scenarios and self.features.workers_flag:
            for n in cfg.workers:
                if n > 1:
                    name = f"gateway-{n}-workers"
                    self.extra_gateways[name] = self.stack.start_gateway(name, workers=n)
        if self.litellm is not None:
            self.litellm = self.stack.wait_litellm()

    def close(self) -> None:
        """Stop every process the run started."""
        self.stack.close()

    # --- planning ------------------------------------------------------------------------

    def plan(self) -> list[Run]:
        """Every measurement of the chosen scenarios, rounds interleaved."""
        cfg, runs = self.config, []
        planners = {
            "gateway_cost": self._plan_gateway_cost,
            "real_route": self._plan_real_route,
            "streaming": self._plan_streaming,
            "cache": self._plan_cache,
            "engine": self._plan_engine,
            "workers": self._plan_workers,
        }
        needs_moe = {"real_route", "engine"}
        for name in cfg.scenarios:
            if name in planners and (cfg.moe or name not in needs_moe):
                runs.extend(planners[name]())
        # The peer comparison is made of the gateway-cost and real-route runs.
        peer_alone = not {"gateway_cost", "real_route"} & set(cfg.scenarios)
        if "peer" in cfg.scenarios and self.litellm is not None and peer_alone:
            runs.extend(self._plan_gateway_cost())
        return runs

    def _interleave(
        self, scenario: str, route: str, targets: list[Target], concurrency: tuple[int, ...], **kw
    ) -> list[Run]:
        runs = []
        for c in concurrency:
            for r in range(self.config.rounds):
                # Rotate the order each round so no target always runs first (or last).
                shift = r % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    runs.append(Run(scenario, route, target, c, r, **kw))
        return runs

    def _plan_gateway_cost(self) -> list[Run]:
        targets = [
            self._gateway_target(chat_body(ECHO_MODEL, max_tokens=1)),
            *self._litellm_targets(chat_body(ECHO_MODEL, max_tokens=1)),
            self._triton_http_target(ECHO_MODEL, 1),
            self._grpc_target(ECHO_MODEL, 1),
            self._grpc_target(ECHO_MODEL, 1, stream_per_request=True),
        ]
        return self._interleave(
            "gateway_cost", ECHO_MODEL, targets, self.config.concurrency, max_tokens=1
        )

    def _plan_real_route(self) -> list[Run]:
        targets = [
            self._gateway_target(chat_body(MOE_MODEL, max_tokens=1)),
            *self._litellm_targets(chat_body(MOE_MODEL, max_tokens=1)),
            self._grpc_target(MOE_ROUTE, 1),
        ]
        if not self.config.quick:
            targets.append(self._triton_http_target(MOE_ROUTE, 1))
        return self._interleave(
            "real_route", MOE_MODEL, targets, self.config.concurrency, max_tokens=1
        )

    def _plan_streaming(self) -> list[Run]:
        runs = []
        routes = [(ECHO_MODEL, ECHO_MODEL), (MOE_MODEL, MOE_ROUTE)][: 2 if self.config.moe else 1]
        for model, route in routes:
            moe = model == MOE_MODEL
            for tokens in self.config.stream_tokens:
                extra = {"ignore_eos": True} if moe else {}
                body = chat_body(model, max_tokens=tokens, stream=True, **extra)
                targets = [
                    self._http_stream_target("gateway", self.gateway, body),
                    self._grpc_target(route, tokens, stream=True, **extra),
                ]
                if not moe and self.litellm is not None and not self.config.quick:
                    body = chat_body(model, max_tokens=tokens, stream=True)
                    targets.append(self._http_stream_target("litellm", self.litellm, body))
                levels = self.config.concurrency
                if moe:
                    levels = tuple(c for c in levels if c <= self.config.moe_stream_max_concurrency)
                runs += self._interleave(
                    "streaming",
                    model,
                    targets,
                    levels,
                    max_tokens=tokens,
                    stream=True,
                )
        return runs

    def _plan_cache(self) -> list[Run]:
        if not self.features.cache:
            self.notes.append(
                "Cache scenario skipped: the gateway does not answer with `x-cache` yet "
                "(the response cache of issue 4 is not on its request path)."
            )
            return []
        hit = chat_body(ECHO_MODEL, max_tokens=16, temperature=0.0, content="cached question")
        miss = chat_body(ECHO_MODEL, max_tokens=16, temperature=0.0, content=f"question {COUNTER}")
        runs = []
        local = self._gateway_target(hit)
        local_miss = replace(self._gateway_target(miss), warm_with=local)
        gw_a, gw_b = self.extra_gateways["gateway-redis-a"], self.extra_gateways["gateway-redis-b"]
        redis_miss = replace(self._gateway_target(miss, gw_a), warm_with=local)
        for c in self.config.cache_concurrency:
            for r in range(self.config.rounds):
                runs.append(Run("cache", ECHO_MODEL, local, c, r, 16, variant="in-process hit"))
                runs.append(Run("cache", ECHO_MODEL, local_miss, c, r, 16, variant="miss"))
                runs.append(Run("cache", ECHO_MODEL, redis_miss, c, r, 16, variant="redis miss"))
                # Fill Redis with _REDIS_KEYS answers through gateway A, then read them round
                # and round through gateway B, whose one-entry LRU never holds the next one:
                # every lookup of B is a Redis hit (its /metrics counts confirm it).
                base = self._next_counter_base()
                read = replace(
                    self._gateway_target(miss, gw_b),
                    counter_from=base,
                    cycle=_REDIS_KEYS,
                    warm_with=replace(
                        self._gateway_target(miss, gw_b), counter_from=base, cycle=_REDIS_KEYS
                    ),
                )
                fill = self._prefill(self._gateway_target(miss, gw_a), base, _REDIS_KEYS)
                runs.append(
                    Run(
                        "cache",
                        ECHO_MODEL,
                        read,
                        c,
                        r,
                        16,
                        variant="redis hit",
                        before=fill,
                        metrics_url=f"{gw_b.url}/metrics",
                    )
                )
        return runs

    def _plan_engine(self) -> list[Run]:
        target = self._grpc_target(
            MOE_ROUTE, self.config.engine_tokens, stream=True, ignore_eos=True
        )
        return self._interleave(
            "engine",
            MOE_MODEL,
            [target],
            self.config.engine_concurrency,
            max_tokens=self.config.engine_tokens,
            stream=True,
        )

    def _plan_workers(self) -> list[Run]:
        if len(self.config.workers) < 2:
            return []
        if not self.features.workers_flag:
            self.notes.append(
                "Workers scenario skipped: `localmoe serve` has no `--workers` option yet."
            )
            return []
        # Echo needs Triton, which shares the cores here; cache hits are the gateway alone, so
        # they show whether the gateway itself scales with its workers.
        echo = chat_body(ECHO_MODEL, max_tokens=1)
        hit = chat_body(ECHO_MODEL, max_tokens=1, temperature=0.0, content="asked by every worker")
        targets = []
        for body, label in ((echo, ""), (hit, ", cache hit")):
            for n in self.config.workers:
                service = self.gateway if n == 1 else self.extra_gateways[f"gateway-{n}-workers"]
                target = self._gateway_target(body, service)
                targets.append(replace(target, name=f"gateway x{n}{label}"))
        return self._interleave(
            "workers", ECHO_MODEL, targets, self.config.concurrency, max_tokens=1
        )

    # --- targets -------------------------------------------------------------------------

    def _gateway_target(self, body: dict[str, Any], service: Service | None = None) -> Target:
        service = service or self.gateway
        assert service is not None
        return self._http_target("gateway", service, body, self.stack.gateway_headers())

    def _litellm_targets(self, body: dict[str, Any]) -> list[Target]:
        if self.litellm is None:
            return []
        return [self._http_target("litellm", self.litellm, body, self.stack.litellm_headers())]

    def _http_target(
        self, name: str, service: Service, body: dict[str, Any], headers: dict[str, str]
    ) -> Target:
        url = service.url + CHAT_PATH
        if wrk_binary():
            return Target(name, "wrk", url, body, headers, front=name)
        job = {"kind": "http", "url": url, "body": body, "headers": headers}
        return Target(name, "loadgen", url, body, headers, job=job, front=name)

    def _http_stream_target(self, name: str, service: Service | None, body: dict) -> Target:
        assert service is not None
        headers = (
            self.stack.gateway_headers() if name == "gateway" else self.stack.litellm_headers()
        )
        url = service.url + CHAT_PATH
        job = {"kind": "http", "url": url, "body": body, "headers": headers, "stream": True}
        return Target(name, "loadgen", url, body, headers, job=job, front=name)

    def _triton_http_target(self, route: str, max_tokens: int) -> Target:
        url = f"{self.stack.triton.http_url}/v2/models/{route}/generate"
        body = {"text_input": self._prompt(), "max_tokens": max_tokens}
        if wrk_binary():
            return Target("triton-http", "wrk", url, body)
        return Target(
            "triton-http", "loadgen", url, body, job={"kind": "http", "url": url, "body": body}
        )

    def _grpc_target(
        self,
        route: str,
        max_tokens: int,
        stream: bool = False,
        stream_per_request: bool = False,
        **extra: Any,
    ) -> Target:
        inputs = {"text_input": self._prompt(), "max_tokens": max_tokens, **extra}
        if stream:
            inputs["stream"] = True
        job = {"kind": "grpc", "url": self.stack.triton.grpc_url, "model": route, "inputs": inputs}
        name = "triton-grpc-stream" if stream else "triton-grpc"
        if stream_per_request:
            job["stream_per_request"] = True
            name += "-stream-per-request"
        return Target(name, "loadgen", self.stack.triton.grpc_url, job=job)

    def _prompt(self, content: str = "Hello! How are you today?") -> str:
        """The prompt text the gateway renders for the default chat body."""
        if content not in self._prompt_cache:
            from gateway.core.chat_template import ChatTemplate

            template = ChatTemplate.from_dir(self.config.model_dir)
            assert template is not None, "the tiny model ships a chat template"
            messages = [{"role": "user", "content": content}]
            self._prompt_cache[content] = template.render(messages)
        return self._prompt_cache[content]

    def _next_counter_base(self) -> int:
        # Fresh numbers for `__COUNTER__` bodies: unique per run and per benchmark, and small
        # enough for LuaJIT to print exactly (it formats numbers with %.14g).
        self._counter += 1
        return self._salt + self._counter * 1_000_000

    def _prefill(self, fill: Target, base: int, keys: int) -> Callable[[], None]:
        def run() -> None:
            text = json.dumps(fill.body)
            bodies = [json.loads(text.replace(COUNTER, str(base + i))) for i in range(1, keys + 1)]
            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(lambda b: http_post(fill.url, b, fill.headers)[0], bodies))
            if any(status != 200 for status in statuses):
                raise RuntimeError(f"filling the Redis cache failed: statuses {set(statuses)}")

        return run

    # --- running -------------------------------------------------------------------------

    def run(self, runs: list[Run]) -> None:
        """Run every planned measurement, showing progress."""
        log = self.config.out_dir / "measurements.jsonl"
        with tqdm(total=len(runs), unit="run", dynamic_ncols=True) as bar, log.open("a") as out:
            for run in runs:
                bar.set_description(_label(run))
                self._check_gateway(run)
                try:
                    result = self.measure(run)
                except RuntimeError as exc:  # one failed run should not cost the others
                    self.failures.append(f"{_label(run)}: {exc}")
                    bar.update()
                    continue
                self.measurements.append(result)
                out.write(json.dumps(result, default=str) + "\n")
                out.flush()
                bar.set_postfix_str(_short(result))
                bar.update()

    def _check_gateway(self, run: Run) -> None:
        # A gateway that stopped trusting a Triton which still serves is a finding, not noise:
        # every run it serves from then on fails with 503. Say so once, where it started.
        if run.target.front != "gateway" or self._gateway_lost:
            return
        service = self._service_for(run.target.url)
        try:
            ready = http_get_status(f"{service.url}/health/ready") == 200
        except OSError:
            ready = False
        if not ready and _triton_ready(self.stack.triton.http_url):
            self._gateway_lost = True
            previous = run_label(self.measurements[-1]) if self.measurements else "start"
            self.failures.append(
                f"{service.name} reports no ready Triton upstream (GET /health/ready is not 200) "
                f"while Triton answers its own readiness probe; first seen before {_label(run)}, "
                f"after {previous}. Its requests fail with 503 from then on."
            )

    def measure(self, run: Run) -> dict[str, Any]:
        """One measurement: wait for Triton to be idle, warm-up, CPU snapshots, load, CPU
        snapshots."""
        cfg, target = self.config, run.target
        settle_s = self._wait_idle()
        if settle_s > 1.0 and self.measurements:
            previous = self.measurements[-1]
            self.drains.append(
                f"{previous['scenario']}/{previous['route']} {previous['max_tokens']} tokens "
                f"{previous['target']} c={previous['concurrency']}: Triton stayed busy "
                f"{settle_s:.1f} s after the run's requests were cancelled"
            )
        if run.before is not None:
            run.before()
        pids = self._pids(target)
        if target.tool == "wrk":
            self._warm_up(target.warm_with or target, run.concurrency)
            lookups0 = _cache_lookups(run.metrics_url, self.stack.gateway_headers())
            cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
            counter = target.counter_from or self._next_counter_base()
            result = self._wrk(target, run.concurrency, cfg.duration, counter, target.cycle)
            total_requests, total_tokens = result["requests"], result.get("tokens", 0)
        else:
            assert self.loadgen is not None and target.job is not None
            lookups0 = _cache_lookups(run.metrics_url, self.stack.gateway_headers())
            cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
            job = {**target.job, "concurrency": run.concurrency}
            result = self.loadgen.run({**job, "duration": cfg.duration, "warmup": cfg.warmup})
            total_requests, total_tokens = result["total_requests"], result["total_tokens"]
        cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
        if target.tool == "wrk":
            cpu["client"] = result["client_cpu_s"]
        wall = result.get("client_wall_s") or result["window_s"] + cfg.warmup
        time.sleep(_SETTLE_S)
        measurement = {
            "scenario": run.scenario,
            "route": run.route,
            "target": target.name,
            "variant": run.variant,
            "tool": "wrk" if target.tool == "wrk" else f"python-{target.job['kind']}",
            "concurrency": run.concurrency,
            "round": run.round,
            "max_tokens": run.max_tokens,
            "stream": run.stream,
            "settle_s": settle_s,
            **{k: v for k, v in result.items() if k not in ("client_cpu_s", "client_wall_s")},
            "cpu_s": cpu,
            "cpu_cores": {name: s / wall for name, s in cpu.items()},
            "cpu_ms_per_request": {
                name: 1000 * s / total_requests if total_requests else math.nan
                for name, s in cpu.items()
            },
        }
        if run.stream:
            measurement["cpu_us_per_token"] = {
                name: 1e6 * s / total_tokens if total_tokens else math.nan
                for name, s in cpu.items()
            }
        measurement["client_bound"] = (
            measurement["cpu_cores"].get("client", 0) > _CLIENT_BOUND_CORES
        )
        if run.metrics_url:
            after = _cache_lookups(run.metrics_url, self.stack.gateway_headers())
            measurement["cache_lookups"] = {k: after.get(k, 0) - lookups0.get(k, 0) for k in after}
        return measurement

    def _wait_idle(self, timeout: float = 180.0) -> float:
        """Wait until Triton has no request pending or in the engine; the seconds waited.

        Runs end by cancelling what is still in flight; until Triton has let go of it, the next
        run would share the engine with the last one's leftovers.
        """
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if _triton_busy(self.stack.triton.metrics_url) == 0:
                break
            time.sleep(0.1)
        return time.monotonic() - start

    def _warm_up(self, target: Target, concurrency: int) -> None:
        if self.config.warmup >= 1:
            counter = target.counter_from or self._next_counter_base()
            self._wrk(target, concurrency, self.config.warmup, counter, target.cycle)
            return
        # wrk runs for whole seconds: a shorter warm-up is a few requests in a row.
        first = str((target.counter_from or 0) + 1)
        body = json.loads(json.dumps(target.body).replace(COUNTER, first))
        for _ in range(10):
            http_post(target.url, body, target.headers)

    def _wrk(
        self,
        target: Target,
        concurrency: int,
        seconds: float,
        counter: int,
        cycle: int | None = None,
    ) -> dict:
        body = json.dumps(target.body)
        return run_wrk(
            target.url,
            body=body,
            headers=target.headers,
            concurrency=concurrency,
            duration=seconds,
            counter_from=counter if COUNTER in body else None,
            cycle=cycle,
        )

    def _pids(self, target: Target) -> dict[str, int]:
        pids = {"triton": self.stack.triton_pid}
        if target.front == "gateway":
            service = self._service_for(target.url)
            pids["gateway"] = service.pid
        elif target.front == "litellm" and self.litellm is not None:
            pids["litellm"] = self.litellm.pid
        if target.tool == "loadgen" and self.loadgen is not None:
            pids["client"] = self.loadgen.pid
        return pids

    def _service_for(self, url: str) -> Service:
        for service in (self.gateway, *self.extra_gateways.values()):
            if service is not None and url.startswith(service.url):
                return service
        raise LookupError(url)

    # --- profiling -----------------------------------------------------------------------

    def profile_gateway(self) -> None:
        """Sample the gateway with py-spy under echo load (plain requests, then streams)."""
        from bench.profile import profile_during

        assert self.gateway is not None and self.loadgen is not None
        cfg = self.config
        seconds = cfg.profile_seconds
        plain = self._gateway_target(chat_body(ECHO_MODEL, max_tokens=1))
        tokens = max(cfg.stream_tokens)
        stream = self._http_stream_target(
            "gateway", self.gateway, chat_body(ECHO_MODEL, max_tokens=tokens, stream=True)
        )
        loads: list[tuple[str, Callable[[], object]]] = [
            (
                "echo c=16",
                lambda: (
                    self._wrk(plain, 16, seconds, 0)
                    if plain.tool == "wrk"
                    else self.loadgen.run(
                        {**plain.job, "concurrency": 16, "duration": seconds, "warmup": 0}
                    )
                ),
            ),
            (
                f"echo stream {tokens} tokens c=16",
                lambda: self.loadgen.run(
                    {**stream.job, "concurrency": 16, "duration": seconds, "warmup": 0}
                ),
            ),
        ]
        if cfg.quick:
            loads = loads[:1]
        for name, load in tqdm(loads, desc="profiling the gateway", unit="profile"):
            slug = name.replace(" ", "-").replace("=", "")
            self.profiles.append(
                profile_during(self.gateway.pid, load, seconds, cfg.out_dir / f"profile-{slug}")
                | {"load": name}
            )


@contextlib.contextmanager
def running(config: BenchConfig) -> Iterator[Harness]:
    """A started harness, stopped (every process) on exit, error or interrupt."""
    harness = Harness(config)
    try:
        harness.start()
        yield harness
    finally:
        harness.close()


def http_get_status(url: str, timeout: float = 5.0) -> int:
    """The status of GET `url` (errors included)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _triton_ready(http_url: str) -> bool:
    try:
        return http_get_status(f"{http_url}/v2/health/ready") == 200
    except OSError:
        return False


def run_label(m: dict[str, Any]) -> str:
    tokens = f" {m['max_tokens']}tok" if m["stream"] else ""
    what = m["variant"] or m["target"]
    return f"{m['scenario']}/{m['route']}{tokens} {what} c={m['concurrency']}"


def _triton_busy(metrics_url: str) -> float:
    """Requests Triton holds: pending in its queues, running or waiting in the engine."""
    import urllib.request

    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    busy = 0.0
    for line in text.splitlines():
        if line.startswith("nv_inference_pending_request_count{") or (
            line.startswith("nv_trt_llm_request_metrics{")
            and ('request_type="active"' in line or 'request_type="waiting"' in line)
        ):
            busy += float(line.rsplit(" ", 1)[1])
    return busy


def _cache_lookups(url: str | None, headers: dict[str, str]) -> dict[str, float]:
    if not url:
        return {}
    import urllib.request

    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("localmoe_cache_lookups_total{"):
            label = line.split('result="', 1)[1].split('"', 1)[0]
            found[label] = float(line.rsplit(" ", 1)[1])
    return found


def _label(run: Run) -> str:
    what = run.variant or run.target.name
    tokens = f" {run.max_tokens}tok" if run.stream else ""
    return f"{run.scenario}/{run.route}{tokens} {what} c={run.concurrency}"


def _short(result: dict[str, Any]) -> str:
    if result["stream"]:
        return f"{result['tokens_per_s']:.0f} tok/s"
    return f"{result['rps']:.0f} rps p50 {result['latency_ms'].get('p50', math.nan):.2f} ms"
