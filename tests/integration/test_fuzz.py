"""Schema-driven fuzzing of the real gateway in front of the real Triton: schemathesis generates
requests from the gateway's own `/openapi.json` (generation routes included), valid ones and
ones that break the schema, and every answer must be < 500, arrive in time, and be either an
OpenAI error or a well-formed answer (JSON, or an event stream ending in `data: [DONE]`).

Generation stays cheap through the gateway's own limits, a legitimate configuration: completions
stop after `MAX_TOKENS` tokens and larger `max_tokens` are 400s before anything is generated; `n`
and prompts × n are capped the same way. Three quarters of the generated bodies name the served
model (`AIMS`), so valid ones reach Triton instead of all ending as `model_not_found`.

Seeded (`derandomize`) and bounded: a fixed number of cases per operation, each with a timeout.
Hand-written hostile bodies the schema cannot describe, and that tests/integration/
test_hostile_input.py does not send already, close the file.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from schemathesis import GenerationMode

from gateway.core.protocol import ChatCompletionChunk, ChatCompletionResponse, CompletionResponse
from tests.gateway_fixtures import GatewayProcess, start_gateway, stop_gateway

MAX_TOKENS = 8
MAX_BODY_BYTES = 1024 * 1024
REQUEST_TIMEOUT_S = 15.0
"""No answer (or no end of stream) within this is a hang."""

# Generated cases per (operation, mode); operations with few distinct inputs run out sooner.
EXAMPLES = {
    ("POST", "/v1/chat/completions"): {GenerationMode.POSITIVE: 300, GenerationMode.NEGATIVE: 200},
    ("POST", "/v1/completions"): {GenerationMode.POSITIVE: 300, GenerationMode.NEGATIVE: 200},
    ("GET", "/v1/models/{model_id}"): {GenerationMode.POSITIVE: 50, GenerationMode.NEGATIVE: 25},
}
OTHER_EXAMPLES = 10
"""Operations without parameters: positive cases only (there is nothing to break)."""
MIN_CASES = 1000
# What a generated body is sent as: as it is, or for the served model: as generated, with one
# plain user message (the roles' rules are across fields, beyond what a schema says), and that
# streamed.
AIMS = ["as generated", "served model", "one user message", "one user message, streamed"]

# What a 200 must parse into, whole and as stream chunks.
ANSWERS: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    "/v1/chat/completions": (ChatCompletionResponse, ChatCompletionChunk),
    "/v1/completions": (CompletionResponse, CompletionResponse),
}
STREAMING = frozenset(ANSWERS)


@pytest.fixture(scope="module")
def fuzz_gateway(triton: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway whose limits keep every valid request to a few tokens."""
    limits = {
        "max_tokens": MAX_TOKENS,
        "max_n": 4,
        "max_generations": 8,
        "max_body_bytes": MAX_BODY_BYTES,
    }
    process = start_gateway(
        tmp_path_factory.mktemp("fuzz"),
        triton_urls=[triton.grpc_url],
        config={"requests": limits, "cache": {"enabled": False}},
    )
    yield process
    stop_gateway(process)


@dataclass
class Findings:
    """What the fuzzer saw: counts, and every answer that broke a rule (with a reproducer)."""

    cases: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    slowest_s: float = 0.0
    streams: int = 0
    """200 event streams checked."""


def _problem(path: str, response: schemathesis.Response, stream: bool, took_s: float) -> str | None:
    """Why this answer breaks the rules, or None."""
    status = response.status_code
    if status >= 500:
        return f"status {status}"
    if response.stream_cut_short or took_s > REQUEST_TIMEOUT_S:
        return f"no complete answer within {REQUEST_TIMEOUT_S} s"
    if status >= 400:
        return _error_problem(response.content)
    if status != 200:
        return f"unexpected status {status}"
    whole, chunk = ANSWERS.get(path, (None, None))
    content_type = response.headers.get("content-type", [""])[0]
    if content_type.startswith("text/event-stream"):
        if not stream:
            return "an event stream for a request without stream: true"
        return _stream_problem(response.content, chunk)
    if stream:
        return "JSON for a request with stream: true"
    try:
        body = json.loads(response.content)
        if whole is not None:
            whole.model_validate(body)
    except (ValueError, ValidationError) as exc:
        return f"200 body is not a valid answer: {exc}"
    return None


def _error_problem(content: bytes) -> str | None:
    try:
        body = json.loads(content)
    except ValueError:
        return "error body is not JSON"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or list(body) != ["error"]:
        return "error body is not {'error': {...}}"
    if set(error) != {"message", "type", "param", "code"}:
        return f"error has fields {sorted(error)}"
    if not isinstance(error["message"], str) or not error["message"]:
        return "error message is empty"
    if not isinstance(error["type"], str):
        return "error type is not a string"
    return None


def _stream_problem(content: bytes, chunk: type[BaseModel] | None) -> str | None:
    events = content.decode(errors="replace").split("\n\n")
    if events[-2:] != ["data: [DONE]", ""]:
        return "event stream does not end with data: [DONE]"
    for event in events[:-2]:
        if not event.startswith("data: "):
            return f"not a data event: {event[:80]!r}"
        try:
            data = json.loads(event.removeprefix("data: "))
        except ValueError:
            return f"event data is not JSON: {event[:80]!r}"
        if "error" in data:  # a failure after the 200: a 5xx in disguise
            return f"error event in the stream: {data['error']}"
        if chunk is not None:
            try:
                chunk.model_validate(data)
            except ValidationError as exc:
                return f"stream chunk is not a valid chunk: {exc}"
    return None


def _text(messages: Any) -> str:
    """The first generated message's text content, if it has one."""
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        content = messages[0].get("content")
        if isinstance(content, str):
            return content
    return "hi"


def _reproducer(case: schemathesis.Case, headers: dict[str, str]) -> str:
    return f"reproduce: {case.as_curl_command(headers=headers)}"


def _fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    examples: int,
    *,
    model_id: str,
    session: requests.Session,
    headers: dict[str, str],
    findings: Findings,
) -> None:
    label = f"{operation.method.upper()} {operation.path} {mode.value}"

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # failures are collected, never shrunk
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=operation.as_strategy(generation_mode=mode), aim=st.sampled_from(AIMS))
    def run(case: schemathesis.Case, aim: str) -> None:
        if aim != "as generated" and isinstance(case.body, dict):
            case.body["model"] = model_id
            if aim.startswith("one user message") and "messages" in case.body:
                case.body["messages"] = [{"role": "user", "content": _text(case.body["messages"])}]
            if aim.endswith("streamed"):
                case.body["stream"] = True
        started = time.monotonic()
        findings.cases[label] += 1
        try:
            response = case.call(session=session, headers=headers, timeout=REQUEST_TIMEOUT_S)
        except requests.RequestException as exc:  # a timeout (hang), a reset, a dead gateway
            findings.failures.append(f"{label}: no answer: {exc!r}\n  {_reproducer(case, headers)}")
            return
        took_s = time.monotonic() - started
        findings.statuses[(operation.path, response.status_code)] += 1
        findings.slowest_s = max(findings.slowest_s, took_s)
        # Only the generation routes stream; `stream` in an embeddings body is an unknown field.
        stream = (
            operation.path in STREAMING
            and isinstance(case.body, dict)
            and case.body.get("stream") is True
        )
        problem = _problem(operation.path, response, stream, took_s)
        findings.streams += response.status_code == 200 and stream
        if problem is not None:
            findings.failures.append(
                f"{label}: {problem}\n  answer: {response.content[:300]!r}\n"
                f"  {_reproducer(case, headers)}"
            )

    run()


def test_schema_fuzzing_gets_no_5xx_no_hang_and_only_openai_errors(
    fuzz_gateway: GatewayProcess, model_id: str
) -> None:
    schema = schemathesis.openapi.from_url(
        f"{fuzz_gateway.url}/openapi.json",
        config=schemathesis.Config.from_dict({"max-stream-events": 1000}),
    )
    findings = Findings()
    started = time.monotonic()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            key = (operation.method.upper(), operation.path)
            budgets = EXAMPLES.get(key, {GenerationMode.POSITIVE: OTHER_EXAMPLES})
            for mode, examples in budgets.items():
                op_started = time.monotonic()
                _fuzz_operation(
                    operation,
                    mode,
                    examples,
                    model_id=model_id,
                    session=session,
                    headers=fuzz_gateway.headers,
                    findings=findings,
                )
                label = f"{key[0]} {key[1]} {mode.value}"
                took = time.monotonic() - op_started
                print(f"{label}: {findings.cases[label]} cases in {took:.1f} s", flush=True)
    elapsed = time.monotonic() - started
    total = sum(findings.cases.values())
    print(f"fuzzed {total} cases in {elapsed:.1f} s (slowest {findings.slowest_s:.2f} s)")
    print(f"statuses: {dict(findings.statuses)}; {findings.streams} event streams")
    assert not findings.failures, f"{len(findings.failures)} failures:\n" + "\n".join(
        findings.failures[:10]
    )
    assert total >= MIN_CASES, findings.cases
    # Valid requests reached Triton on both generation routes.
    assert findings.statuses[("/v1/chat/completions", 200)] > 0, findings.statuses
    assert findings.statuses[("/v1/completions", 200)] > 0, findings.statuses
    assert findings.streams > 0

    chat = {"model": model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    after = httpx.post(
        f"{fuzz_gateway.base_url}/chat/completions",
        json=chat,
        headers=fuzz_gateway.headers,
        timeout=REQUEST_TIMEOUT_S,
    )
    assert after.status_code == 200, after.text
    assert after.json()["choices"][0]["message"]["content"] is not None
    assert fuzz_gateway.process.poll() is None, fuzz_gateway.log()[-3000:]
    assert "Traceback" not in fuzz_gateway.log(), fuzz_gateway.log()[-3000:]


def test_openapi_document_and_docs_show_the_generation_routes(
    fuzz_gateway: GatewayProcess,
) -> None:
    document = httpx.get(f"{fuzz_gateway.url}/openapi.json", timeout=10).json()
    assert {"/v1/chat/completions", "/v1/completions"} <= set(document["paths"])
    docs = httpx.get(f"{fuzz_gateway.url}/docs", timeout=10)
    assert docs.status_code == 200 and "/openapi.json" in docs.text


# --- what the fuzzer found (each was a 400 nobody asked for, or a 502 for a client's value) ------


def _post(gateway: GatewayProcess, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}{path}", json=body, headers=gateway.headers, timeout=REQUEST_TIMEOUT_S
    )


def test_a_completion_without_max_tokens_is_capped_not_refused(
    fuzz_gateway: GatewayProcess, model_id: str
) -> None:
    # OpenAI's default max_tokens for completions (16) is over this server's cap (8).
    body = {"model": model_id, "prompt": "once upon a time", "ignore_eos": True}
    response = _post(fuzz_gateway, "/completions", body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == MAX_TOKENS


@pytest.mark.parametrize(("param", "value"), [("top_p", 1e-50), ("repetition_penalty", 5e-324)])
def test_a_value_that_is_zero_as_a_32_bit_float_is_a_400_naming_it(
    fuzz_gateway: GatewayProcess, model_id: str, param: str, value: float
) -> None:
    body = {"model": model_id, "messages": [{"role": "user", "content": "hi"}], param: value}
    response = _post(fuzz_gateway, "/chat/completions", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_min_tokens_over_the_budget_left_by_the_server_cap_is_a_400(
    fuzz_gateway: GatewayProcess, model_id: str
) -> None:
    body = {"model": model_id, "messages": [{"role": "user", "content": "hi"}], "min_tokens": 9}
    response = _post(fuzz_gateway, "/chat/completions", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "min_tokens"


# --- hostile bodies no schema describes (test_hostile_input.py sends the others) ---------------

_CHAT = b'{"model": "tiny-moe", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2'
JSON = "application/json"
HOSTILE: dict[str, tuple[bytes, str, int, str | None]] = {
    # name: (body, content type, status, error code or param)
    "JSON sent as text/plain is still JSON": (_CHAT + b"}", "text/plain", 200, None),
    "a form": (
        b"model=tiny-moe&prompt=hi",
        "application/x-www-form-urlencoded",
        400,
        "invalid_json",
    ),
    "multipart": (
        b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\ntiny-moe\r\n--b--\r\n',
        "multipart/form-data; boundary=b",
        400,
        "invalid_json",
    ),
    "invalid UTF-8 inside a string": (
        _CHAT + b', "user": "\xc3\x28\xff"}',
        JSON,
        400,
        "invalid_json",
    ),
    "a lone surrogate escape": (_CHAT + b', "user": "a\\ud800b"}', JSON, 400, "invalid_json"),
    "100,000 levels of nesting": (
        _CHAT + b', "extra": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        JSON,
        400,
        "invalid_json",
    ),
    "NaN": (_CHAT + b', "temperature": NaN}', JSON, 400, "temperature"),
    "Infinity": (_CHAT + b', "top_p": Infinity}', JSON, 400, "top_p"),
    "a 5,000-digit integer": (
        _CHAT + b', "seed": ' + b"9" * 5000 + b"}",
        JSON,
        400,
        "invalid_json",
    ),
    "10 MB with its Content-Length": (
        _CHAT + b', "user": "' + b"x" * (10 * 1024 * 1024) + b'"}',
        JSON,
        413,
        "request_too_large",
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_body_gets_its_openai_answer(fuzz_gateway: GatewayProcess, name: str) -> None:
    body, content_type, status, what = HOSTILE[name]
    response = httpx.post(
        f"{fuzz_gateway.base_url}/chat/completions",
        content=body,
        headers={**fuzz_gateway.headers, "content-type": content_type},
        timeout=REQUEST_TIMEOUT_S,
    )
    assert response.status_code == status, response.text
    if status >= 400:
        assert _error_problem(response.content) is None, response.text
        error = response.json()["error"]
        assert what in (error["code"], error["param"]), error
