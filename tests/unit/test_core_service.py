"""The core service driven through a scripted backend: a real `Backend` class that answers from
a script instead of Triton, so fan-out, usage, charging and cache replay are checked without
starting anything (the integration tier runs the same paths against real Triton)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.core.backend import Delta, GenerationRequest
from gateway.core.catalogue import Catalogue
from gateway.core.context import CallContext
from gateway.core.protocol import ChatCompletionRequest, CompletionRequest
from gateway.core.service import OpenAIService
from gateway.errors import ContextLengthExceeded
from gateway.policy.cache import ResponseCache
from gateway.settings import CacheSettings, RequestSettings, Settings
from tests.support import byte_level_tokenizer

CONTEXT = 256
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
WORDS = ["alpha", "beta", "gamma", "delta"]


class ScriptedBackend:
    """Answers every generation with `words` (one delta each), reporting `input_tokens`."""

    def __init__(self, words: list[str], input_tokens: int | None = None, logprobs: bool = False):
        self.words = words
        self.input_tokens = input_tokens
        self.logprobs = logprobs
        self.requests: list[GenerationRequest] = []
        self.closed = 0

    def ready(self) -> bool:
        return True

    async def generate(self, route: str, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        self.requests.append(request)
        try:
            words = self.words[: request.params.max_tokens]
            if not request.stream:
                yield Delta("".join(words), "length", self.input_tokens, len(words))
                return
            for i, word in enumerate(words):
                await asyncio.sleep(0)
                last = i == len(words) - 1
                yield Delta(
                    word,
                    finish_reason="length" if last else None,
                    num_input_tokens=self.input_tokens if last else None,
                    num_output_tokens=i + 1,
                    logprobs=(-0.5 - i,) if self.logprobs else None,
                )
        finally:
            self.closed += 1


class RecordingMeter:
    """A token budget that admits everything and records what it is charged."""

    def __init__(self) -> None:
        self.charged: list[int] = []

    async def check(self, prompt_tokens: int) -> None:
        return None

    def admits(self, prompt_tokens: int) -> bool:
        return True

    async def charge(self, tokens: int) -> None:
        self.charged.append(tokens)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer and a chat template, trained here in milliseconds."""
    path = tmp_path_factory.mktemp("scripted-model")
    tokenizer = byte_level_tokenizer([" ".join(WORDS) * 20, "hello world"] * 10, vocab_size=300)
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE}))
    return path


async def service(
    model_dir: Path, backend: ScriptedBackend, *, cache: bool = False, **limits: Any
) -> OpenAIService:
    settings = Settings(
        models=[{"id": "m", "tokenizer_dir": str(model_dir), "context_length": CONTEXT}],
        discover_models=False,
    )
    catalogue = Catalogue(settings)
    await catalogue.load_configured()
    response_cache = ResponseCache(CacheSettings()) if cache else None
    return OpenAIService(RequestSettings(**limits), catalogue, backend, cache=response_cache)


def ctx(meter: RecordingMeter | None = None) -> CallContext:
    return CallContext(request_id="req", meter=meter)


async def collect(stream: AsyncGenerator[Any, None]) -> list[Any]:
    return [chunk async for chunk in stream]


def text_of(chunk: Any) -> str:
    data = json.loads(chunk) if isinstance(chunk, bytes) else chunk.model_dump()
    choice = data["choices"][0]
    return choice.get("text") or (choice.get("delta") or {}).get("content") or ""


async def test_prompts_times_n_fan_out_prompt_major_with_distinct_seeds(model_dir: Path) -> None:
    backend = ScriptedBackend(WORDS)
    svc = await service(model_dir, backend)
    request = CompletionRequest(model="m", prompt=["one", "two"], n=2, max_tokens=3, seed=5)
    response = await svc.completion(request, ctx())
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert [r.prompt for r in backend.requests] == ["one", "one", "two", "two"]
    assert [r.request_id for r in backend.requests] == ["req-0", "req-1", "req-2", "req-3"]
    assert [r.params.seed for r in backend.requests] == [5, 6, 5, 6]
    assert all(c.text == "alphabetagamma" for c in response.choices)


async def test_usage_counts_each_prompt_once_and_prefers_the_upstream_count(
    model_dir: Path,
) -> None:
    backend = ScriptedBackend(WORDS, input_tokens=11)
    svc = await service(model_dir, backend)
    request = CompletionRequest(model="m", prompt=["one", "two"], n=3, max_tokens=2)
    usage = (await svc.completion(request, ctx())).usage
    assert usage.prompt_tokens == 2 * 11  # per prompt, not per sample
    assert usage.completion_tokens == 6 * 2 and usage.total_tokens == 22 + 12


async def test_a_client_that_leaves_is_charged_for_what_was_generated(model_dir: Path) -> None:
    backend = ScriptedBackend(WORDS, input_tokens=7)
    svc = await service(model_dir, backend)
    meter = RecordingMeter()
    request = ChatCompletionRequest(
        model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
    )
    stream = svc.chat_stream(request, ctx(meter))
    assert text_of(await anext(stream)) == ""  # the role chunk
    assert text_of(await anext(stream)) == "alpha"
    await stream.aclose()  # the client hung up
    for _ in range(10):
        await asyncio.sleep(0)
    assert backend.closed == 1  # the generation was stopped
    assert len(meter.charged) == 1 and meter.charged[0] > 1


async def test_a_finished_answer_is_charged_once(model_dir: Path) -> None:
    backend = ScriptedBackend(WORDS, input_tokens=7)
    svc = await service(model_dir, backend)
    meter = RecordingMeter()
    request = CompletionRequest(model="m", prompt="one", max_tokens=4)
    await svc.completion(request, ctx(meter))
    assert meter.charged == [7 + 4]


async def test_a_cached_answer_streams_in_pieces_like_a_fresh_one(model_dir: Path) -> None:
    backend = ScriptedBackend([" alpha", " beta", " gamma"])
    svc = await service(model_dir, backend, cache=True)
    body: dict[str, Any] = {"model": "m", "prompt": "one", "max_tokens": 3, "temperature": 0}
    fresh_ctx, cached_ctx = ctx(), ctx()
    request = CompletionRequest(**body, stream=True)
    fresh = [text_of(c) for c in await collect(svc.completion_stream(request, fresh_ctx))]
    replayed = [text_of(c) for c in await collect(svc.completion_stream(request, cached_ctx))]
    assert (fresh_ctx.headers["x-cache"], cached_ctx.headers["x-cache"]) == ("miss", "hit")
    assert len(backend.requests) == 1
    assert replayed == fresh == [" alpha", " beta", " gamma", ""]


async def test_whole_and_streamed_logprobs_carry_the_same_tokens(model_dir: Path) -> None:
    backend = ScriptedBackend(WORDS, logprobs=True)
    svc = await service(model_dir, backend)
    body: dict[str, Any] = {"model": "m", "prompt": "one", "max_tokens": 3, "logprobs": 0}
    whole = (await svc.completion(CompletionRequest(**body), ctx())).choices[0].logprobs
    assert backend.requests[0].stream  # per-token deltas, even for a whole answer
    chunks = await collect(svc.completion_stream(CompletionRequest(**body, stream=True), ctx()))
    streamed = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs]
    assert whole is not None and whole.tokens == ["alpha", "beta", "gamma"]
    assert whole.text_offset == [0, 5, 9] and whole.token_logprobs == [-0.5, -1.5, -2.5]
    assert [t for lp in streamed for t in lp.tokens] == whole.tokens
    assert [o for lp in streamed for o in lp.text_offset] == whole.text_offset


async def test_a_prompt_far_over_the_context_is_refused_without_tokenising(
    model_dir: Path,
) -> None:
    svc = await service(model_dir, ScriptedBackend(WORDS))
    calls: list[str] = []
    tokenizer = svc.catalogue.get("m").tokenizer
    count: Callable[..., int] = tokenizer.count
    tokenizer.count = lambda text, **kw: calls.append(text) or count(text, **kw)  # type: ignore[method-assign]
    request = CompletionRequest(model="m", prompt="alpha " * 800_000)
    with pytest.raises(ContextLengthExceeded):
        await svc.completion(request, ctx())
    assert calls == []


async def test_a_prompt_the_route_does_not_count_is_tokenised_once(model_dir: Path) -> None:
    svc = await service(model_dir, ScriptedBackend(WORDS))  # reports no input tokens
    calls: list[str] = []
    tokenizer = svc.catalogue.get("m").tokenizer
    count: Callable[..., int] = tokenizer.count
    tokenizer.count = lambda text, **kw: calls.append(text) or count(text, **kw)  # type: ignore[method-assign]
    response = await svc.completion(CompletionRequest(model="m", prompt="one two"), ctx())
    assert response.usage.prompt_tokens == count("one two", add_special_tokens=True)
    assert calls == ["one two"]
