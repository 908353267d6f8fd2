"""The `tensorrt_llm` model's request handling without Triton: responses per step, exactly one
final per request, stop by id (also before the request), refusals, and clients that go away."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3MoeConfig

from moe_engine import Engine, EngineConfig, StepOutput
from moe_engine.python_backend.engine_requests import EngineRequests
from moe_engine.python_backend.responder import Responder
from moe_engine.python_backend.responses import ResponseKit
from tests.support import wait_for
from tests.unit.triton_sender import FINAL, KIT, RecordingSender, value


class ScriptedEngine:
    """An engine that runs nothing: it keeps each submitted request's callback, emits what a
    test tells it to, and finishes a request as "cancelled" when asked, as the real one does."""

    max_batch_size = 2

    def __init__(self) -> None:
        self.requests: dict[str, Any] = {}
        self.cancelled: list[str] = []
        self.refuse: Exception | None = None
        self.tables: dict[str, Any] = {}  # request id -> (prompt_table, extra_ids) submitted
        self._lock = threading.Lock()

    def submit(
        self,
        request_id: str,
        prompt: list[int],
        params: Any,
        on_output: Any,
        prompt_table: torch.Tensor | None = None,
        extra_ids: list[int] | None = None,
    ) -> None:
        if self.refuse is not None:
            raise self.refuse
        with self._lock:
            self.requests[request_id] = on_output
            self.tables[request_id] = (prompt_table, extra_ids)

    def cancel(self, request_id: str) -> bool:
        with self._lock:
            on_output = self.requests.pop(request_id, None)
            self.cancelled.append(request_id)
        if on_output is not None:
            on_output(StepOutput(request_id, [], None, True, "cancelled"))
        return on_output is not None

    def emit(self, request_id: str, tokens: list[int], reason: str | None = None) -> None:
        on_output = self.requests[request_id]
        if reason is not None:
            del self.requests[request_id]
        on_output(StepOutput(request_id, tokens, None, reason is not None, reason))

    def only(self) -> str:
        assert len(self.requests) == 1, self.requests
        return next(iter(self.requests))

    def shutdown(self) -> None:
        for request_id in list(self.requests):
            self.cancel(request_id)


def generation(prompt: list[int] | None = None, **extra: Any) -> dict[str, np.ndarray]:
    ids = prompt or [1, 2, 3]
    inputs = {
        "input_ids": np.asarray([ids], dtype=np.int32),
        "input_lengths": np.asarray([[len(ids)]], dtype=np.int32),
        "request_output_len": np.asarray([[8]], dtype=np.int32),
    }
    for name, v in extra.items():
        inputs[name] = np.asarray([[v]])
    return inputs


STOP = {"stop": np.asarray([[True]]), **generation()}


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture
def requests(engine: ScriptedEngine) -> Iterator[EngineRequests]:
    handler = EngineRequests(
        engine,  # type: ignore[arg-type]
        KIT,
        default_end_ids=(0,),
        cancel_poll_interval_s=0.001,
        max_queue_size=1,
    )
    yield handler
    handler.close()


def test_a_streaming_request_gets_each_steps_tokens_then_an_empty_final(
    requests: EngineRequests, engine: ScriptedEngine
) -> None:
    sender = RecordingSender()
    requests.handle("c", generation(streaming=True), sender)
    engine_id = engine.only()
    engine.emit(engine_id, [5])
    engine.emit(engine_id, [6])
    engine.emit(engine_id, [], "stop")
    assert sender.finished.wait(2)
    ids = [r[1]["output_ids"].reshape(-1).tolist() for r, _ in sender.responses if r]
    assert ids == [[5], [6]] and sender.final is None


def test_a_non_streaming_request_gets_all_its_tokens_in_one_final(
    requests: EngineRequests, engine: ScriptedEngine
) -> None:
    sender = RecordingSender()
    requests.handle("c", generation(), sender, wanted=["output_ids"])
    engine_id = engine.only()
    engine.emit(engine_id, [5])
    engine.emit(engine_id, [6], "length")
    assert sender.finished.wait(2)
    assert len(sender.responses) == 1
    assert sender.final[1]["output_ids"].shape == (1, 1, 2)
    assert set(sender.final[1]) == {"output_ids"}  # only what was asked for


def test_stop_ends_the_requests_with_its_client_id(
    requests: EngineRequests, engine: ScriptedEngine
) -> None:
    first, second, other = RecordingSender(), RecordingSender(), RecordingSender()
    requests.handle("shared", generation(streaming=True), first)
    requests.handle("shared", generation(streaming=True), second)
    stop = RecordingSender()
    requests.handle("shared", STOP, stop)
    assert stop.final is None and len(engine.cancelled) == 2
    assert first.finished.wait(2) and second.finished.wait(2)
    requests.handle("other", generation(streaming=True), other)
    assert not other.finished.wait(0.05)


def test_a_stop_that_arrives_before_its_request_ends_the_request_at_once(
    requests: EngineRequests, engine: ScriptedEngine
) -> None:
    requests.handle("late", STOP, RecordingSender())
    sender = RecordingSender()
    requests.handle("late", generation(streaming=True), sender)
    assert sender.finished.wait(2)
    assert sender.final is None and engine.requests == {}  # never reached the engine
    again = RecordingSender()
    requests.handle("late", generation(streaming=True), again)  # the stop was used up
    assert engine.requests and not again.finished.wait(0.05)


def test_a_client_that_goes_away_is_cancelled_in_the_engine(
    requests: EngineRequests, engine: ScriptedEngine
) -> None:
    sender = RecordingSender()
    requests.handle("c", generation(streaming=True), sender)
    engine_id = engine.only()
    sender.cancelled = True
    assert wait_for(lambda: engine_id in engine.cancelled, timeout=2)
    assert sender.finished.wait(2) and sender.violations == []


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"input_lengths": np.asarray([[1]])}, "input_ids"),
        (generation(temperature=-1.0), "temperature"),
        (generation(beam_width=2), "beam_width"),
        ({**generation(), "input_ids": np.ones((3, 4), dtype=np.int32)}, "batch of 3"),
    ],
)
def test_a_bad_request_gets_an_invalid_argument_final(
    requests: EngineRequests, inputs: dict[str, np.ndarray], message: str
) -> None:
    sender = RecordingSender()
    requests.handle("c", inputs, sender)
    assert sender.finished.wait(2)
    kind, code, text = sender.final
    assert (kind, code) == ("error", "invalid") and message in text


def test_a_full_queue_refuses_as_unavailable_until_a_request_finishes(
    requests: EngineRequests, engine: ScriptedEngine
) -> None:
    accepted = [RecordingSender() for _ in range(3)]  # two slots, a queue of one
    for sender in accepted:
        requests.handle("", generation(streaming=True), sender)
    refused = RecordingSender()
    requests.handle("", generation(streaming=True), refused)
    assert refused.finished.wait(2) and refused.final[:2] == ("error", "unavailable")
    engine.emit(next(iter(engine.requests)), [], "stop")
    later = RecordingSender()
    requests.handle("", generation(streaming=True), later)
    assert len(engine.requests) == 3 and not later.finished.wait(0.05)


def test_an_engine_that_refuses_gives_an_internal_error_final(
    requests: EngineRequests, engine: ScriptedEngine
) -> None:
    engine.refuse = RuntimeError("engine is shut down")
    sender = RecordingSender()
    requests.handle("c", generation(), sender)
    assert sender.finished.wait(2)
    assert sender.final == ("error", "internal", "engine is shut down")


def test_responder_sends_an_error_final_when_the_final_cannot_be_built() -> None:
    def tensors(outputs: Any) -> Any:
        raise MemoryError("no room for the response")

    sender = RecordingSender()
    kit = ResponseKit(tensors=tensors, error=KIT.error, final_flag=FINAL)
    responder = Responder(sender, kit, streaming=False, logprobs=False)
    with pytest.raises(MemoryError):
        responder(StepOutput("r", [1, 2], None, True, "length"))
    assert sender.final == ("error", "internal", "could not build the final response")


def test_responder_turns_an_engine_error_into_an_error_final() -> None:
    sender = RecordingSender()
    Responder(sender, KIT, streaming=True, logprobs=False)(StepOutput("r", [], None, True, "error"))
    assert sender.final[:2] == ("error", "internal")


# --- with the real engine ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = Qwen3MoeConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        num_experts=2,
        num_experts_per_tok=1,
        moe_intermediate_size=16,
        intermediate_size=32,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-moe")
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def test_a_request_stopped_while_queued_for_a_slot_never_decodes(model_dir: Path) -> None:
    engine = Engine.from_pretrained(
        model_dir, EngineConfig(max_batch_size=1, max_seq_len=256, num_threads=1)
    )
    handler = EngineRequests(engine, KIT, default_end_ids=(0,))
    engine.start()
    try:
        running, queued = RecordingSender(), RecordingSender()
        long = generation(streaming=True, ignore_eos=True)
        long["request_output_len"] = np.asarray([[200]], dtype=np.int32)
        handler.handle("running", long, running)
        handler.handle("queued", long, queued)
        assert wait_for(lambda: len(running.responses) >= 2, timeout=5)
        handler.handle("queued", STOP, RecordingSender())
        assert queued.finished.wait(2)
        assert queued.responses == [(None, FINAL)]  # no token: it never had a slot
        assert not running.finished.is_set()
        handler.handle("running", STOP, RecordingSender())
        assert running.finished.wait(2)
        assert value(running.responses[0][0], "sequence_length") == 1
    finally:
        handler.close()


# --- prompt tables (images) --------------------------------------------------------------------


def with_table(rows: int, hidden: int = 4, **extra: np.ndarray) -> dict[str, np.ndarray]:
    """A request whose last `rows` ids are prompt-table ids (the vocabulary is 128 here)."""
    ids = [1, 2, *range(128, 128 + rows)]
    return {
        **generation(ids),
        "prompt_embedding_table": np.ones((1, rows, hidden), dtype=np.float16),
        "prompt_vocab_size": np.asarray([[rows]], dtype=np.int32),
        **extra,
    }


def test_the_prompt_table_and_extra_ids_reach_the_engine(
    requests: EngineRequests, engine: ScriptedEngine
) -> None:
    extra = np.asarray([[0, 0, 7, 7]], dtype=np.uint64)
    requests.handle("c", with_table(2, prompt_table_extra_ids=extra), RecordingSender())
    table, extra_ids = engine.tables[engine.only()]
    assert table.shape == (2, 4) and table.dtype == torch.float16
    assert extra_ids == [0, 0, 7, 7]


def test_an_empty_prompt_table_is_a_text_request(
    requests: EngineRequests, engine: ScriptedEngine
) -> None:
    # What the multimodal ensemble sends when a request has no image.
    inputs = {
        **generation(),
        "prompt_embedding_table": np.zeros((1, 0, 4), dtype=np.float16),
        "prompt_vocab_size": np.zeros((1, 1), dtype=np.int32),
    }
    requests.handle("c", inputs, RecordingSender())
    assert engine.tables[engine.only()] == (None, None)


def test_a_prompt_vocab_size_that_is_not_the_tables_row_count_is_invalid(
    requests: EngineRequests,
) -> None:
    inputs = with_table(2)
    inputs["prompt_vocab_size"] = np.asarray([[3]], dtype=np.int32)
    sender = RecordingSender()
    requests.handle("c", inputs, sender)
    assert sender.finished.wait(2)
    assert sender.final == (
        "error",
        "invalid",
        "prompt_vocab_size=3 but prompt_embedding_table has 2 rows",
    )


def test_table_ids_beyond_the_table_are_invalid_in_the_real_engine(model_dir: Path) -> None:
    engine = Engine.from_pretrained(model_dir, EngineConfig(max_batch_size=1, num_threads=1))
    handler = EngineRequests(engine, KIT, default_end_ids=(0,))
    engine.start()
    try:
        inputs = with_table(2, hidden=32)
        inputs["input_ids"][0, -1] = 130  # row 2 of a 2-row table
        sender = RecordingSender()
        handler.handle("c", inputs, sender)
        # Upper bounds: a loaded machine makes a real engine's first step slow, never wrong.
        assert sender.finished.wait(30)
        kind, code, text = sender.final
        assert (kind, code) == ("error", "invalid") and "130" in text
        served = RecordingSender()
        # ignore_eos: the random weights may sample the end id (0) before the 8th token.
        handler.handle("c", with_table(2, hidden=32, ignore_eos=np.asarray([[True]])), served)
        assert served.finished.wait(30) and value(served.final, "sequence_length") == 8
    finally:
        handler.close()
