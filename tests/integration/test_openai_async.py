"""The async OpenAI SDK: streaming, and many streams at once."""

from __future__ import annotations

import asyncio

import openai

from tests.gateway_fixtures import GatewayProcess

MESSAGES = [{"role": "user", "content": "Write a sentence about lists."}]


def _async_client(gateway: GatewayProcess) -> openai.AsyncOpenAI:
    # Made inside each test so that its connections live and die on that test's event loop.
    return openai.AsyncOpenAI(base_url=gateway.base_url, api_key=gateway.token, max_retries=0)


async def _stream_text(
    client: openai.AsyncOpenAI, model_id: str, **kw: object
) -> tuple[str, str | None]:
    stream = await client.chat.completions.create(  # type: ignore[call-overload]
        model=model_id, messages=MESSAGES, stream=True, **kw
    )
    text, finish = [], None
    async for chunk in stream:
        choice = chunk.choices[0]
        text.append(choice.delta.content or "")
        finish = choice.finish_reason or finish
    return "".join(text), finish


async def test_async_stream_equals_async_non_streamed_text(
    gateway: GatewayProcess, model_id: str
) -> None:
    async with _async_client(gateway) as client:
        reply = await client.chat.completions.create(  # type: ignore[call-overload]
            model=model_id, messages=MESSAGES, max_tokens=16, temperature=0
        )
        text, finish = await _stream_text(client, model_id, max_tokens=16, temperature=0)
    assert text == reply.choices[0].message.content and finish == reply.choices[0].finish_reason


async def test_sixteen_concurrent_streams_all_complete(
    gateway: GatewayProcess, model_id: str
) -> None:
    async with _async_client(gateway) as client:
        streams = [
            _stream_text(client, model_id, max_tokens=8, temperature=1.0, seed=i) for i in range(16)
        ]
        results = await asyncio.gather(*streams)
    assert len(results) == 16
    assert all(finish in ("stop", "length") for _, finish in results)
    assert sum(1 for text, _ in results if text) >= 15
