"""The three LocalMoE dashboards as code: the gateway, the engine behind Triton, the MoE experts.

Every metric here is one our processes export (the gateway's `/metrics`, Triton's metrics port);
nothing from kube-state-metrics. `python -m monitoring generate` writes them to
`helm/localmoe/files/dashboards/`; `docs/dashboards.md` describes each panel.
"""

from __future__ import annotations

from monitoring.grafana import (
    RANGE,
    Dashboard,
    Panel,
    Row,
    Target,
    Threshold,
    Variable,
    attainment,
    deriv,
    increase,
    quantile,
    rate,
    ratio,
    selector,
    sum_by,
)

__all__ = ["DASHBOARDS", "SLO", "SLO_CHOICES", "engine", "experts", "gateway"]

# The attainment tiles' targets: dashboard variables whose choices are bucket boundaries of the
# histograms (as prometheus_client writes `le`), the first choice being the default.
SLO_CHOICES = {
    "ttft_slo": ("Time to first token SLO (s)", ("0.5", "0.25", "1.0", "2.5")),
    "itl_slo": ("Inter-token latency SLO (s)", ("0.1", "0.05", "0.2", "0.4")),
    "e2e_slo": ("End-to-end SLO (s)", ("10.0", "5.0", "20.0", "40.0")),
}
SLO = {"availability": 0.99, "attainment": 0.95}
SLO_VARIABLES = tuple(
    Variable(name, label, options=options, default=options[0])
    for name, (label, options) in SLO_CHOICES.items()
)

DATASOURCE_VARIABLE = Variable("datasource", "Data source")
_GW = {"instance": "~$instance"}
_GWM = {"instance": "~$instance", "model": "~$model"}
_ENG = {"instance": "~$instance", "model": "~$model"}

_SLO_STEPS = (
    Threshold("red"),
    Threshold("orange", round(SLO["attainment"] - 0.05, 4)),
    Threshold("green", SLO["attainment"]),
)


def _percentiles(histogram: str, by: tuple[str, ...] = (), **labels: str) -> tuple[Target, ...]:
    suffix = "".join(f" {{{{{label}}}}}" for label in by)
    return tuple(
        Target(quantile(q, histogram, by, **labels), f"p{round(q * 100)}{suffix}")
        for q in (0.5, 0.9, 0.99)
    )


def _gateway_rows() -> tuple[Row, ...]:
    requests = selector("localmoe_http_requests_total", **_GW)
    slo = Row(
        "Service levels",
        (
            Panel(
                "TTFT ≤ ${ttft_slo} s",
                "Share of requests whose first token came within the SLO, over the rate window.",
                (Target(attainment("localmoe_time_to_first_token_seconds", "$ttft_slo", **_GWM)),),
                kind="stat",
                unit="percentunit",
                width=6,
                height=4,
                decimals=1,
                thresholds=_SLO_STEPS,
            ),
            Panel(
                "Inter-token latency ≤ ${itl_slo} s",
                "Share of streamed token gaps within the SLO.",
                (Target(attainment("localmoe_inter_token_latency_seconds", "$itl_slo", **_GWM)),),
                kind="stat",
                unit="percentunit",
                width=6,
                height=4,
                decimals=1,
                thresholds=_SLO_STEPS,
            ),
            Panel(
                "End-to-end ≤ ${e2e_slo} s",
                "Share of generations finished within the SLO (first to last delta).",
                (Target(attainment("localmoe_generation_duration_seconds", "$e2e_slo", **_GWM)),),
                kind="stat",
                unit="percentunit",
                width=6,
                height=4,
                decimals=1,
                thresholds=_SLO_STEPS,
            ),
            Panel(
                "Availability (non-5xx)",
                "Share of HTTP responses that are not server errors (429s and 4xx count as "
                "available: the gateway answered as designed).",
                (
                    Target(
                        ratio(
                            sum_by(
                                [],
                                rate(
                                    selector(
                                        "localmoe_http_requests_total", **_GW, status="~[^5].*"
                                    )
                                ),
                            ),
                            sum_by([], rate(requests)),
                        )
                    ),
                ),
                kind="stat",
                unit="percentunit",
                width=6,
                height=4,
                decimals=2,
                thresholds=(
                    Threshold("red"),
                    Threshold("orange", round(SLO["availability"] - 0.01, 4)),
                    Threshold("green", SLO["availability"]),
                ),
            ),
        ),
    )
    traffic = Row(
        "Traffic and errors",
        (
            Panel(
                "Requests by route",
                "HTTP requests per second by route template.",
                (Target(sum_by(["route"], rate(requests)), "{{route}}"),),
                unit="reqps",
                stack=True,
            ),
            Panel(
                "Responses by status",
                "HTTP responses per second by status code.",
                (Target(sum_by(["status"], rate(requests)), "{{status}}"),),
                unit="reqps",
                stack=True,
            ),
            Panel(
                "Errors by type",
                "Error responses and SSE error events per second by OpenAI error type and code.",
                (
                    Target(
                        sum_by(["type", "code"], rate(selector("localmoe_errors_total", **_GW))),
                        "{{type}} / {{code}}",
                    ),
                ),
                unit="reqps",
                stack=True,
            ),
            Panel(
                "Tokens per second",
                "Prompt and completion tokens of answered requests, per model.",
                (
                    Target(
                        sum_by(["model"], rate(selector("localmoe_prompt_tokens_total", **_GWM))),
                        "prompt {{model}}",
                    ),
                    Target(
                        sum_by(
                            ["model"], rate(selector("localmoe_completion_tokens_total", **_GWM))
                        ),
                        "completion {{model}}",
                    ),
                ),
                unit="short",
            ),
            Panel(
                "Requests in flight",
                "HTTP requests being served (streams until their last byte), per gateway.",
                (
                    Target(
                        sum_by(["instance"], selector("localmoe_http_requests_in_flight", **_GW)),
                        "{{instance}}",
                    ),
                ),
            ),
            Panel(
                "HTTP duration p90 by route",
                "90th percentile of the time to the last byte, per route.",
                (
                    Target(
                        quantile(0.9, "localmoe_http_request_duration_seconds", ("route",), **_GW),
                        "{{route}}",
                    ),
                ),
                unit="s",
            ),
        ),
    )
    latency = Row(
        "Generation latency",
        (
            Panel(
                "Time to first token",
                "p50/p90/p99 from the request being ready for the backend to its first token; "
                "cache hits and misses apart.",
                _percentiles("localmoe_time_to_first_token_seconds", ("cache",), **_GWM),
                unit="s",
            ),
            Panel(
                "Inter-token latency",
                "p50/p90/p99 of the gap between consecutive deltas of a streamed choice.",
                _percentiles("localmoe_inter_token_latency_seconds", **_GWM),
                unit="s",
            ),
            Panel(
                "End-to-end generation time",
                "p50/p90/p99 from the request being ready for the backend to its last delta.",
                _percentiles("localmoe_generation_duration_seconds", **_GWM),
                unit="s",
            ),
        ),
    )
    lookups = selector("localmoe_cache_lookups_total", **_GW)
    decisions = selector("localmoe_ratelimit_decisions_total", **_GW)
    policy = Row(
        "Policy: auth, limits, cache",
        (
            Panel(
                "Cache hit ratio",
                "Hits (either tier) per request looked up, and each tier's own hit ratio "
                "(Redis is asked only on a local miss).",
                (
                    Target(
                        ratio(
                            sum_by(
                                [],
                                rate(selector("localmoe_cache_lookups_total", **_GW, result="hit")),
                            ),
                            sum_by(
                                [],
                                rate(selector("localmoe_cache_lookups_total", **_GW, tier="local")),
                            ),
                        ),
                        "overall",
                    ),
                    Target(
                        ratio(
                            sum_by(
                                ["tier"],
                                rate(selector("localmoe_cache_lookups_total", **_GW, result="hit")),
                            ),
                            sum_by(["tier"], rate(lookups)),
                        ),
                        "{{tier}}",
                    ),
                ),
                unit="percentunit",
                min=0,
                max=1,
            ),
            Panel(
                "Rate-limit decisions",
                "Decisions per second on requests that have limits, by limit (requests or tokens "
                "per minute) and decision, and the refusals counted by the limit that refused.",
                (
                    Target(
                        sum_by(["kind", "decision"], rate(decisions)),
                        "{{kind}}: {{decision}}",
                    ),
                    Target(
                        sum_by(
                            ["kind"], rate(selector("localmoe_ratelimit_rejections_total", **_GW))
                        ),
                        "refused: {{kind}}",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Auth failures",
                "Requests refused for their bearer token, by reason.",
                (
                    Target(
                        sum_by(["reason"], rate(selector("localmoe_auth_failures_total", **_GW))),
                        "{{reason}}",
                    ),
                ),
                unit="reqps",
                stack=True,
            ),
            Panel(
                "Policy storage (Redis) trouble",
                "Failed Redis calls of the limiter and the cache, and decisions the limiter's "
                "per-process fallback took while Redis was away. Flat zero is healthy.",
                (
                    Target(
                        sum_by(
                            [], rate(selector("localmoe_ratelimit_storage_errors_total", **_GW))
                        ),
                        "ratelimit storage errors",
                    ),
                    Target(
                        sum_by(
                            [], rate(selector("localmoe_ratelimit_fallback_decisions_total", **_GW))
                        ),
                        "ratelimit fallback decisions",
                    ),
                    Target(
                        sum_by([], rate(selector("localmoe_cache_storage_errors_total", **_GW))),
                        "cache storage errors",
                    ),
                ),
                unit="ops",
            ),
        ),
    )
    upstreams = Row(
        "Upstreams (Triton endpoints)",
        (
            Panel(
                "Upstream up",
                "1 while the gateway's health checks find the upstream ready, 0 otherwise.",
                (
                    Target(
                        sum_by(["upstream"], selector("localmoe_upstream_up", **_GW), op="min"),
                        "{{upstream}}",
                    ),
                ),
                kind="stat",
                width=6,
                min=0,
                max=1,
                thresholds=(Threshold("red"), Threshold("green", 1)),
            ),
            Panel(
                "Upstream requests by outcome",
                "Calls to each upstream per second by outcome (ok, error, timeout, cancelled), "
                "and retries.",
                (
                    Target(
                        sum_by(
                            ["upstream", "outcome"],
                            rate(selector("localmoe_upstream_requests_total", **_GW)),
                        ),
                        "{{upstream}} {{outcome}}",
                    ),
                    Target(
                        sum_by(
                            ["upstream"], rate(selector("localmoe_upstream_retries_total", **_GW))
                        ),
                        "{{upstream}} retries",
                    ),
                ),
                unit="reqps",
                width=6,
            ),
            Panel(
                "Upstream latency p90",
                "90th percentile of calls to each upstream.",
                (
                    Target(
                        quantile(
                            0.9, "localmoe_upstream_request_duration_seconds", ("upstream",), **_GW
                        ),
                        "{{upstream}}",
                    ),
                ),
                unit="s",
                width=6,
            ),
            Panel(
                "Upstream requests in flight",
                "Calls outstanding at each upstream (what least-outstanding balancing sees).",
                (
                    Target(
                        sum_by(
                            ["upstream"], selector("localmoe_upstream_requests_in_flight", **_GW)
                        ),
                        "{{upstream}}",
                    ),
                ),
                width=6,
            ),
        ),
    )
    resilience = Row(
        "Resilience: circuit breakers and admission",
        (
            Panel(
                "Upstream circuit state",
                "Each upstream's circuit breaker: closed (serving), open (failing, skipped) or "
                "half_open (one trial request let through).",
                (
                    Target(
                        sum_by(
                            ["upstream", "state"],
                            selector("localmoe_upstream_circuit_state", **_GW),
                            op="max",
                        )
                        + " > 0",
                        "{{upstream}}: {{state}}",
                    ),
                ),
                kind="stat",
                width=8,
                text_mode="name",
                series_colors=(
                    (".*: closed", "green"),
                    (".*: half_open", "orange"),
                    (".*: open", "red"),
                ),
            ),
            Panel(
                "Admission queue",
                "Generation requests waiting for a place in the gateway's bounded queue (left), "
                "and those refused with 503 server_overloaded per second, by reason (right).",
                (
                    Target(
                        sum_by([], selector("localmoe_admission_queue_length", **_GW)), "queued"
                    ),
                    Target(
                        sum_by(
                            ["reason"],
                            rate(selector("localmoe_admission_rejections_total", **_GW)),
                        ),
                        "refused: {{reason}}",
                    ),
                ),
                width=16,
                right_axis=("refused: queue_full", "refused: queue_timeout"),
                right_unit="reqps",
            ),
        ),
    )
    requests_decisions = selector("localmoe_ratelimit_decisions_total", **_GW, kind="requests")
    refused = selector("localmoe_ratelimit_decisions_total", **_GW, decision="refused")
    joined = Row(
        "Gateway policy against engine saturation",
        (
            Panel(
                "Admission vs engine queue",
                "Requests the gateway's limits admit and refuse (left) against what the engines "
                "hold: "
                "requests active and waiting in the batch, summed over every engine (right). "
                "Refusals while the engines are idle mean the limits, not capacity, bind.",
                (
                    Target(
                        sum_by(["decision"], rate(requests_decisions)),
                        "{{decision}}/s",
                    ),
                    Target(
                        sum_by([], selector("nv_trt_llm_request_metrics", request_type="active")),
                        "engine active",
                    ),
                    Target(
                        sum_by([], selector("nv_trt_llm_request_metrics", request_type="waiting")),
                        "engine waiting",
                    ),
                ),
                unit="reqps",
                width=12,
                right_axis=("engine active", "engine waiting"),
            ),
            Panel(
                "Refused share vs KV-cache and batch use",
                "Share of rate-limit decisions refused, against the engines' KV-cache use and "
                "batch slots in use (active / max). All three in 0..1.",
                (
                    Target(
                        ratio(
                            sum_by(["kind"], rate(refused)),
                            sum_by(["kind"], rate(decisions)),
                        ),
                        "refused share ({{kind}})",
                    ),
                    Target(
                        sum_by(
                            [],
                            selector(
                                "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="fraction"
                            ),
                            op="max",
                        ),
                        "KV cache used (max engine)",
                    ),
                    Target(
                        ratio(
                            sum_by(
                                [], selector("nv_trt_llm_request_metrics", request_type="active")
                            ),
                            sum_by([], selector("nv_trt_llm_request_metrics", request_type="max")),
                        ),
                        "batch slots used",
                    ),
                ),
                unit="percentunit",
                width=12,
                min=0,
                max=1,
            ),
        ),
    )
    return (slo, traffic, latency, policy, upstreams, resilience, joined)


def gateway() -> Dashboard:
    """Traffic, errors, latency, tokens, cache, limits, auth and upstreams of the gateways,
    joined with the engines' saturation."""
    return Dashboard(
        uid="localmoe-gateway",
        title="LocalMoE / Gateway",
        description="The OpenAI gateway: service levels, traffic, errors, generation latency, "
        "policy (auth, rate limits, cache), upstream health, circuit breakers and the admission "
        "queue, and rate-limit admission against engine load.",
        tags=("localmoe", "gateway"),
        variables=(
            DATASOURCE_VARIABLE,
            Variable("instance", "Gateway", "label_values(localmoe_http_requests_total, instance)"),
            Variable(
                "model", "Model", "label_values(localmoe_time_to_first_token_seconds_count, model)"
            ),
            *SLO_VARIABLES,
        ),
        rows=_gateway_rows(),
    )


def _engine_rows() -> tuple[Row, ...]:
    success = selector("nv_inference_request_success", **_ENG)
    failure = selector("nv_inference_request_failure", **_ENG)
    iterations = selector("nv_trt_llm_general_metrics", **_ENG, general_type="iteration_counter")
    triton = Row(
        "Triton",
        (
            Panel(
                "Triton success ratio",
                "Successful inference requests over all requests, every model together.",
                (
                    Target(
                        ratio(
                            sum_by([], rate(success)),
                            f"{sum_by([], rate(success))} + {sum_by([], rate(failure))}",
                        )
                    ),
                ),
                kind="stat",
                unit="percentunit",
                width=6,
                decimals=2,
                thresholds=(Threshold("red"), Threshold("orange", 0.98), Threshold("green", 0.99)),
            ),
            Panel(
                "Triton requests by model",
                "Successful and failed inference requests per second, per Triton model.",
                (
                    Target(sum_by(["model"], rate(success)), "ok {{model}}"),
                    Target(sum_by(["model"], rate(failure)), "failed {{model}}"),
                ),
                unit="reqps",
                width=9,
            ),
            Panel(
                "Pending requests",
                "Requests Triton holds in each model's scheduler queue.",
                (
                    Target(
                        sum_by(["model"], selector("nv_inference_pending_request_count", **_ENG)),
                        "{{model}}",
                    ),
                ),
                width=9,
            ),
            Panel(
                "Queue time per request",
                "Mean time a request waited in Triton's queue, per model.",
                (
                    Target(
                        ratio(
                            sum_by(
                                ["model"], rate(selector("nv_inference_queue_duration_us", **_ENG))
                            ),
                            sum_by(["model"], rate(success)),
                        )
                        + " / 1e6",
                        "{{model}}",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Compute time per request",
                "Mean time a model spent computing a request (Triton's compute_infer), per model.",
                (
                    Target(
                        ratio(
                            sum_by(
                                ["model"],
                                rate(selector("nv_inference_compute_infer_duration_us", **_ENG)),
                            ),
                            sum_by(["model"], rate(success)),
                        )
                        + " / 1e6",
                        "{{model}}",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Request time per request",
                "Mean end-to-end time inside Triton per request, per model.",
                (
                    Target(
                        ratio(
                            sum_by(
                                ["model"],
                                rate(selector("nv_inference_request_duration_us", **_ENG)),
                            ),
                            sum_by(["model"], rate(success)),
                        )
                        + " / 1e6",
                        "{{model}}",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Triton batch size",
                "Inferences per model execution (Triton's own batching; 1 for decoupled models).",
                (
                    Target(
                        ratio(
                            sum_by(["model"], rate(selector("nv_inference_count", **_ENG))),
                            sum_by(["model"], rate(selector("nv_inference_exec_count", **_ENG))),
                        ),
                        "{{model}}",
                    ),
                ),
                width=12,
            ),
            Panel(
                "Engine iterations per second",
                "Scheduler iterations of the in-flight batcher.",
                (
                    Target(
                        sum_by(
                            ["model"],
                            deriv(iterations),
                        ),
                        "{{model}}",
                    ),
                ),
                unit="ops",
                width=12,
            ),
        ),
    )
    requests = Row(
        "In-flight batching",
        (
            Panel(
                "Active and waiting requests",
                "Requests in the engine's batch (active), queued for a slot (waiting), and the "
                "batch's capacity (max).",
                tuple(
                    Target(
                        sum_by(
                            ["model"],
                            selector("nv_trt_llm_request_metrics", **_ENG, request_type=kind),
                        ),
                        f"{kind} {{{{model}}}}",
                    )
                    for kind in ("active", "waiting", "max")
                ),
            ),
            Panel(
                "Achieved batch size",
                "Tokens per decode step: how many sequences each engine step advanced.",
                (
                    Target(
                        ratio(
                            sum_by(
                                ["model"],
                                rate(
                                    selector(
                                        "nv_moe_engine_steps_total", **_ENG, kind="decode_tokens"
                                    )
                                ),
                            ),
                            sum_by(
                                ["model"],
                                rate(
                                    selector(
                                        "nv_moe_engine_steps_total", **_ENG, kind="decode_steps"
                                    )
                                ),
                            ),
                        ),
                        "{{model}}",
                    ),
                ),
            ),
            Panel(
                "Engine tokens per second",
                "Prefill (prompt) and decode (generated) tokens per second, and requests finished.",
                tuple(
                    Target(
                        sum_by(
                            ["model"],
                            rate(selector("nv_moe_engine_steps_total", **_ENG, kind=kind)),
                        ),
                        f"{kind} {{{{model}}}}",
                    )
                    for kind in ("prefill_tokens", "decode_tokens", "finished_requests")
                ),
            ),
            Panel(
                "Batcher composition",
                "Context tokens in the current batch, requests generating, requests paused.",
                tuple(
                    Target(
                        sum_by(
                            ["model"],
                            selector(
                                "nv_trt_llm_inflight_batcher_metrics",
                                **_ENG,
                                inflight_batcher_specific_metric=kind,
                            ),
                        ),
                        f"{kind} {{{{model}}}}",
                    )
                    for kind in ("total_context_tokens", "generation_requests", "paused_requests")
                ),
                width=12,
            ),
        ),
    )
    kv = Row(
        "KV cache",
        (
            Panel(
                "KV-cache used",
                "Used blocks over all blocks, per engine.",
                (
                    Target(
                        sum_by(
                            ["model", "instance"],
                            selector(
                                "nv_trt_llm_kv_cache_block_metrics",
                                **_ENG,
                                kv_cache_block_type="fraction",
                            ),
                            op="max",
                        ),
                        "{{model}} {{instance}}",
                    ),
                ),
                kind="timeseries",
                unit="percentunit",
                width=12,
                min=0,
                max=1,
            ),
            Panel(
                "KV-cache blocks",
                "Used, free and total blocks.",
                tuple(
                    Target(
                        sum_by(
                            ["model"],
                            selector(
                                "nv_trt_llm_kv_cache_block_metrics",
                                **_ENG,
                                kv_cache_block_type=kind,
                            ),
                        ),
                        f"{kind} {{{{model}}}}",
                    )
                    for kind in ("used", "free", "max")
                ),
                width=12,
            ),
        ),
    )
    return (triton, requests, kv)


def engine() -> Dashboard:
    """Triton's request accounting and the CPU MoE engine's batching and KV cache."""
    return Dashboard(
        uid="localmoe-engine",
        title="LocalMoE / Engine",
        description="Triton and the MoE engine behind it: request success, queue and compute "
        "time per model, in-flight batching, achieved batch size, KV cache.",
        tags=("localmoe", "triton", "engine"),
        variables=(
            DATASOURCE_VARIABLE,
            Variable("instance", "Triton", "label_values(nv_inference_request_success, instance)"),
            Variable("model", "Triton model", "label_values(nv_inference_request_success, model)"),
        ),
        rows=_engine_rows(),
    )


def _experts_rows() -> tuple[Row, ...]:
    tokens = selector("nv_moe_expert_tokens_total", **_ENG, layer="~$layer")
    per_expert = sum_by(["layer", "expert"], rate(tokens))
    load = Row(
        "Expert load",
        (
            Panel(
                "Routed tokens: layer × expert",
                "Tokens routed to each expert per second, one row per layer/expert, over time. "
                "A hot row is an expert the router prefers.",
                (Target(per_expert, "L{{layer}} E{{expert}}", format="time_series"),),
                kind="heatmap",
                unit="short",
                width=24,
                height=12,
            ),
            Panel(
                "Tokens per expert over the dashboard range",
                "Layer × expert matrix of the tokens routed over the selected time range.",
                (
                    Target(
                        sum_by(["layer", "expert"], increase(tokens, RANGE)),
                        instant=True,
                        format="table",
                    ),
                ),
                kind="table",
                width=12,
                height=10,
                transformations=(
                    {
                        "id": "groupingToMatrix",
                        "options": {
                            "columnField": "expert",
                            "rowField": "layer",
                            "valueField": "Value",
                        },
                    },
                ),
            ),
            Panel(
                "Routed tokens per layer",
                "Tokens per second entering each MoE layer's router (top-k counts each routing).",
                (Target(sum_by(["layer"], rate(tokens)), "layer {{layer}}"),),
                unit="short",
                width=12,
                height=10,
            ),
        ),
    )
    imbalance = Row(
        "Imbalance",
        (
            Panel(
                "Imbalance per layer (max / mean over the rate window)",
                "The busiest expert's tokens over the mean expert's, per layer, from the counters; "
                "1 is perfectly balanced, the expert count is the worst case.",
                (
                    Target(
                        ratio(
                            sum_by(["layer"], per_expert, op="max"),
                            sum_by(["layer"], per_expert, op="avg"),
                        ),
                        "layer {{layer}}",
                    ),
                ),
                width=12,
                min=1,
            ),
            Panel(
                "Engine-reported imbalance",
                "The engine's own max / mean over its recent window, exported for every MoE layer "
                "even when per-expert series are capped.",
                (
                    Target(
                        sum_by(
                            ["layer"],
                            selector("nv_moe_expert_imbalance_ratio", **_ENG, layer="~$layer"),
                            op="max",
                        ),
                        "layer {{layer}}",
                    ),
                ),
                width=8,
                min=1,
            ),
            Panel(
                "Worst layer now",
                "The highest engine-reported imbalance of any layer.",
                (
                    Target(
                        sum_by(
                            [],
                            selector("nv_moe_expert_imbalance_ratio", **_ENG, layer="~$layer"),
                            op="max",
                        ),
                    ),
                ),
                kind="stat",
                width=4,
                decimals=2,
                thresholds=(Threshold("green"), Threshold("orange", 1.5), Threshold("red", 2.5)),
            ),
        ),
    )
    return (load, imbalance)


def experts() -> Dashboard:
    """Which experts the router sends tokens to, and how unevenly, layer by layer."""
    return Dashboard(
        uid="localmoe-experts",
        title="LocalMoE / MoE experts",
        description="Expert load of the Mixture-of-Experts engine: routed tokens per layer and "
        "expert, and per-layer imbalance (max / mean).",
        tags=("localmoe", "moe", "experts"),
        variables=(
            DATASOURCE_VARIABLE,
            Variable("instance", "Triton", "label_values(nv_moe_expert_tokens_total, instance)"),
            Variable("model", "Triton model", "label_values(nv_moe_expert_tokens_total, model)"),
            Variable("layer", "MoE layer", "label_values(nv_moe_expert_tokens_total, layer)"),
        ),
        rows=_experts_rows(),
    )


DASHBOARDS = {"gateway": gateway, "engine": engine, "experts": experts}
"""Dashboard name (the file is `localmoe-<name>.json`) -> its builder."""
