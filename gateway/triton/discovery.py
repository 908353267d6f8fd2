"""What a Triton model repository serves: loaded models, their config `parameters`, and the
tensors each route declares."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tritonclient.grpc.aio import InferenceServerClient


@dataclass(frozen=True, slots=True)
class RouteTensors:
    """The input and output tensor names a model declares."""

    inputs: frozenset[str]
    outputs: frozenset[str]


async def repository_models(client: InferenceServerClient) -> dict[str, dict[str, str]]:
    """Map each READY model's name to its config `parameters` (string values)."""
    index = await client.get_model_repository_index(as_json=True)
    names = sorted(
        {m["name"] for m in index.get("models", []) if m.get("state", "READY") == "READY"}
    )
    configs = await asyncio.gather(*(client.get_model_config(n, as_json=True) for n in names))
    return {name: _parameters(config) for name, config in zip(names, configs, strict=True)}


async def route_tensors(client: InferenceServerClient, name: str) -> RouteTensors:
    """The tensors model `name` declares."""
    config = (await client.get_model_config(name, as_json=True)).get("config", {})
    return RouteTensors(
        inputs=frozenset(t["name"] for t in config.get("input", [])),
        outputs=frozenset(t["name"] for t in config.get("output", [])),
    )


def _parameters(config: dict) -> dict[str, str]:
    params = config.get("config", {}).get("parameters", {})
    return {key: value.get("string_value", "") for key, value in params.items()}
