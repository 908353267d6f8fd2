"""Legacy text completions through the official OpenAI SDK.

Every test runs on both Triton protocols the gateway speaks: the BLS route (`trtllm`) and
NVIDIA's LLM-API model (`llmapi`), one real Triton serving both."""

from __future__ import annotations

import openai
import pytest

PROMPTS = ["The json module", "A Python list is"]


@pytest.fixture
def client(protocol_client: openai.OpenAI) -> openai.OpenAI:
    return protocol_client


def _no_llmapi(protocol: str, what: str) -> None:
    if protocol == "llmapi":
        pytest.skip(f"NVIDIA's llmapi model has no tensor for {what} (the gateway answers 400)")


def _complete(client: openai.OpenAI, model_id: str, **kw: object) -> openai.types.Completion:
    kw.setdefault("prompt", PROMPTS[0])
    kw.setdefault("max_tokens", 10)
    kw.setdefault("temperature", 0)
    return client.completions.create(model=model_id, **kw)  # type: ignore[call-overload]


def test_completion_has_the_openai_shape(client: openai.OpenAI, model_id: str) -> None:
    reply = _complete(client, model_id)
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
    assert reply.model == model_id and reply.choices[0].index == 0
    assert reply.choices[0].text and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.prompt_tokens > 0


def test_list_of_prompts_gives_one_choice_per_prompt_in_order(
    client: openai.OpenAI, model_id: str
) -> None:
    reply = _complete(client, model_id, prompt=PROMPTS)
    singles = [_complete(client, model_id, prompt=p).choices[0].text for p in PROMPTS]
    assert [c.index for c in reply.choices] == [0, 1]
    assert [c.text for c in reply.choices] == singles


def test_list_of_prompts_with_n_orders_choices_prompt_major(
    client: openai.OpenAI, model_id: str
) -> None:
    reply = _complete(client, model_id, prompt=PROMPTS, n=2)
    texts = [c.text for c in reply.choices]
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert texts[0] == texts[1] and texts[2] == texts[3]  # temperature 0: samples agree


def test_streamed_completion_equals_non_streamed(client: openai.OpenAI, model_id: str) -> None:
    whole = _complete(client, model_id, max_tokens=20).choices[0].text
    chunks = list(_complete(client, model_id, max_tokens=20, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert [c.choices[0].finish_reason is not None for c in chunks].count(True) == 1


def test_echo_prefixes_the_prompt(client: openai.OpenAI, model_id: str) -> None:
    plain = _complete(client, model_id).choices[0].text
    assert _complete(client, model_id, echo=True).choices[0].text == PROMPTS[0] + plain


def test_logprobs_zero_gives_one_logprob_per_token(
    client: openai.OpenAI, model_id: str, protocol: str
) -> None:
    _no_llmapi(protocol, "logprobs")
    reply = _complete(client, model_id, logprobs=0)
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and reply.usage is not None
    assert len(logprobs.token_logprobs or []) == reply.usage.completion_tokens
    assert "".join(logprobs.tokens or []) == reply.choices[0].text


def test_whole_and_streamed_logprobs_carry_the_same_tokens_and_offsets(
    client: openai.OpenAI, model_id: str, protocol: str
) -> None:
    _no_llmapi(protocol, "logprobs")
    extra = {"extra_body": {"ignore_eos": True}}
    whole = _complete(client, model_id, logprobs=0, **extra).choices[0].logprobs
    chunks = list(_complete(client, model_id, logprobs=0, stream=True, **extra))
    streamed = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert whole is not None and whole.tokens and len(whole.tokens) > 1
    assert sum(1 for t in whole.tokens if t) > 1  # the text is spread over the tokens
    assert [t for lp in streamed for t in lp.tokens or []] == whole.tokens
    assert [o for lp in streamed for o in lp.text_offset or []] == whole.text_offset
    assert whole.text_offset == sorted(whole.text_offset)


def test_an_empty_prompt_is_400_naming_it(client: openai.OpenAI, model_id: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=model_id, prompt=["fine", ""], max_tokens=2)
    assert caught.value.body["param"] == "prompt[1]"  # type: ignore[index]
