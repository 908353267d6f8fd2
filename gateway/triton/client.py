"""The Triton upstreams: a shared gRPC client each, health probes, round robin, cancellable streams.

Only the gRPC *stream* is used for inference, because decoupled models (`tensorrt_llm_bls`,
`tensorrt_llm`) reject unary calls. A stream ends in one of two ways: the route's final response
arrives (we half-close and the RPC finishes normally), or anything else happens (client gone,
error, timeout) and the RPC is cancelled, which makes Triton cancel the request in the engine.

Inference goes straight through the generated gRPC stub with protobufs the adapter builds, in the
reader/writer style: `tritonclient`'s `stream_infer` wraps every request in an async generator,
a consumer task and dict checks, and every response in an `InferResult`, which together cost more
than the rest of the gateway's request path. Control calls (health, model configs) keep
`tritonclient`'s client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from gateway.errors import UpstreamError, UpstreamUnavailable

log = logging.getLogger("localmoe.triton")

T = TypeVar("T")

_PROBE_TIMEOUT_S = 1.0
# Triton's wording when the model is missing or still loading: a 503, not a 502.
_NOT_SERVING = ("unknown model", "is not ready", "is not found", "not available")
# As tritonclient's own channel: no message size limits, its keepalive defaults.
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.keepalive_time_ms", 2**31 - 1),
    ("grpc.keepalive_timeout_ms", 20000),
    ("grpc.keepalive_permit_without_calls", False),
    ("grpc.http2.max_pings_without_data", 2),
]


@dataclass(eq=False)
class Upstream:
    """One Triton server: the channel every inference shares, and a client for control calls."""

    url: str
    client: InferenceServerClient
    channel: grpc.aio.Channel
    stub: service_pb2_grpc.GRPCInferenceServiceStub
    ready: bool = False

    @classmethod
    def open(cls, url: str) -> Upstream:
        """Clients for `url` (connections open lazily)."""
        channel = grpc.aio.insecure_channel(url, options=_CHANNEL_OPTIONS)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        return cls(url, InferenceServerClient(url), channel, stub)

    async def close(self) -> None:
        """Close both clients."""
        await self.client.close()
        await self.channel.close()


class TritonPool:
    """All configured Triton upstreams. Create and `start()` it inside the running event loop."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        health_interval_s: float = 2.0,
        stream_timeout_s: float | None = None,
    ):
        self._urls = list(urls)
        self._health_interval_s = health_interval_s
        self._stream_timeout_s = stream_timeout_s
        self.upstreams: list[Upstream] = []
        self._next = 0
        self._monitor: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the clients, probe every upstream once, then keep probing in the background."""
        self.upstreams = [Upstream.open(url) for url in self._urls]
        await self.check()
        self._monitor = asyncio.create_task(self._probe_forever(), name="triton-health")

    async def close(self) -> None:
        """Stop probing and close every client."""
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await asyncio.gather(*(u.close() for u in self.upstreams), return_exceptions=True)

    def ready(self) -> bool:
        """True when at least one upstream answered its last readiness probe."""
        return any(u.ready for u in self.upstreams)

    async def check(self) -> None:
        """Probe every upstream's readiness now."""
        await asyncio.gather(*(self._probe(u) for u in self.upstreams))

    def ready_client(self) -> InferenceServerClient:
        """A ready upstream's client, for control calls such as model discovery."""
        return self._pick(set()).client

    async def stream(
        self,
        request: service_pb2.ModelInferRequest,
        *,
        parse: Callable[[service_pb2.ModelInferResponse], tuple[T, bool]],
    ) -> AsyncGenerator[T, None]:
        """Stream `request`, yielding `parse(response)[0]` until `parse` says final.

        Upstreams are taken round robin among the ready ones; one that cannot be reached before
        its first response is marked down and the next one is tried. Closing the iterator early
        cancels the request on Triton.
        """
        model = request.model_name
        tried: set[Upstream] = set()
        while True:
            upstream = self._pick(tried)
            tried.add(upstream)
            call = upstream.stub.ModelStreamInfer(timeout=self._stream_timeout_s)
            started = complete = False
            try:
                await call.write(request)
                # Our side stays open until the final response: half-closing early would let
                # some gRPC stacks end the call before a decoupled model has answered.
                while True:
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        raise UpstreamError(
                            f"Triton closed the stream for '{model}' before it finished"
                        )
                    started = True
                    if response.error_message:
                        raise _model_error(model, response.error_message)
                    item, complete = parse(response.infer_response)
                    yield item
                    if complete:
                        await call.done_writing()
                        return
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE and not started:
                    upstream.ready = False
                    log.warning("upstream %s unreachable, trying the next one", upstream.url)
                    continue
                raise _rpc_error(upstream, exc) from exc
            finally:
                if not complete:
                    call.cancel()

    def _pick(self, exclude: set[Upstream]) -> Upstream:
        count = len(self.upstreams)
        for step in range(count):
            upstream = self.upstreams[(self._next + step) % count]
            if upstream.ready and upstream not in exclude:
                self._next = (self._next + step + 1) % count
                return upstream
        raise UpstreamUnavailable("No Triton upstream is ready to serve this request.")

    async def _probe(self, upstream: Upstream) -> None:
        try:
            ready = await upstream.client.is_server_ready(client_timeout=_PROBE_TIMEOUT_S)
        except (InferenceServerException, grpc.RpcError, OSError):
            ready = False
        if ready != upstream.ready:
            log.info("upstream %s is %s", upstream.url, "ready" if ready else "not ready")
        upstream.ready = bool(ready)

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self._health_interval_s)
            await self.check()


def _model_error(model: str, message: str) -> UpstreamError:
    if any(marker in message for marker in _NOT_SERVING):
        return UpstreamUnavailable(f"Model route '{model}' is not available on Triton: {message}")
    return UpstreamError(f"Triton failed the request: {message}")


def _rpc_error(upstream: Upstream, exc: grpc.aio.AioRpcError) -> UpstreamError:
    log.warning("upstream %s failed a stream: %s", upstream.url, exc)
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        upstream.ready = False
        return UpstreamUnavailable(f"Triton upstream {upstream.url} went away.")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return UpstreamError(f"Triton upstream {upstream.url} timed out.")
    return UpstreamError(f"Triton upstream {upstream.url} failed ({code.name}).")
