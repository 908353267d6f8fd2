"""One Triton server as the gateway holds it: its gRPC channel, a few long-lived shared streams,
a client for control calls, its health, its circuit and its load.

Only the gRPC *stream* is used for inference, because decoupled models (`tensorrt_llm_bls`,
`tensorrt_llm`) reject unary calls. Routes that take TensorRT-LLM's `stop` input share a few
long-lived `ModelStreamInfer` calls per upstream: each request is one message on a shared
stream, its responses are told apart by request id, and a request the gateway gives up on is
ended with a `stop=true` message carrying its id. A new RPC per request would cost one HTTP/2
stream and several completion-queue round trips on both sides (measured: half the client's CPU
and a fifth of Triton's per request on the echo route), and cancelling RPCs while responses are
in flight crashes Triton 2.51 (`bench/cancel_storm.py`).

Inference goes straight through the generated gRPC stub with protobufs the adapter builds:
`tritonclient`'s `stream_infer` wraps every request in an async generator, a consumer task and
dict checks, and every response in an `InferResult`, which together cost more than the rest of
the gateway's request path. Control calls (health, model configs) keep `tritonclient`'s client.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.grpc.aio import InferenceServerClient

from gateway.errors import UpstreamError, UpstreamUnavailable
from gateway.triton import metrics
from gateway.triton.balancer import EngineLoad
from gateway.triton.breaker import Breaker

log = logging.getLogger("localmoe.triton")

Request = service_pb2.ModelInferRequest
Response = service_pb2.ModelStreamInferResponse
StopRequest = Callable[[str], Request]

# As tritonclient's own channel (no message size limits, its keepalive defaults), and a short
# reconnect backoff: gRPC's default grows to 120 s, which kept a restarted Triton unused for up
# to half a minute; capped at 1 s, a replica is back within a probe interval.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.keepalive_time_ms", 2**31 - 1),
    ("grpc.keepalive_timeout_ms", 20000),
    ("grpc.keepalive_permit_without_calls", False),
    ("grpc.http2.max_pings_without_data", 2),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
# Shared streams carry many requests, so request ids must never repeat on them: a late response
# of a stopped request would otherwise reach a newer request that reused a client's id.
_SERIAL = itertools.count(1)


@dataclass(eq=False)
class Upstream:
    """One Triton server: its channel, its shared streams, and a client for control calls."""

    url: str
    client: InferenceServerClient
    channel: grpc.aio.Channel
    stub: service_pb2_grpc.GRPCInferenceServiceStub
    breaker: Breaker
    streams: list[SharedStream | None] = field(default_factory=list)
    in_flight: int = 0
    engine: EngineLoad | None = None
    """The latest reading of its engine gauges (`engine_aware` balancing)."""
    metrics_url: str = ""
    missed_probes: int = 0
    """Readiness probes in a row that got no answer in time."""
    _ready: bool = False
    _next_stream: int = 0

    @property
    def ready(self) -> bool:
        """Answered its last readiness probe and did not fail a request since."""
        return self._ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self._ready = value
        metrics.set_up(self.url, value)

    @classmethod
    def open(cls, url: str, shared_streams: int, breaker: Breaker) -> Upstream:
        """Clients for `url` (connections and streams open lazily)."""
        channel = grpc.aio.insecure_channel(url, options=CHANNEL_OPTIONS)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        client = InferenceServerClient(url, channel_args=CHANNEL_OPTIONS)
        return cls(url, client, channel, stub, breaker, [None] * shared_streams)

    def shared_stream(self) -> SharedStream:
        """The next shared stream, round robin; a broken one is replaced by a new one."""
        index = self._next_stream
        self._next_stream = (index + 1) % len(self.streams)
        stream = self.streams[index]
        if stream is None or stream.failure is not None:
            stream = self.streams[index] = SharedStream(self)
        return stream

    def break_streams(self, error: UpstreamError) -> None:
        """Fail every request on this upstream's shared streams (it stopped answering)."""
        for stream in self.streams:
            if stream is not None:
                stream.close(error)

    async def close(self) -> None:
        """Close the streams and both clients."""
        self.break_streams(UpstreamUnavailable(f"Triton upstream {self.url} is shutting down."))
        await self.client.close()
        await self.channel.close()


class SharedStream:
    """One long-lived `ModelStreamInfer` call carrying many requests, told apart by id.

    One reader task hands each response to its request's inbox; writes take turns, because
    gRPC allows one outstanding write per call. When the call ends, every request still on it
    fails with the reason.
    """

    def __init__(self, upstream: Upstream):
        self.upstream = upstream
        self.failure: BaseException | None = None
        self._inboxes: dict[str, _Inbox] = {}
        self._call = upstream.stub.ModelStreamInfer()
        self._write_turn = asyncio.Lock()
        self._reader = asyncio.create_task(self._read(), name=f"triton-stream {upstream.url}")
        self._stops: set[asyncio.Task[None]] = set()

    def open(self, request: Request) -> _Inbox:
        """Give `request` an id unique on this stream and an inbox for its responses."""
        request.id = f"{request.id}#{next(_SERIAL):x}" if request.id else f"#{next(_SERIAL):x}"
        inbox = self._inboxes[request.id] = _Inbox()
        return inbox

    def forget(self, request_id: str) -> None:
        """Drop the request's inbox; responses still on their way for it are discarded."""
        self._inboxes.pop(request_id, None)

    async def send(self, request: Request) -> None:
        """Write one request message; a call that has ended fails the stream (and with it
        this request) instead of raising gRPC's `InvalidStateError: RPC already finished`.

        A caller cancelled meanwhile (its client hung up) leaves the write to finish on its
        own: grpc.aio cancels the whole call when a write is cancelled, and with it every
        request on this stream (and Triton 2.51 with responses in flight)."""
        if self.failure is not None:
            raise self.failure
        write = asyncio.ensure_future(self._write(request))
        write.add_done_callback(_retrieve)
        await asyncio.shield(write)

    async def _write(self, request: Request) -> None:
        async with self._write_turn:
            if self.failure is not None:
                raise self.failure
            try:
                await self._call.write(request)
            except (asyncio.InvalidStateError, grpc.aio.AioRpcError, grpc.aio.UsageError) as exc:
                lost = UpstreamUnavailable(f"Triton upstream {self.upstream.url} ended a stream.")
                self._fail(lost)
                raise lost from exc

    def stop_soon(self, request: Request) -> None:
        """Send a `stop` message in the background (the caller may be being cancelled)."""
        if self.failure is not None:
            return  # the call is gone, and with it everything it carried
        task = asyncio.create_task(self._send_stop(request))
        self._stops.add(task)
        task.add_done_callback(self._stops.discard)

    def close(self, error: BaseException) -> None:
        """End the call and fail whatever is still on it."""
        self._fail(error)
        self._call.cancel()
        self._reader.cancel()

    async def _send_stop(self, request: Request) -> None:
        try:
            await self._write(request)  # already a task of its own: nothing to shield it from
        except Exception as exc:  # best effort: the end of the call stops it anyway
            log.debug("could not stop request %s: %s", request.id, exc)

    async def _read(self) -> None:
        inboxes = self._inboxes
        try:
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    raise UpstreamError(f"Triton upstream {self.upstream.url} ended a stream.")
                inbox = inboxes.get(response.infer_response.id)
                if inbox is not None:
                    inbox.put(response)
        except asyncio.CancelledError:
            self._fail(UpstreamError(f"Triton upstream {self.upstream.url} stream was closed."))
            raise
        except Exception as exc:  # any end of the call (an AioRpcError mostly) fails its requests
            if isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE:
                self.upstream.ready = False  # the connection is gone; the next probe tells
            self._fail(exc)

    def _fail(self, error: BaseException) -> None:
        if self.failure is None:
            self.failure = error
        for inbox in self._inboxes.values():
            inbox.put(error)
        self._inboxes.clear()


def _retrieve(task: asyncio.Future[None]) -> None:
    # A write whose caller was cancelled fails unseen: its stream's failure tells the rest.
    if not task.cancelled():
        task.exception()


class _Inbox:
    """The responses of one request on a shared stream, or the error that ended the stream."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[Response | BaseException] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: Response | BaseException) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Response:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if isinstance(item, BaseException):
            raise item
        return item
