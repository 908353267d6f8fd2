"""The BLS model's request handling without Triton: stop by id (also before the request),
refusals, the bound on engine calls waiting for a slot, and failures that still end with a final.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from moe_engine.python_backend.bls_requests import BlsRequests, Generation
from moe_engine.python_backend.bls_stream import Chunk
from moe_engine.python_backend.loop_thread import LoopThread
from moe_engine.python_backend.text import TokenizerInfo
from tests.unit.triton_sender import FINAL, KIT, RecordingSender, text_of, value


@pytest.fixture(scope="module")
def tok() -> TokenizerInfo:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(["hello world code"] * 20, trainer)
    return TokenizerInfo(tokenizer, (0,), 0)


class EngineModel:
    """`tensorrt_llm` as the BLS sees it: a generation starts (reaches the engine) on its first
    read, streams what the test feeds it, and ends with an empty final once stopped."""

    def __init__(self) -> None:
        self.generations: dict[str, Generation] = {}
        self._feeds: dict[str, asyncio.Queue[Chunk | None]] = {}
        self.stops: list[str] = []
        self.fail: Exception | None = None

    async def generate(self, generation: Generation) -> AsyncIterator[Chunk]:
        if self.fail is not None:
            raise self.fail
        feed: asyncio.Queue[Chunk | None] = asyncio.Queue()
        self.generations[generation.request_id] = generation
        self._feeds[generation.request_id] = feed
        while (item := await feed.get()) is not None:
            yield item
        yield Chunk(None)

    async def stop(self, request_id: str) -> None:
        self.stops.append(request_id)
        if request_id in self._feeds:
            self._feeds[request_id].put_nowait(None)

    def feed(self, request_id: str, *ids: int) -> None:
        self._feeds[request_id].put_nowait(Chunk(list(ids)))

    def end(self, request_id: str) -> None:
        self._feeds[request_id].put_nowait(None)


def text_request(text: str = "hello", max_tokens: int = 50, **extra: object) -> dict:
    inputs = {
        "text_input": np.asarray([[text.encode()]], dtype=np.object_),
        "max_tokens": np.asarray([[max_tokens]], dtype=np.int32),
        "stream": np.asarray([[True]]),
    }
    for name, v in extra.items():
        inputs[name] = v if isinstance(v, np.ndarray) else np.asarray([[v]])
    return inputs


STOP = {**text_request(""), "stop": np.asarray([[True]])}


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout)


@pytest.fixture
def engine() -> EngineModel:
    return EngineModel()


def bls(tok: TokenizerInfo, engine: EngineModel, **kw: int) -> BlsRequests:
    kw.setdefault("cancel_poll_interval_s", 0.001)
    return BlsRequests(tok, engine, KIT, **kw)


async def test_a_request_streams_its_text_and_ends_with_reason_and_counts(
    tok: TokenizerInfo, engine: EngineModel
) -> None:
    sender = RecordingSender()
    task = asyncio.create_task(bls(tok, engine).handle("a", text_request(), sender))
    await until(lambda: engine.generations)
    (engine_id,) = engine.generations
    for i in tok.tokenizer.encode("hello world").ids:
        engine.feed(engine_id, i)
    engine.end(engine_id)
    await task
    assert text_of(sender.responses) == "hello world"
    assert value(sender.final, "finish_reason") == "stop"
    assert engine.generations[engine_id].inputs["streaming"].item() is True


async def test_a_stop_ends_the_running_request_with_its_id(
    tok: TokenizerInfo, engine: EngineModel
) -> None:
    service, sender, stop = bls(tok, engine), RecordingSender(), RecordingSender()
    task = asyncio.create_task(service.handle("a", text_request(), sender))
    await until(lambda: engine.generations)
    (engine_id,) = engine.generations
    engine.feed(engine_id, 5)
    await service.handle("a", STOP, stop)
    await asyncio.wait_for(task, 2)
    assert engine.stops == [engine_id]
    assert stop.final is None and sender.responses[-1] == (None, FINAL)
    assert service.in_flight == 0


async def test_a_stop_that_arrives_first_ends_its_request_before_the_engine_sees_it(
    tok: TokenizerInfo, engine: EngineModel
) -> None:
    service, sender = bls(tok, engine), RecordingSender()
    await service.handle("early", STOP, RecordingSender())
    await asyncio.wait_for(service.handle("early", text_request(), sender), 2)
    assert sender.responses == [(None, FINAL)] and engine.generations == {}


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"max_tokens": np.asarray([[4]])}, "text_input"),
        (text_request(max_tokens=0), "max_tokens"),
        (text_request(stop_words=np.asarray([[b"\xff\xfe"]], dtype=np.object_)), "utf-8"),
        (text_request(stop_words=np.asarray([[b"x"] * 33], dtype=np.object_)), "at most 32"),
        (text_request(stop_words=np.asarray([[b"x" * 300]], dtype=np.object_)), "characters"),
        (
            {**text_request(), "text_input": np.asarray([[b"a"], [b"b"]], dtype=np.object_)},
            "batch of 2",
        ),
        (text_request("hello " * 1000), "longer than the context"),
    ],
)
async def test_a_bad_request_gets_an_invalid_argument_final(
    tok: TokenizerInfo, engine: EngineModel, inputs: dict, message: str
) -> None:
    sender = RecordingSender()
    await bls(tok, engine, max_context_len=64).handle("a", inputs, sender)
    kind, code, text = sender.final
    assert (kind, code) == ("error", "invalid") and message in text, text
    assert engine.generations == {}


async def test_requests_beyond_the_in_flight_limit_are_refused_as_unavailable(
    tok: TokenizerInfo, engine: EngineModel
) -> None:
    service = bls(tok, engine, max_in_flight=2)
    running = [asyncio.create_task(service.handle("", text_request(), RecordingSender()))]
    running.append(asyncio.create_task(service.handle("", text_request(), RecordingSender())))
    await until(lambda: len(engine.generations) == 2)
    refused = RecordingSender()
    await service.handle("", text_request(), refused)
    assert refused.final[:2] == ("error", "unavailable")
    for engine_id in engine.generations:
        engine.end(engine_id)
    await asyncio.gather(*running)


async def test_only_max_pending_requests_wait_on_the_engine_for_their_first_token(
    tok: TokenizerInfo, engine: EngineModel
) -> None:
    service = bls(tok, engine, max_pending=2)
    senders = [RecordingSender() for _ in range(4)]
    tasks = [
        asyncio.create_task(service.handle(str(i), text_request(), s))
        for i, s in enumerate(senders)
    ]
    await until(lambda: len(engine.generations) == 2)
    await asyncio.sleep(0.02)
    assert len(engine.generations) == 2  # the other two wait in the BLS
    first = next(iter(engine.generations))
    engine.feed(first, 5)  # its first token: it no longer holds a place
    await until(lambda: len(engine.generations) == 3)
    for engine_id in list(engine.generations):
        engine.end(engine_id)
    await until(lambda: len(engine.generations) == 4)
    engine.end(list(engine.generations)[-1])
    await asyncio.wait_for(asyncio.gather(*tasks), 2)
    assert all(s.finished.is_set() for s in senders)


async def test_a_waiting_request_stopped_or_abandoned_never_reaches_the_engine(
    tok: TokenizerInfo, engine: EngineModel
) -> None:
    service = bls(tok, engine, max_pending=1)
    busy, stopped, abandoned = RecordingSender(), RecordingSender(), RecordingSender()
    busy_task = asyncio.create_task(service.handle("busy", text_request(), busy))
    await until(lambda: engine.generations)
    waiting = [
        asyncio.create_task(service.handle("stopped", text_request(), stopped)),
        asyncio.create_task(service.handle("abandoned", text_request(), abandoned)),
    ]
    await asyncio.sleep(0.01)
    await service.handle("stopped", STOP, RecordingSender())
    abandoned.cancelled = True
    await asyncio.wait_for(asyncio.gather(*waiting), 2)
    assert stopped.responses == [(None, FINAL)] and abandoned.responses == [(None, FINAL)]
    assert len(engine.generations) == 1 and abandoned.violations == []
    engine.end(next(iter(engine.generations)))
    await busy_task


async def test_an_engine_failure_stops_the_engine_request_and_sends_an_error_final(
    tok: TokenizerInfo, engine: EngineModel
) -> None:
    engine.fail = RuntimeError("BLS call failed")
    sender = RecordingSender()
    await bls(tok, engine).handle("a", text_request(), sender)
    assert sender.final[:2] == ("error", "internal") and "BLS call failed" in sender.final[2]
    assert len(engine.stops) == 1


def test_coroutines_that_end_at_once_leave_nothing_behind() -> None:
    """What the Python backend's own bookkeeping got wrong (a KeyError per such request)."""

    async def instant() -> None:
        return None

    async def failing() -> None:
        raise ValueError("logged, not lost")

    loop = LoopThread("test-loop")
    try:
        futures = [loop.submit(instant()) for _ in range(500)] + [loop.submit(failing())]
        for future in futures[:-1]:
            future.result(timeout=2)
        with pytest.raises(ValueError):
            futures[-1].result(timeout=2)
        assert loop.pending == 0
    finally:
        loop.stop()
