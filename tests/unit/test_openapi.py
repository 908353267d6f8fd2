"""The OpenAPI document: the generation routes are in it, described by their pydantic models."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel

from gateway.api.app import create_app
from gateway.core.protocol import ChatCompletionRequest, CompletionRequest
from gateway.settings import AuthSettings, Settings

GENERATION = {"/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest}
ERROR_STATUSES = {"400", "401", "404", "413", "429", "503"}


@pytest.fixture(scope="module")
def app() -> FastAPI:
    return create_app(Settings(auth=AuthSettings(jwt_secret="s" * 40)))


@pytest.fixture(scope="module")
def document(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    name = schema["$ref"].removeprefix("#/components/schemas/")
    return document["components"]["schemas"][name]


def _required(model: type[BaseModel]) -> set[str]:
    return {name for name, field in model.model_fields.items() if field.is_required()}


@pytest.mark.parametrize("path", list(GENERATION))
def test_generation_route_body_is_its_request_model(document: dict[str, Any], path: str) -> None:
    model = GENERATION[path]
    body = document["paths"][path]["post"]["requestBody"]
    schema = _resolve(document, body["content"]["application/json"]["schema"])
    assert body["required"] is True
    assert set(schema["properties"]) == set(model.model_fields)
    assert set(schema["required"]) == _required(model)


@pytest.mark.parametrize("path", list(GENERATION))
def test_generation_route_answers_json_or_events_and_errors_in_openai_shape(
    document: dict[str, Any], path: str
) -> None:
    responses = document["paths"][path]["post"]["responses"]
    assert set(responses["200"]["content"]) == {"application/json", "text/event-stream"}
    assert set(responses) >= ERROR_STATUSES
    for status in ERROR_STATUSES:
        error = _resolve(document, responses[status]["content"]["application/json"]["schema"])
        info = _resolve(document, error["properties"]["error"])
        assert set(info["properties"]) == {"message", "type", "param", "code"}


def test_every_v1_operation_requires_a_bearer_token(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    operations = [
        op for p, ops in document["paths"].items() if p.startswith("/v1/") for op in ops.values()
    ]
    assert len(operations) == 5  # chat, completions, models, model, embeddings
    assert all(op["security"] == [{"bearer": []}] for op in operations)


def test_the_rest_of_the_api_is_still_in_the_document(document: dict[str, Any]) -> None:
    assert {"/v1/models", "/v1/models/{model_id}", "/health/live", "/health/ready"} <= set(
        document["paths"]
    )


def test_generation_routes_are_still_served_as_plain_starlette_routes(app: FastAPI) -> None:
    served = {
        route.path: route for route in app.router.routes if getattr(route, "path", "") in GENERATION
    }
    assert set(served) == set(GENERATION)
    assert not any(isinstance(route, APIRoute) for route in served.values())


def test_request_schemas_carry_this_servers_limits() -> None:
    settings = Settings(auth=AuthSettings(jwt_secret="s" * 40), requests={"max_tokens": 8})
    document = create_app(settings).openapi()
    chat = document["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    completion = document["components"]["schemas"]["CompletionRequest"]["properties"]
    assert chat["max_tokens"]["maximum"] == chat["max_completion_tokens"]["maximum"] == 8
    assert chat["n"]["maximum"] == settings.requests.max_n
    assert chat["messages"]["minItems"] == 1
    assert completion["prompt"]["maxItems"] == settings.requests.max_prompts
    assert completion["suffix"]["type"] == "null"  # unsupported here: only null is accepted
