"""Triton adapter for the CPU MoE engine, with the tensor interface of NVIDIA's `tensorrt_llm`.

Only Triton's callbacks live here. The engine (`moe_engine.engine`) schedules, caches and
samples; `moe_engine.python_backend.engine_requests` turns requests into engine requests and
their outputs into responses, sent from one outbox thread; `engine_metrics` beside it publishes
the custom metrics.
"""

from __future__ import annotations

import json

import triton_python_backend_utils as pb_utils

from moe_engine import Engine, EngineConfig
from moe_engine.python_backend import triton_logging as engine_logs
from moe_engine.python_backend.engine_metrics import (
    DEFAULT_EXPERT_MAX_SERIES,
    start_engine_metrics,
)
from moe_engine.python_backend.engine_requests import EngineRequests
from moe_engine.python_backend.responses import triton_kit
from moe_engine.python_backend.text import load_tokenizer


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        engine_logs.forward_to(
            pb_utils.Logger.log_info, pb_utils.Logger.log_warn, pb_utils.Logger.log_error
        )
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        checkpoint = params["checkpoint_dir"]
        expert_series = _int_param(params, "expert_metrics_max_series", DEFAULT_EXPERT_MAX_SERIES)
        engine = Engine.from_pretrained(
            checkpoint,
            EngineConfig(
                max_batch_size=int(params.get("engine_max_batch_size", "8")),
                max_seq_len=int(params["max_seq_len"]) if params.get("max_seq_len") else None,
                dtype=params.get("dtype", "float32"),
                num_threads=int(params["num_threads"]) if params.get("num_threads") else None,
                step_delay_s=float(params.get("bench_step_delay_ms") or 0) / 1000,
            ),
        )
        self.requests = EngineRequests(
            engine,
            triton_kit(pb_utils),
            default_end_ids=load_tokenizer(checkpoint).eos_ids,
            cancel_poll_interval_s=float(params.get("cancel_poll_interval_s", "0.02")),
            max_queue_size=int(params.get("max_queue_size", "1024")),
        )
        engine.start()
        self.metrics = start_engine_metrics(
            engine,
            _metric_family,
            model=args["model_name"],
            version=args["model_version"],
            expert_max_series=expert_series,
        )

    def execute(self, requests: list) -> None:
        # Not `async`: handling only queues work for the engine thread, and the Python backend
        # logs a KeyError for every async execute that finishes before it has recorded it.
        for request in requests:
            inputs = {t.name(): t.as_numpy() for t in request.inputs()}
            self.requests.handle(
                request.request_id(),
                inputs,
                request.get_response_sender(),
                request.requested_output_names(),
            )
        return None

    def finalize(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
        self.requests.close()


def _metric_family(name: str, description: str, kind: str) -> pb_utils.MetricFamily:
    kinds = {"gauge": pb_utils.MetricFamily.GAUGE, "counter": pb_utils.MetricFamily.COUNTER}
    return pb_utils.MetricFamily(name=name, description=description, kind=kinds[kind])


def _int_param(params: dict[str, str], name: str, default: int) -> int:
    text = params.get(name, "")
    if not text:
        return default
    if not text.isdigit():
        raise ValueError(f"parameter {name} must be an integer >= 0, got {text!r}")
    return int(text)
