"""Every failure has OpenAI's error shape and the right status, never FastAPI's default body."""

from __future__ import annotations

from typing import Any

import httpx

from tests.gateway_fixtures import MAX_BODY_BYTES, GatewayProcess

MESSAGES = [{"role": "user", "content": "hi"}]


def _post(gateway: GatewayProcess, path: str, **kw: Any) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}{path}", headers=gateway.headers, timeout=30, **kw)


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert list(body) == ["error"], body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_malformed_json_is_400_invalid_json(gateway: GatewayProcess) -> None:
    response = _post(gateway, "/chat/completions", content=b'{"model": "x", "messages": [')
    error = _error(response)
    assert response.status_code == 400
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_json")


def test_wrong_type_is_400_naming_the_parameter(gateway: GatewayProcess, model_id: str) -> None:
    body = {"model": model_id, "messages": MESSAGES, "temperature": "hot"}
    response = _post(gateway, "/chat/completions", json=body)
    error = _error(response)
    assert response.status_code == 400
    assert (error["param"], error["code"]) == ("temperature", "invalid_type")


def test_wrong_nested_type_names_the_nested_parameter(
    gateway: GatewayProcess, model_id: str
) -> None:
    body = {"model": model_id, "messages": [{"role": "user", "content": 42}]}
    response = _post(gateway, "/chat/completions", json=body)
    assert response.status_code == 400 and _error(response)["param"] == "messages[0].content"


def test_missing_required_field_is_400(gateway: GatewayProcess, model_id: str) -> None:
    response = _post(gateway, "/completions", json={"model": model_id})
    error = _error(response)
    assert response.status_code == 400
    assert (error["param"], error["code"]) == ("prompt", "missing_required_parameter")


def test_out_of_range_value_is_400(gateway: GatewayProcess, model_id: str) -> None:
    body = {"model": model_id, "messages": MESSAGES, "max_tokens": 0}
    response = _post(gateway, "/chat/completions", json=body)
    assert response.status_code == 400 and _error(response)["param"] == "max_tokens"


def test_unknown_model_is_404_model_not_found(gateway: GatewayProcess) -> None:
    response = _post(gateway, "/chat/completions", json={"model": "nope", "messages": MESSAGES})
    error = _error(response)
    assert response.status_code == 404
    assert (error["code"], error["param"]) == ("model_not_found", "model")


def test_unknown_model_id_in_models_route_is_404(gateway: GatewayProcess) -> None:
    response = httpx.get(f"{gateway.base_url}/models/nope", headers=gateway.headers, timeout=10)
    assert response.status_code == 404 and _error(response)["code"] == "model_not_found"


def test_oversized_body_is_413(gateway: GatewayProcess, model_id: str) -> None:
    body = {"model": model_id, "messages": [{"role": "user", "content": "x" * MAX_BODY_BYTES}]}
    response = _post(gateway, "/chat/completions", json=body)
    assert response.status_code == 413 and _error(response)["code"] == "request_too_large"


def test_prompt_longer_than_the_context_is_context_length_exceeded(
    gateway: GatewayProcess, model_id: str
) -> None:
    context = httpx.get(
        f"{gateway.base_url}/models/{model_id}", headers=gateway.headers, timeout=10
    ).json()
    words = " ".join(f"w{i}" for i in range(context["max_model_len"] + 10))
    body = {"model": model_id, "messages": [{"role": "user", "content": words}]}
    response = _post(gateway, "/chat/completions", json=body)
    error = _error(response)
    assert response.status_code == 400
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")


def test_max_tokens_beyond_the_context_is_context_length_exceeded(
    gateway: GatewayProcess, model_id: str
) -> None:
    body = {"model": model_id, "prompt": "hello", "max_tokens": 10_000_000}
    response = _post(gateway, "/completions", json=body)
    assert response.status_code == 400
    assert _error(response)["code"] == "context_length_exceeded"


def test_unsupported_parameter_value_is_400_not_ignored(
    gateway: GatewayProcess, model_id: str
) -> None:
    body = {"model": model_id, "messages": MESSAGES, "logit_bias": {"50256": -100}}
    response = _post(gateway, "/chat/completions", json=body)
    assert response.status_code == 400 and _error(response)["param"] == "logit_bias"


def test_unknown_route_is_404_in_openai_shape(gateway: GatewayProcess) -> None:
    response = httpx.get(f"{gateway.base_url}/nothing-here", headers=gateway.headers, timeout=10)
    assert response.status_code == 404 and _error(response)["code"] == "not_found"


def test_wrong_method_is_405_in_openai_shape(gateway: GatewayProcess) -> None:
    response = httpx.get(
        f"{gateway.base_url}/chat/completions", headers=gateway.headers, timeout=10
    )
    assert response.status_code == 405 and _error(response)["code"] == "method_not_allowed"


def test_no_ready_upstream_is_503_with_retry_after(offline_gateway: GatewayProcess) -> None:
    body = {"model": "tiny-moe", "messages": MESSAGES}
    response = _post(offline_gateway, "/chat/completions", json=body)
    assert response.status_code == 503 and _error(response)["code"] == "upstream_unavailable"
    assert int(response.headers["retry-after"]) >= 1


def test_no_ready_upstream_is_503_for_streams_too(offline_gateway: GatewayProcess) -> None:
    body = {"model": "tiny-moe", "messages": MESSAGES, "stream": True}
    response = _post(offline_gateway, "/chat/completions", json=body)
    assert response.status_code == 503 and _error(response)["code"] == "upstream_unavailable"


def test_validation_needs_no_upstream(offline_gateway: GatewayProcess) -> None:
    body = {"model": "tiny-moe", "messages": MESSAGES, "temperature": 9}
    response = _post(offline_gateway, "/chat/completions", json=body)
    assert response.status_code == 400 and _error(response)["param"] == "temperature"


def test_readiness_is_503_without_an_upstream(offline_gateway: GatewayProcess) -> None:
    response = httpx.get(f"{offline_gateway.url}/health/ready", timeout=10)
    body = response.json()
    assert response.status_code == 503 and body["error"]["code"] == "upstream_unavailable"
    assert "retry-after" in response.headers
    # Beside OpenAI's error, what each upstream looks like from here.
    assert [u["ready"] for u in body["upstreams"]] == [False]
    assert body["upstreams"][0]["circuit"] == "closed"


def test_a_trailing_slash_is_404_in_openai_shape_not_a_redirect(
    gateway: GatewayProcess, model_id: str
) -> None:
    body = {"model": model_id, "messages": MESSAGES, "max_tokens": 2}
    response = _post(gateway, "/chat/completions/", json=body)
    assert response.status_code == 404 and _error(response)["code"] == "not_found"
