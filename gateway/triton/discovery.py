"""What a Triton model repository serves: loaded models, their config `parameters`, and the
tensors each route declares; `keep_discovering` hands it to the models catalogue."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from gateway.errors import UpstreamUnavailable
from gateway.triton.pool import TritonPool

log = logging.getLogger("localmoe.models")


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


class ModelSink(Protocol):
    """What discovery completes (the gateway's models catalogue)."""

    @property
    def complete(self) -> bool:
        """True when nothing is waiting for Triton any more."""
        ...

    async def discover(self, repository: dict[str, dict[str, str]]) -> None:
        """Take in the loaded models and their config parameters."""
        ...


async def keep_discovering(sink: ModelSink, pool: TritonPool, interval_s: float) -> None:
    """Complete `sink` from Triton's repository, retrying until every entry is resolved."""
    while not sink.complete:
        if pool.ready():
            try:
                await sink.discover(await repository_models(pool.ready_client()))
            except (InferenceServerException, UpstreamUnavailable) as exc:
                log.warning("model discovery failed, will retry: %s", exc)
        if sink.complete:
            return
        await asyncio.sleep(interval_s)
