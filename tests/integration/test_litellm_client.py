"""LiteLLM as a client (`openai/<model>` provider) works unchanged against the gateway."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import

import litellm
import openai

from tests.gateway_fixtures import GatewayProcess

MESSAGES = [{"role": "user", "content": "What is a tuple?"}]


def _litellm(gateway: GatewayProcess, model_id: str, **kw: object) -> object:
    return litellm.completion(
        model=f"openai/{model_id}",
        api_base=gateway.base_url,
        api_key=gateway.token,
        messages=MESSAGES,
        max_tokens=12,
        temperature=0,
        num_retries=0,
        **kw,
    )


def test_litellm_completion_matches_the_openai_sdk(
    gateway: GatewayProcess, client: openai.OpenAI, model_id: str
) -> None:
    reply = _litellm(gateway, model_id)
    expected = client.chat.completions.create(
        model=model_id,
        messages=MESSAGES,
        max_tokens=12,
        temperature=0,  # type: ignore[arg-type]
    )
    assert reply.choices[0].message.content == expected.choices[0].message.content  # type: ignore[attr-defined]
    assert reply.usage.total_tokens == expected.usage.total_tokens  # type: ignore[attr-defined,union-attr]


def test_litellm_streaming_gives_the_same_text(gateway: GatewayProcess, model_id: str) -> None:
    whole = _litellm(gateway, model_id).choices[0].message.content  # type: ignore[attr-defined]
    chunks = list(_litellm(gateway, model_id, stream=True))  # type: ignore[call-overload]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
