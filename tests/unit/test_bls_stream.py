"""The BLS per-request state machine and its relay loop, on a real byte-level BPE tokenizer and a
sender that behaves like Triton's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from tokenizers import Tokenizer

from moe_engine.python_backend.bls_stream import Chunk, Client, TextState, relay
from tests.support import byte_level_tokenizer
from tests.unit.triton_sender import FINAL, KIT, RecordingSender, text_of, value

SAMPLE = "Hello world, café 東京 🙂 code"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return byte_level_tokenizer(["hello world code"] * 20, vocab_size=300)


def ids_of(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text).ids


def state(tokenizer: Tokenizer, stream: bool, **kw) -> TextState:
    kw.setdefault("stop", [])
    kw.setdefault("max_tokens", 1000)
    return TextState(tokenizer, kw.pop("stop"), kw.pop("max_tokens"), stream=stream, **kw)


def run(tokenizer: Tokenizer, text: str, *, stream: bool, **kw) -> tuple[str, TextState]:
    s = state(tokenizer, stream, logprobs=False, **kw)
    pieces = [s.add([i]) for i in ids_of(tokenizer, text)]
    final = s.finish()
    assert final is not None
    return "".join(p.text for p in pieces if p) + final.text, s


# --- TextState ---------------------------------------------------------------------------------


def test_streamed_text_equals_non_streamed_text_with_spaces_and_utf8(
    tokenizer: Tokenizer,
) -> None:
    streamed, _ = run(tokenizer, SAMPLE, stream=True)
    whole, _ = run(tokenizer, SAMPLE, stream=False)
    assert streamed == whole == SAMPLE


def test_a_split_multibyte_character_is_never_sent_in_halves(tokenizer: Tokenizer) -> None:
    s = state(tokenizer, True, logprobs=False)
    ids = ids_of(tokenizer, "🙂")
    assert len(ids) > 1
    pieces = [s.add([i]) for i in ids]
    assert pieces[:-1] == [None] * (len(ids) - 1)
    assert pieces[-1] is not None and pieces[-1].text == "🙂"


def test_a_stop_string_is_cut_before_it_and_ends_with_stop(tokenizer: Tokenizer) -> None:
    for stream in (True, False):
        text, s = run(tokenizer, "hello world code world", stream=stream, stop=["code"])
        assert text == "hello world "
        assert s.reason == "stop" and s.hit_stop_string


def test_max_tokens_ends_with_length_and_the_exact_count(tokenizer: Tokenizer) -> None:
    s = state(tokenizer, True, logprobs=False, max_tokens=3)
    for i in ids_of(tokenizer, "hello world code hello"):
        s.add([i])
    final = s.finish()
    assert s.reason == "length" and final is not None
    assert final.generated == 3 and final.finish_reason == "length"


def test_the_engine_ending_early_is_a_stop(tokenizer: Tokenizer) -> None:
    s = state(tokenizer, False, logprobs=False)
    s.add(ids_of(tokenizer, "hello"))
    final = s.finish()
    assert final is not None and final.finish_reason == "stop" and final.text == "hello"


def test_logprobs_travel_with_the_text_they_belong_to(tokenizer: Tokenizer) -> None:
    s = state(tokenizer, True, logprobs=True)
    ids = ids_of(tokenizer, "🙂")
    pieces = [s.add([i], [-float(n)]) for n, i in enumerate(ids)]
    assert pieces[-1] is not None
    assert pieces[-1].logprobs == [-float(n) for n in range(len(ids))]


def test_a_cancelled_request_has_no_final_text(tokenizer: Tokenizer) -> None:
    s = state(tokenizer, True, logprobs=False)
    s.add(ids_of(tokenizer, "hello"))
    s.cancel()
    assert s.done and s.finish() is None and s.add([1]) is None


# --- relay -------------------------------------------------------------------------------------


class StopLog:
    def __init__(self) -> None:
        self.ids: list[str] = []

    async def __call__(self, request_id: str) -> None:
        self.ids.append(request_id)


async def chunks(*items: Chunk, first_after: asyncio.Event | None = None) -> AsyncIterator[Chunk]:
    if first_after is not None:
        await first_after.wait()
    for item in items:
        await asyncio.sleep(0)
        yield item


def client_for(sender: RecordingSender, stops: StopLog) -> Client:
    client = Client(sender, FINAL, stops, poll_interval_s=0.0)
    client.engine_id = "engine-1"
    return client


async def test_relay_streams_deltas_then_a_final_with_reason_and_counts(
    tokenizer: Tokenizer,
) -> None:
    sender, stops = RecordingSender(), StopLog()
    ids = ids_of(tokenizer, "hello world")
    s = state(tokenizer, True, logprobs=False, max_tokens=len(ids))
    items = [Chunk([i]) for i in ids] + [Chunk(None)]
    await relay(chunks(*items), s, client_for(sender, stops), KIT, prompt_tokens=7)
    assert text_of(sender.responses) == "hello world"
    final = sender.final
    assert value(final, "finish_reason") == "length"
    assert value(final, "num_input_tokens") == 7
    assert value(final, "num_output_tokens") == len(ids)
    assert stops.ids == []  # the engine ends a length-limited request on its own


async def test_relay_stops_the_engine_once_on_a_stop_string_and_drains_the_rest(
    tokenizer: Tokenizer,
) -> None:
    sender, stops = RecordingSender(), StopLog()
    s = state(tokenizer, True, logprobs=False, stop=["world"])
    items = [Chunk([i]) for i in ids_of(tokenizer, "hello world code code code")]
    await relay(chunks(*items), s, client_for(sender, stops), KIT, prompt_tokens=1)
    assert text_of(sender.responses) == "hello "
    assert value(sender.final, "finish_reason") == "stop"
    assert stops.ids == ["engine-1"]


async def test_relay_turns_a_cancelled_client_into_an_engine_stop_and_an_empty_final(
    tokenizer: Tokenizer,
) -> None:
    sender, stops = RecordingSender(), StopLog()
    client = client_for(sender, stops)

    async def cancelled_after_two() -> AsyncIterator[Chunk]:
        for n, i in enumerate(ids_of(tokenizer, "hello world code hello")):
            if n == 2:
                sender.cancelled = True
            yield Chunk([i])

    s = state(tokenizer, True, logprobs=False)
    await relay(cancelled_after_two(), s, client, KIT, prompt_tokens=1)
    assert s.reason == "cancelled" and stops.ids == ["engine-1"]
    assert sender.responses[-1] == (None, FINAL) and sender.violations == []


async def test_relay_stops_a_request_whose_client_leaves_while_it_waits_for_a_slot(
    tokenizer: Tokenizer,
) -> None:
    sender, stops = RecordingSender(), StopLog()
    admitted = asyncio.Event()

    class Engine:
        """Ends the queued request when its stop comes, as tensorrt_llm does."""

        async def stop(self, request_id: str) -> None:
            await stops(request_id)
            admitted.set()

    client = Client(sender, FINAL, Engine().stop, poll_interval_s=0.001)
    client.engine_id = "engine-1"
    sender.cancelled = True  # gone before its first token
    s = state(tokenizer, True, logprobs=False)
    await asyncio.wait_for(
        relay(chunks(Chunk(None), first_after=admitted), s, client, KIT, prompt_tokens=1), 2
    )
    assert stops.ids == ["engine-1"] and sender.responses == [(None, FINAL)]


async def test_relay_passes_an_engine_error_on_as_the_final(tokenizer: Tokenizer) -> None:
    sender, stops = RecordingSender(), StopLog()
    engine_error = ("error", "invalid", "prompt too long")
    s = state(tokenizer, True, logprobs=False)
    await relay(
        chunks(Chunk(None, error_response=engine_error)),
        s,
        client_for(sender, stops),
        KIT,
        prompt_tokens=1,
    )
    assert sender.responses == [(engine_error, FINAL)]


async def test_the_client_is_asked_at_most_once_per_interval_and_never_after_the_final(
    tokenizer: Tokenizer,
) -> None:
    sender, stops = RecordingSender(), StopLog()
    now = [0.0]
    client = Client(sender, FINAL, stops, poll_interval_s=0.02, clock=lambda: now[0])

    async def ticking() -> AsyncIterator[Chunk]:
        for i in ids_of(tokenizer, "hello world code hello world code"):
            now[0] += 0.005  # four tokens per interval
            yield Chunk([i])

    s = state(tokenizer, True, logprobs=False)
    await relay(ticking(), s, client, KIT, prompt_tokens=1)
    tokens = len(ids_of(tokenizer, "hello world code hello world code"))
    assert 0 < sender.polls <= tokens // 4 + 1
    assert client.closed and not client.cancelled()  # no round trip after the final
    assert sender.violations == []
