"""Hostile input against the real gateway and Triton: each request answers at once with an
OpenAI error naming what is wrong (or is served, where OpenAI serves it), memory stays in
proportion to the request, and the stack keeps serving everyone else afterwards.

The fuzz test is seeded and bounded (a fixed number of cases, each with a client timeout);
the gateway it runs against caps completions at a few tokens so that a mutation that happens
to be valid costs milliseconds, not a whole context of generation."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway_fixtures import GatewayProcess, start_gateway, stop_gateway

FUZZ_CASES = 400
CLIENT_TIMEOUT_S = 20.0
RSS_GROWTH_LIMIT_MB = 150

CHAT = "/chat/completions"
COMPLETIONS = "/completions"


@pytest.fixture(scope="module")
def capped_gateway(triton: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A gateway whose completions stop after 4 tokens (`requests.max_tokens`), with a 4 MiB
    body limit on every route (unset, the chat route has room for images on top)."""
    process = start_gateway(
        tmp_path_factory.mktemp("hostile"),
        triton_urls=[triton.grpc_url],
        config={
            "requests": {"max_tokens": 4, "max_body_bytes": 4 * 2**20},
            "cache": {"enabled": False},
        },
    )
    yield process
    stop_gateway(process)


def _rss_mb(gateway: GatewayProcess) -> float:
    status = Path(f"/proc/{gateway.process.pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def _post(gateway: GatewayProcess, path: str, body: Any, **kw: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {**gateway.headers, "content-type": "application/json"}
    return httpx.post(
        gateway.base_url + path, content=content, headers=headers, timeout=CLIENT_TIMEOUT_S, **kw
    )


def _assert_openai_error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert list(body) == ["error"] and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def _chat(messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"model": "tiny-moe", "messages": messages, "max_tokens": 4, **fields}


CALL = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}

SERVED = {
    "tool result in history": _chat(
        [
            {"role": "user", "content": "look it up"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ]
    ),
    "developer message": _chat(
        [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    ),
    "function message": _chat([{"role": "function", "name": "f", "content": "x"}]),
    "only an assistant message": _chat([{"role": "assistant", "content": "Hello"}]),
}

REFUSED = {
    "assistant without content": (
        CHAT,
        _chat([{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]),
        "messages[1].content",
    ),
    "garbage tool_calls": (
        CHAT,
        _chat([{"role": "assistant", "content": "a", "tool_calls": [{"x": 1}]}]),
        "messages[0].tool_calls[0].id",
    ),
    "tool message without tool_call_id": (
        CHAT,
        _chat([{"role": "tool", "content": "x"}]),
        "messages[0].tool_call_id",
    ),
    "empty prompt": (COMPLETIONS, {"model": "tiny-moe", "prompt": ""}, "prompt"),
    "an empty prompt among others": (
        COMPLETIONS,
        {"model": "tiny-moe", "prompt": ["a", ""]},
        "prompt[1]",
    ),
    "100,000 empty prompts": (
        COMPLETIONS,
        {"model": "tiny-moe", "prompt": [""] * 100_000, "max_tokens": 1},
        "prompt",
    ),
    "64 prompts with n=16": (
        COMPLETIONS,
        {"model": "tiny-moe", "prompt": ["a"] * 64, "n": 16, "max_tokens": 1},
        "n",
    ),
    "10,000 tools": (
        CHAT,
        _chat(
            [{"role": "user", "content": "q"}],
            tools=[{"type": "function", "function": {"name": "f"}}] * 10_000,
        ),
        "tools",
    ),
    "unknown role with a large content": (
        CHAT,
        _chat([{"role": "admin", "content": "x" * 2_000_000}]),
        "messages[0].role",
    ),
    "a prompt of megabytes": (
        CHAT,
        _chat([{"role": "user", "content": "word " * 700_000}]),
        "messages",
    ),
}


@pytest.mark.parametrize("name", list(SERVED))
def test_valid_history_openai_accepts_is_served_at_once(
    capped_gateway: GatewayProcess, name: str
) -> None:
    response = _post(capped_gateway, CHAT, SERVED[name])
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("name", list(REFUSED))
def test_caller_mistakes_are_400_naming_the_field_and_cheap(
    capped_gateway: GatewayProcess, name: str
) -> None:
    path, body, param = REFUSED[name]
    before = _rss_mb(capped_gateway)
    response = _post(capped_gateway, path, body)
    assert response.status_code == 400, response.text
    assert _assert_openai_error(response)["param"] == param
    assert response.elapsed.total_seconds() < 5
    assert _rss_mb(capped_gateway) - before < 60


def test_a_chunked_body_over_the_limit_is_413_while_it_streams(
    capped_gateway: GatewayProcess,
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(60):
            yield b"x" * 100_000

    before = _rss_mb(capped_gateway)
    response = httpx.post(
        capped_gateway.base_url + CHAT,
        content=chunks(),
        headers={**capped_gateway.headers, "content-type": "application/json"},
        timeout=CLIENT_TIMEOUT_S,
    )
    assert response.status_code == 413
    assert _assert_openai_error(response)["code"] == "request_too_large"
    assert _rss_mb(capped_gateway) - before < 60


# --- the fuzzer ---------------------------------------------------------------------------------

_BASES: list[tuple[str, dict[str, Any]]] = [
    (CHAT, _chat([{"role": "user", "content": "hi"}], temperature=0)),
    (CHAT, _chat([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], n=2)),
    (CHAT, {**_chat([{"role": "user", "content": "hi"}]), "stream": True}),
    (COMPLETIONS, {"model": "tiny-moe", "prompt": ["a b", "c"], "max_tokens": 3, "logprobs": 0}),
    (COMPLETIONS, {"model": "tiny-moe", "prompt": "x", "max_tokens": 2, "echo": True}),
]
_ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 2**63, -(2**64), 1e308, -1e-300, "", "x" * 5000, "\u0000\ud7ff",
    "\U0001f600" * 100, [], [None], [[[[[]]]]], {}, {"a": {"b": {"c": []}}}, [""] * 500,
    ["a"] * 200, list(range(300)), [{"role": "user"}], [{"type": "image_url"}], "NaN",
]  # fmt: skip
_ROLES = ["system", "developer", "user", "assistant", "tool", "function", "admin", "", 7, None]
_FIELDS = [
    "model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "n", "stream", "stream_options", "stop", "seed", "presence_penalty", "logprobs",
    "top_logprobs", "logit_bias", "response_format", "tools", "tool_choice", "user", "top_k",
    "min_tokens", "ignore_eos", "repetition_penalty", "echo", "suffix", "best_of", "cache",
]  # fmt: skip


def _mutate(rng: random.Random, body: dict[str, Any]) -> dict[str, Any] | bytes:
    body = copy.deepcopy(body)
    for _ in range(rng.randint(1, 3)):
        kind = rng.random()
        if kind < 0.35:
            body[rng.choice(_FIELDS)] = rng.choice(_ODD_VALUES)
        elif kind < 0.5 and "messages" in body and isinstance(body["messages"], list):
            message = {"role": rng.choice(_ROLES), "content": rng.choice(_ODD_VALUES)}
            if rng.random() < 0.5:
                message[rng.choice(["tool_calls", "tool_call_id", "name"])] = rng.choice(
                    _ODD_VALUES
                )
            body["messages"].insert(rng.randint(0, len(body["messages"])), message)
        elif kind < 0.6:
            body.pop(rng.choice(list(body) or ["model"]), None)
        elif kind < 0.7:
            body["stream_options"] = {"include_usage": rng.choice(_ODD_VALUES)}
        elif kind < 0.8:
            raw = json.dumps(body).encode()
            return raw[: rng.randint(0, len(raw))]  # broken JSON
        elif kind < 0.9:
            return rng.choice([b"[]", b"null", b"42", b'"x"', b"\xff\xfe", b"{" * 5000])
        else:
            body["n"] = rng.randint(1, 40)
    # Valid mutations must stay cheap: the gateway caps completions at 4 tokens anyway.
    if isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 4:
        body["max_tokens"] = 4
    return body


def test_fuzzed_requests_never_get_a_5xx_and_the_stack_keeps_serving(
    capped_gateway: GatewayProcess,
) -> None:
    rng = random.Random(20261201)
    before = _rss_mb(capped_gateway)
    statuses: dict[int, int] = {}
    with httpx.Client(timeout=CLIENT_TIMEOUT_S, headers=capped_gateway.headers) as client:
        for i in range(FUZZ_CASES):
            path, base = _BASES[i % len(_BASES)]
            mutated = _mutate(rng, base)
            content = mutated if isinstance(mutated, bytes) else json.dumps(mutated).encode()
            response = client.post(
                capped_gateway.base_url + path,
                content=content,
                headers={"content-type": "application/json"},
            )
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (mutated, response.text)
            if response.status_code >= 400:
                _assert_openai_error(response)
        after = _rss_mb(capped_gateway)
        ok = client.post(
            capped_gateway.base_url + CHAT, json=_chat([{"role": "user", "content": "hi"}])
        )
    assert ok.status_code == 200, ok.text
    assert statuses.get(400, 0) > FUZZ_CASES // 4 and statuses.get(200, 0) > 0, statuses
    assert after - before < RSS_GROWTH_LIMIT_MB, (before, after)
