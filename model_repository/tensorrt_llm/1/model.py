"""Triton adapter for the CPU MoE engine, with the tensor interface of NVIDIA's `tensorrt_llm`.

Only the Triton callbacks live here; the engine (`moe_engine`) does scheduling, KV cache and
sampling, and `moe_engine.serving` maps tensors. The engine thread builds each response and an
outbox thread sends it (and polls for cancelled clients): both are round trips to the server
process, and the engine should be computing the next step meanwhile.
"""

from __future__ import annotations

import itertools
import json
import queue
import threading
import time
import uuid

import triton_python_backend_utils as pb_utils

from moe_engine import Engine, EngineConfig, SamplingParams, StepOutput
from moe_engine.serving import InputError, input_ids, output_tensors, sampling_kwargs, scalar
from moe_engine.text import load_tokenizer

_METRICS_PERIOD_S = 0.1


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        checkpoint = params["checkpoint_dir"]
        self.engine = Engine.from_pretrained(
            checkpoint,
            EngineConfig(
                max_batch_size=int(params.get("engine_max_batch_size", "8")),
                max_seq_len=int(params["max_seq_len"]) if params.get("max_seq_len") else None,
                dtype=params.get("dtype", "float32"),
                num_threads=int(params["num_threads"]) if params.get("num_threads") else None,
            ),
        )
        self.default_end_ids = load_tokenizer(checkpoint).eos_ids
        # Triton request ids are the client's and need not be unique (the ensemble copies the
        # client's id to every step), so the engine gets its own; `stop` finds them by client id.
        self._ids = _IdMap()
        # `stop` requests (what the BLS and the gateway send) act within a step; a client that
        # just drops its stream is noticed by the outbox, every 20 ms by default.
        self._outbox = _Outbox(self.engine, float(params.get("cancel_poll_interval_s", "0.02")))
        self.engine.start()
        self._metrics = _EngineMetrics(self.engine)
        self._metrics.start()

    async def execute(self, requests: list) -> None:
        for request in requests:
            self._submit(request)
        return None

    def _submit(self, request) -> None:
        sender = request.get_response_sender()
        inputs = {t.name(): t.as_numpy() for t in request.inputs()}
        if scalar(inputs, "stop", False):
            # TensorRT-LLM semantics: a request with stop=true cancels the one with its id.
            for engine_id in self._ids.lookup(request.request_id()):
                self.engine.cancel(engine_id)
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        try:
            prompt = input_ids(inputs)
            params = SamplingParams(**sampling_kwargs(inputs, self.default_end_ids))
            if (
                int(scalar(inputs, "num_return_sequences", 1)) != 1
                or int(scalar(inputs, "beam_width", 1)) != 1
            ):
                raise InputError("only beam_width=1 and num_return_sequences=1 are supported")
            streaming = bool(scalar(inputs, "streaming", False))
            client_id, engine_id = request.request_id(), uuid.uuid4().hex
            # From here on every response, the final one included, goes through the outbox.
            sender = self._outbox.watch(engine_id, sender)
            responder = _Responder(
                sender, streaming, params.return_logprobs, request.requested_output_names()
            )
            responder.on_finished = lambda: self._ids.remove(client_id, engine_id)
            self._ids.add(client_id, engine_id)
            try:
                self.engine.submit(engine_id, prompt, params, on_output=responder)
            except Exception:
                self._ids.remove(client_id, engine_id)
                raise
        except Exception as exc:
            # Every request gets its final response, or its client waits forever; a bad
            # request is the client's error, anything else (e.g. shutting down) is ours.
            code = (
                pb_utils.TritonError.INVALID_ARG
                if isinstance(exc, ValueError)
                else pb_utils.TritonError.INTERNAL
            )
            sender.send(
                pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), code)),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )

    def finalize(self) -> None:
        self._metrics.stop()
        self.engine.shutdown()  # every unfinished request gets its final response queued
        self._outbox.close()


class _IdMap:
    """Client request id -> the engine ids of its requests in flight (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[str, set[str]] = {}

    def add(self, client_id: str, engine_id: str) -> None:
        if client_id:
            with self._lock:
                self._ids.setdefault(client_id, set()).add(engine_id)

    def remove(self, client_id: str, engine_id: str) -> None:
        with self._lock:
            ids = self._ids.get(client_id)
            if ids is not None:
                ids.discard(engine_id)
                if not ids:
                    del self._ids[client_id]

    def lookup(self, client_id: str) -> list[str]:
        with self._lock:
            return list(self._ids.get(client_id, ()))


class _Outbox:
    """Sends every response of the engine's requests and watches them for cancelled clients, on
    one thread of its own.

    Both are round trips to the server process. A send waits for the server to take the
    response (a few hundred µs here): made on the engine thread, that wait came once per running
    sequence per step, 44 % of the thread's time with 8 streams, and `is_cancelled()` polls took
    another 8 %. Here the engine computes the next step meanwhile.

    One thread also keeps the two apart. The server frees a request's response factory once its
    final response is sent, and `is_cancelled()` on it after that crashes the server, so a request
    stops being watched here, on this thread, just before its final response goes out.
    """

    _WATCH = object()  # in place of a response: start watching this sender
    # Senders asked per poll: each ask is a round trip, and sends wait meanwhile. With more
    # requests in flight than this, each is asked less often than every interval.
    _POLL_BATCH = 32

    def __init__(self, engine: Engine, poll_interval_s: float) -> None:
        self._engine = engine
        self._interval_s = max(0.001, poll_interval_s)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        # engine id -> sender, in the order they are next asked; this thread only.
        self._watched: dict[str, object] = {}
        self._thread = threading.Thread(target=self._run, name="engine-outbox", daemon=True)
        self._thread.start()

    def watch(self, engine_id: str, sender) -> _QueuedSender:
        """Watch the request with this sender; send its responses with what this returns."""
        self._queue.put((engine_id, sender, self._WATCH, 0))
        return _QueuedSender(self._queue, engine_id, sender)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            pb_utils.Logger.log_error(f"responses still unsent after {timeout} s of shutdown")

    def _run(self) -> None:
        next_poll = time.monotonic() + self._interval_s
        while True:
            # Nothing watched: nothing to poll, so wait for the next item however long it takes.
            wait = max(0.0, next_poll - time.monotonic()) if self._watched else None
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = ()
            if item is None:
                return
            try:
                if item:
                    self._handle(*item)
                if time.monotonic() >= next_poll:
                    self._poll()
            except Exception as exc:  # this thread must outlive any one request
                pb_utils.Logger.log_error(f"engine outbox: {exc!r}")
            if time.monotonic() >= next_poll or not self._watched:
                next_poll = time.monotonic() + self._interval_s

    def _handle(self, engine_id: str, sender, response, flags: int) -> None:
        if response is self._WATCH:
            self._watched[engine_id] = sender
            return
        if flags & pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self._watched.pop(engine_id, None)
        try:
            sender.send(response, flags=flags)
        except Exception as exc:  # e.g. the client is gone; the next poll stops the request
            pb_utils.Logger.log_warn(f"sending a response failed: {exc}")

    def _poll(self) -> None:
        """Ask the next few watched senders; asked ones go to the back of the line."""
        for engine_id in list(itertools.islice(self._watched, self._POLL_BATCH)):
            sender = self._watched.pop(engine_id)
            try:
                cancelled = sender.is_cancelled()
            except Exception as exc:
                pb_utils.Logger.log_warn(f"is_cancelled() failed, cancelling: {exc}")
                cancelled = True
            if cancelled:
                self._engine.cancel(engine_id)  # its final response comes back through here
            else:
                self._watched[engine_id] = sender


class _QueuedSender:
    """A response sender whose `send` only queues, for the outbox to send."""

    __slots__ = ("_engine_id", "_queue", "_sender")

    def __init__(self, outbox: queue.SimpleQueue, engine_id: str, sender) -> None:
        self._queue, self._engine_id, self._sender = outbox, engine_id, sender

    def send(self, response=None, flags: int = 0) -> None:
        self._queue.put((self._engine_id, self._sender, response, flags))


class _Responder:
    """Turns engine step outputs into Triton responses for one request."""

    def __init__(self, sender, streaming: bool, logprobs: bool, wanted: list[str]) -> None:
        self.sender = sender
        self.streaming = streaming
        self.logprobs = logprobs
        # Tensors nobody asked for cost a copy to the server each per token; none named: all.
        self.wanted = set(wanted)
        self.tokens: list[int] = []
        self.token_logprobs: list[float] = []
        self.cum = 0.0
        self.on_finished = lambda: None

    def __call__(self, out: StepOutput) -> None:
        try:
            self._respond(out)
        except Exception:
            # The engine only logs a failure on a final output; the client still needs its
            # final response, and the outbox must stop watching the request.
            if out.finished:
                error = pb_utils.TritonError(
                    "could not build the final response", pb_utils.TritonError.INTERNAL
                )
                self.sender.send(
                    pb_utils.InferenceResponse(error=error),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
            raise

    def _respond(self, out: StepOutput) -> None:
        if out.finished:
            self.on_finished()
        step_lp = out.logprobs or []
        self.cum += float(sum(step_lp))
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if out.finished else 0
        if out.finish_reason == "error":
            error = pb_utils.TritonError(
                "engine error while generating", pb_utils.TritonError.INTERNAL
            )
            self.sender.send(pb_utils.InferenceResponse(error=error), flags=final)
            return
        if self.streaming:
            if out.token_ids:
                self._send(out.token_ids, step_lp if self.logprobs else None, final)
            elif final:
                self.sender.send(flags=final)
            return
        self.tokens.extend(out.token_ids)
        self.token_logprobs.extend(step_lp)
        if out.finished:
            self._send(self.tokens, self.token_logprobs if self.logprobs else None, final)

    def _send(self, tokens: list[int], logprobs: list[float] | None, flags: int) -> None:
        outputs = output_tensors(tokens, logprobs, self.cum)
        wanted = self.wanted or outputs.keys()
        tensors = [pb_utils.Tensor(k, v) for k, v in outputs.items() if k in wanted]
        self.sender.send(pb_utils.InferenceResponse(output_tensors=tensors), flags=flags)


class _EngineMetrics:
    """Publishes engine gauges and per-expert counters as Triton custom metrics."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.requests = pb_utils.MetricFamily(
            name="nv_trt_llm_request_metrics",
            description="TensorRT-LLM-style request metrics of the CPU MoE engine",
            kind=pb_utils.MetricFamily.GAUGE,
        )
        self.steps = pb_utils.MetricFamily(
            name="nv_moe_engine_steps_total",
            description="Engine iterations and the tokens they produced",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.experts = pb_utils.MetricFamily(
            name="nv_moe_expert_tokens_total",
            description="Tokens routed to each expert of each MoE layer",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.gauges = {
            kind: self.requests.Metric(labels={"request_type": kind, "model": "tensorrt_llm"})
            for kind in ("active", "waiting", "max", "peak_active")
        }
        self.counters = {
            kind: self.steps.Metric(labels={"kind": kind, "model": "tensorrt_llm"})
            for kind in ("decode_steps", "decode_tokens", "prefill_tokens", "finished_requests")
        }
        self.expert_metrics: dict[tuple[int, int], object] = {}
        self.seen: dict[object, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.wait(_METRICS_PERIOD_S):
            try:
                self._publish()
            except Exception as exc:  # metrics must never take the model down
                pb_utils.Logger.log_warn(f"engine metrics update failed: {exc}")

    def _publish(self) -> None:
        stats = self.engine.stats()
        for kind, value in (
            ("active", stats.active),
            ("waiting", stats.waiting),
            ("max", stats.max_batch_size),
            ("peak_active", stats.peak_active),
        ):
            self._set(self.gauges[kind], value)
        for kind, value in (
            ("decode_steps", stats.decode_steps_total),
            ("decode_tokens", stats.decode_tokens_total),
            ("prefill_tokens", stats.prefill_tokens_total),
            ("finished_requests", stats.finished_total),
        ):
            self._add(self.counters[kind], value)
        counts = self.engine.expert_counts()
        for layer in self.engine.moe_layers:
            for expert, value in enumerate(counts[layer]):
                metric = self.expert_metrics.get((layer, expert))
                if metric is None:
                    metric = self.experts.Metric(
                        labels={"model": "tensorrt_llm", "layer": str(layer), "expert": str(expert)}
                    )
                    self.expert_metrics[(layer, expert)] = metric
                self._add(metric, value)

    def _set(self, metric, value: float) -> None:
        if self.seen.get(metric) != value:
            metric.set(value)
            self.seen[metric] = value

    def _add(self, metric, total: float) -> None:
        delta = total - self.seen.get(metric, 0)
        if delta > 0:
            metric.increment(delta)
            self.seen[metric] = total
