"""Chat completions through the official OpenAI SDK against the real gateway and Triton.

Every test runs on both Triton protocols the gateway speaks: the BLS route (`trtllm`) and
NVIDIA's LLM-API model (`llmapi`), one real Triton serving both."""

from __future__ import annotations

import openai
import pytest

MESSAGES = [{"role": "user", "content": "What does the json module do?"}]


@pytest.fixture
def client(protocol_client: openai.OpenAI) -> openai.OpenAI:
    return protocol_client


def _no_llmapi(protocol: str, what: str) -> None:
    if protocol == "llmapi":
        pytest.skip(f"NVIDIA's llmapi model has no tensor for {what} (the gateway answers 400)")


def _chat(client: openai.OpenAI, model_id: str, **kw: object) -> openai.types.chat.ChatCompletion:
    kw.setdefault("messages", MESSAGES)
    kw.setdefault("max_tokens", 12)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=model_id, **kw)  # type: ignore[call-overload]


def _stream(client: openai.OpenAI, model_id: str, **kw: object) -> list:
    return list(_chat(client, model_id, stream=True, **kw))  # type: ignore[call-overload]


def _streamed_text(chunks: list, index: int = 0) -> str:
    return "".join(
        c.choices[0].delta.content or ""
        for c in chunks
        if c.choices and c.choices[0].index == index
    )


def test_chat_completion_has_the_openai_shape(client: openai.OpenAI, model_id: str) -> None:
    reply = _chat(client, model_id)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == model_id and reply.created > 0
    (choice,) = reply.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in ("stop", "length")


def test_stream_is_role_chunk_then_content_then_one_finish_chunk(
    client: openai.OpenAI, model_id: str
) -> None:
    chunks = _stream(client, model_id)
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c for c in chunks if c.choices[0].finish_reason is not None]
    assert finishes == [chunks[-1]] and chunks[-1].choices[0].delta.content is None
    assert all(c.usage is None for c in chunks)


def test_streamed_text_equals_non_streamed_text(client: openai.OpenAI, model_id: str) -> None:
    whole = _chat(client, model_id, max_tokens=24).choices[0].message.content
    assert _streamed_text(_stream(client, model_id, max_tokens=24)) == whole


def test_include_usage_ends_the_stream_with_the_usage_of_the_whole_answer(
    client: openai.OpenAI, model_id: str
) -> None:
    chunks = _stream(client, model_id, stream_options={"include_usage": True})
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage == _chat(client, model_id).usage
    assert all(c.usage is None for c in chunks[:-1])


def test_usage_adds_up_and_counts_the_prompt(client: openai.OpenAI, model_id: str) -> None:
    short = _chat(client, model_id).usage
    longer = _chat(
        client, model_id, messages=[{"role": "user", "content": "Tell me more, please. " * 5}]
    ).usage
    assert short is not None and longer is not None
    assert short.total_tokens == short.prompt_tokens + short.completion_tokens
    assert 0 < short.completion_tokens <= 12
    assert longer.prompt_tokens > short.prompt_tokens > 0


def test_n_returns_n_choices(client: openai.OpenAI, model_id: str) -> None:
    reply = _chat(client, model_id, n=3, temperature=1.0, seed=7, max_tokens=6)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.finish_reason in ("stop", "length") for c in reply.choices)
    assert reply.usage is not None and reply.usage.completion_tokens >= 3


def test_n_streams_exactly_one_finish_chunk_per_choice(
    client: openai.OpenAI, model_id: str
) -> None:
    chunks = _stream(client, model_id, n=2, temperature=1.0, seed=3, max_tokens=6)
    finished = sorted(c.choices[0].index for c in chunks if c.choices[0].finish_reason)
    roles = sorted(c.choices[0].index for c in chunks if c.choices[0].delta.role)
    assert finished == [0, 1] and roles == [0, 1]


def test_stop_string_ends_the_text_before_it(client: openai.OpenAI, model_id: str) -> None:
    baseline = _chat(client, model_id, max_tokens=24).choices[0].message.content or ""
    assert len(baseline.strip()) >= 4, baseline
    cut = len(baseline) // 2
    stop = baseline[cut : cut + 2]
    reply = _chat(client, model_id, max_tokens=24, stop=[stop])
    assert reply.choices[0].message.content == baseline[: baseline.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_same_seed_gives_the_same_sample(client: openai.OpenAI, model_id: str) -> None:
    first = _chat(client, model_id, temperature=1.0, seed=1234, max_tokens=16)
    second = _chat(client, model_id, temperature=1.0, seed=1234, max_tokens=16)
    assert first.choices[0].message.content == second.choices[0].message.content


def test_different_seeds_give_different_samples(client: openai.OpenAI, model_id: str) -> None:
    texts = {
        _chat(client, model_id, temperature=1.0, seed=seed, max_tokens=16)
        .choices[0]
        .message.content
        for seed in range(4)
    }
    assert len(texts) > 1


def test_max_tokens_ends_with_length(client: openai.OpenAI, model_id: str, protocol: str) -> None:
    _no_llmapi(protocol, "ignore_eos")
    reply = _chat(client, model_id, max_tokens=3, extra_body={"ignore_eos": True})
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 3


def test_max_completion_tokens_is_honoured(
    client: openai.OpenAI, model_id: str, protocol: str
) -> None:
    _no_llmapi(protocol, "ignore_eos")
    reply = _chat(
        client, model_id, max_tokens=None, max_completion_tokens=2, extra_body={"ignore_eos": True}
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 2


def test_logprobs_cover_every_generated_token(
    client: openai.OpenAI, model_id: str, protocol: str
) -> None:
    _no_llmapi(protocol, "logprobs")
    reply = _chat(client, model_id, logprobs=True, max_tokens=8)
    content = reply.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and reply.usage is not None
    assert len(content) == reply.usage.completion_tokens
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    assert all(t.logprob <= 0 for t in content)


def test_unknown_fields_are_accepted_and_ignored(client: openai.OpenAI, model_id: str) -> None:
    reply = _chat(client, model_id, extra_body={"guided_regex": "x+", "vendor": {"a": 1}})
    assert reply.choices[0].message.content == _chat(client, model_id).choices[0].message.content


def test_content_part_arrays_equal_plain_string_content(
    client: openai.OpenAI, model_id: str
) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": MESSAGES[0]["content"]}]}]
    reply = _chat(client, model_id, messages=parts)
    assert reply.choices[0].message.content == _chat(client, model_id).choices[0].message.content


def test_models_are_listed_and_retrievable(client: openai.OpenAI, model_id: str) -> None:
    listed = [m.id for m in client.models.list()]
    assert listed == [model_id]
    assert client.models.retrieve(model_id).id == model_id


def test_unknown_model_raises_not_found_with_openai_code(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert exc.value.code == "model_not_found" and exc.value.param == "model"
