"""JWT auth on the real gateway: every bad token is a 401 in OpenAI's shape with
`WWW-Authenticate`, and a model outside the token's `models` does not exist for its holder."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import openai
import pytest

from gateway.policy.tokens import mint_token
from tests.gateway_fixtures import (
    TEST_AUDIENCE,
    TEST_ISSUER,
    TEST_SECRET,
    GatewayProcess,
    auth,
    mint_test_token,
)

MESSAGES = [{"role": "user", "content": "hi"}]


def _chat(gateway: GatewayProcess, model_id: str, headers: dict[str, str]) -> httpx.Response:
    body = {"model": model_id, "messages": MESSAGES, "max_tokens": 1}
    return httpx.post(
        f"{gateway.base_url}/chat/completions", json=body, headers=headers, timeout=30
    )


def _unauthorized(response: httpx.Response) -> dict[str, Any]:
    """The error of a 401 in OpenAI's shape; checks status, shape and `WWW-Authenticate`."""
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith('Bearer realm="localmoe"')
    body = response.json()
    assert list(body) == ["error"] and set(body["error"]) == {"message", "type", "param", "code"}
    assert (body["error"]["type"], body["error"]["code"]) == (
        "invalid_request_error",
        "invalid_api_key",
    )
    return body["error"]


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "mallory", "iss": TEST_ISSUER, "aud": TEST_AUDIENCE, "exp": now + 600, **extra}


def test_missing_token_is_401_with_a_bearer_challenge(
    gateway: GatewayProcess, model_id: str
) -> None:
    response = _chat(gateway, model_id, {})
    _unauthorized(response)
    assert response.headers["www-authenticate"] == 'Bearer realm="localmoe"'


def test_garbage_token_is_401_invalid_token(gateway: GatewayProcess, model_id: str) -> None:
    response = _chat(gateway, model_id, auth("not-a-jwt"))
    _unauthorized(response)
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_alg_none_token_is_401(gateway: GatewayProcess, model_id: str) -> None:
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims())}."
    error = _unauthorized(_chat(gateway, model_id, auth(unsigned)))
    assert "algorithm" in error["message"]


def test_tampered_signature_is_401(gateway: GatewayProcess, model_id: str) -> None:
    head, payload, signature = mint_test_token("mallory").split(".")
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    tampered = f"{head}.{payload}.{signature[:middle]}{flipped}{signature[middle + 1 :]}"
    error = _unauthorized(_chat(gateway, model_id, auth(tampered)))
    assert "signature" in error["message"]


def test_tampered_claims_are_401(gateway: GatewayProcess, model_id: str) -> None:
    head, _, signature = mint_test_token("mallory", rpm=1).split(".")
    tampered = f"{head}.{_b64(_claims(rpm=1_000_000))}.{signature}"
    _unauthorized(_chat(gateway, model_id, auth(tampered)))


def test_token_signed_with_another_secret_is_401(gateway: GatewayProcess, model_id: str) -> None:
    forged = mint_token(
        "another-secret-of-a-decent-length-0123456789",
        sub="mallory",
        issuer=TEST_ISSUER,
        audience=TEST_AUDIENCE,
    )
    _unauthorized(_chat(gateway, model_id, auth(forged)))


def test_expired_token_is_401(gateway: GatewayProcess, model_id: str) -> None:
    expired = mint_test_token("alice", ttl_seconds=-3600)
    error = _unauthorized(_chat(gateway, model_id, auth(expired)))
    assert "expired" in error["message"]


def test_wrong_audience_is_401(gateway: GatewayProcess, model_id: str) -> None:
    token = mint_token(TEST_SECRET, sub="alice", issuer=TEST_ISSUER, audience="another-service")
    error = _unauthorized(_chat(gateway, model_id, auth(token)))
    assert "audience" in error["message"]


def test_openai_sdk_raises_authentication_error(gateway: GatewayProcess, model_id: str) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key="sk-wrong", max_retries=0)
    with client, pytest.raises(openai.AuthenticationError) as exc:
        client.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=1)  # type: ignore[arg-type]
    assert exc.value.status_code == 401 and exc.value.code == "invalid_api_key"


def test_model_list_needs_a_token(gateway: GatewayProcess) -> None:
    _unauthorized(httpx.get(f"{gateway.base_url}/models", timeout=10))


def test_health_needs_no_token(gateway: GatewayProcess) -> None:
    assert httpx.get(f"{gateway.url}/health/live", timeout=10).status_code == 200
    assert httpx.get(f"{gateway.url}/health/ready", timeout=10).status_code == 200


def test_model_outside_the_token_models_is_404_like_an_unknown_model(
    gateway: GatewayProcess, model_id: str
) -> None:
    token = mint_test_token("carol", models=["some-other-model", "other-*"])
    forbidden = _chat(gateway, model_id, auth(token))
    unknown = _chat(gateway, "no-such-model", gateway.headers)
    assert forbidden.status_code == unknown.status_code == 404
    assert forbidden.json()["error"]["code"] == "model_not_found"
    assert forbidden.json() == json.loads(unknown.text.replace("no-such-model", model_id))


def test_model_outside_the_token_models_is_hidden_from_the_model_list(
    gateway: GatewayProcess, model_id: str
) -> None:
    headers = auth(mint_test_token("carol", models=["other-*"]))
    listed = httpx.get(f"{gateway.base_url}/models", headers=headers, timeout=10)
    one = httpx.get(f"{gateway.base_url}/models/{model_id}", headers=headers, timeout=10)
    assert listed.status_code == 200 and listed.json()["data"] == []
    assert one.status_code == 404 and one.json()["error"]["code"] == "model_not_found"


def test_model_pattern_in_the_token_allows_the_model(
    gateway: GatewayProcess, model_id: str
) -> None:
    token = mint_test_token("dave", models=[f"{model_id[:2]}*"])
    with openai.OpenAI(base_url=gateway.base_url, api_key=token, max_retries=0) as client:
        listed = [m.id for m in client.models.list()]
        reply = client.chat.completions.create(model=model_id, messages=MESSAGES, max_tokens=1)  # type: ignore[arg-type]
    assert listed == [model_id] and reply.choices[0].finish_reason in ("stop", "length")
