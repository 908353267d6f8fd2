"""The Triton upstreams: shared gRPC streams each, health probes, round robin, stop by id.

Only the gRPC *stream* is used for inference, because decoupled models (`tensorrt_llm_bls`,
`tensorrt_llm`) reject unary calls. Routes that take TensorRT-LLM's `stop` input share a few
long-lived `ModelStreamInfer` calls per upstream: each request is one message on a shared
stream, its responses are told apart by request id, and a request the gateway gives up on is
ended with a `stop=true` message carrying its id. A new RPC per request would cost one HTTP/2
stream and several completion-queue round trips on both sides (measured: half the client's CPU
and a fifth of Triton's per request on the echo route), and cancelling RPCs while responses are
in flight crashes Triton 2.51 (`bench/cancel_storm.py`). Routes without `stop` (NVIDIA's
ensemble) get one RPC per request, cancelled to cancel the request.

Inference goes straight through the generated gRPC stub with protobufs the adapter builds:
`tritonclient`'s `stream_infer` wraps every request in an async generator, a consumer task and
dict checks, and every response in an `InferResult`, which together cost more than the rest of
the gateway's request path. Control calls (health, model configs) keep `tritonclient`'s client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from gateway.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.triton import metrics
from gateway.triton.membership import Membership, Resolver, Targets, resolve
from gateway.triton.metrics import Attempt

log = logging.getLogger("localmoe.triton")

T = TypeVar("T")
Request = service_pb2.ModelInferRequest
Response = service_pb2.ModelStreamInferResponse
StopRequest = Callable[[str], Request]

_PROBE_TIMEOUT_S = 1.0
# An upstream whose address left DNS finishes what it carries for at most this long, then closes.
_RETIRE_GRACE_S = 120.0
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
    streams: list[SharedStream | None] = field(default_factory=list)
    in_flight: int = 0
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
    def open(cls, url: str, shared_streams: int) -> Upstream:
        """Clients for `url` (connections and streams open lazily)."""
        channel = grpc.aio.insecure_channel(url, options=_CHANNEL_OPTIONS)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        return cls(url, InferenceServerClient(url), channel, stub, [None] * shared_streams)

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
        """Write one request message."""
        if self.failure is not None:
            raise self.failure
        async with self._write_turn:
            await self._call.write(request)

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
            await self.send(request)
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
            self._fail(exc)

    def _fail(self, error: BaseException) -> None:
        if self.failure is None:
            self.failure = error
        for inbox in self._inboxes.values():
            inbox.put(error)
        self._inboxes.clear()


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


class TritonPool:
    """All configured Triton upstreams. Create and `start()` it inside the running event loop."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        health_interval_s: float = 2.0,
        stream_timeout_s: float | None = None,
        shared_streams: int = 2,
        dns_interval_s: float = 10.0,
        resolver: Resolver = resolve,
    ):
        self._membership = Membership(Targets.parse(urls), resolver)
        self._health_interval_s = health_interval_s
        self._dns_interval_s = dns_interval_s
        self._stream_timeout_s = stream_timeout_s
        self._shared_streams = shared_streams
        self.upstreams: list[Upstream] = []
        self._next = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._retiring: dict[Upstream, asyncio.Task[None]] = {}

    async def start(self) -> None:
        """Resolve the upstreams, probe each once, then keep probing (and resolving `dns:///`
        entries) in the background."""
        await self.refresh()
        await self.check()
        self._tasks.append(asyncio.create_task(self._probe_forever(), name="triton-health"))
        if self._membership.targets.names:
            self._tasks.append(asyncio.create_task(self._resolve_forever(), name="triton-dns"))

    async def close(self) -> None:
        """Stop probing and close every client."""
        for task in [*self._tasks, *self._retiring.values()]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        everything = [*self.upstreams, *self._retiring]
        await asyncio.gather(*(u.close() for u in everything), return_exceptions=True)

    async def refresh(self) -> None:
        """Bring the upstreams in line with the configuration and DNS: new addresses are opened
        and probed, vanished ones stop taking requests and close once idle."""
        urls = await self._membership.current()
        wanted = set(urls)
        known = {u.url: u for u in self.upstreams}
        added = [Upstream.open(url, self._shared_streams) for url in urls if url not in known]
        opened = {u.url: u for u in added}
        gone = [u for u in self.upstreams if u.url not in wanted]
        await asyncio.gather(*(self._probe(u) for u in added))
        self.upstreams = [known.get(url) or opened[url] for url in urls]
        for upstream in gone:
            log.info("upstream %s left, closing it once idle", upstream.url)
            self._retiring[upstream] = asyncio.create_task(self._retire(upstream))

    def ready(self) -> bool:
        """True when at least one upstream answered its last readiness probe."""
        return any(u.ready for u in self.upstreams)

    async def check(self) -> None:
        """Probe every upstream's readiness now."""
        await asyncio.gather(*(self._probe(u) for u in self.upstreams))

    def ready_client(self) -> InferenceServerClient:
        """A ready upstream's client, for control calls such as model discovery."""
        return self._pick(set()).client

    def stream(
        self,
        request: Request,
        *,
        parse: Callable[[service_pb2.ModelInferResponse], tuple[T, bool]],
        stop: StopRequest | None = None,
    ) -> AsyncGenerator[T, None]:
        """Stream `request`, yielding `parse(response)[0]` until `parse` says final.

        Upstreams are taken round robin among the ready ones; one that cannot be reached before
        its first response is marked down and the next one is tried. Closing the iterator early
        ends the request on Triton: with the message `stop(request_id)` where the route has one
        (on a shared stream), else by cancelling the request's own RPC.
        """
        if stop is not None and self._shared_streams > 0:
            return self._shared(request, parse, stop)
        return self._dedicated(request, parse)

    async def _shared(
        self,
        request: Request,
        parse: Callable[[service_pb2.ModelInferResponse], tuple[T, bool]],
        stop: StopRequest,
    ) -> AsyncGenerator[T, None]:
        model, client_id = request.model_name, request.id
        loop = asyncio.get_running_loop()
        tried: set[Upstream] = set()
        while True:
            upstream = self._pick(tried)
            tried.add(upstream)
            stream = upstream.shared_stream()
            request.id = client_id
            inbox = stream.open(request)
            started = ended = False
            attempt = Attempt(upstream)
            # The deadline arrives in the inbox like a response: the request's task may be busy
            # outside this generator (writing to its client), where a cancellation would land.
            deadline = None
            if self._stream_timeout_s is not None:
                timed_out = UpstreamTimeout(f"Triton upstream {upstream.url} timed out.")
                deadline = loop.call_later(self._stream_timeout_s, inbox.put, timed_out)
            try:
                await stream.send(request)
                while True:
                    response = await inbox.get()
                    started = True
                    if response.error_message:
                        ended = True  # Triton ended the request with the error
                        raise _model_error(model, response.error_message)
                    item, ended = parse(response.infer_response)
                    if ended:
                        attempt.outcome = "ok"
                    yield item
                    if ended:
                        return
            except grpc.aio.AioRpcError as exc:
                ended = True  # the call is gone, and with it the request
                if _unreachable(upstream, exc, started):
                    attempt.retried()
                    continue
                raise _rpc_error(upstream, exc) from exc
            except UpstreamUnavailable:
                if ended or started:
                    raise
                ended = True  # the stream broke before the request started: try another
                log.warning("upstream %s stopped answering, trying the next one", upstream.url)
                attempt.retried()
                continue
            finally:
                attempt.finish(sys.exc_info()[1])
                if deadline is not None:
                    deadline.cancel()
                stream.forget(request.id)
                if not ended:
                    stream.stop_soon(stop(request.id))

    async def _dedicated(
        self,
        request: Request,
        parse: Callable[[service_pb2.ModelInferResponse], tuple[T, bool]],
    ) -> AsyncGenerator[T, None]:
        model = request.model_name
        tried: set[Upstream] = set()
        while True:
            upstream = self._pick(tried)
            tried.add(upstream)
            call = upstream.stub.ModelStreamInfer(timeout=self._stream_timeout_s)
            started = complete = False
            attempt = Attempt(upstream)
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
                    if complete:
                        attempt.outcome = "ok"
                    yield item
                    if complete:
                        await call.done_writing()
                        return
            except grpc.aio.AioRpcError as exc:
                if _unreachable(upstream, exc, started):
                    attempt.retried()
                    continue
                raise _rpc_error(upstream, exc) from exc
            finally:
                attempt.finish(sys.exc_info()[1])
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
            if not ready:
                # A stream to a server that stopped answering may never end on its own.
                upstream.break_streams(
                    UpstreamUnavailable(f"Triton upstream {upstream.url} stopped answering.")
                )
        upstream.ready = bool(ready)

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self._health_interval_s)
            await self.check()

    async def _resolve_forever(self) -> None:
        while True:
            await asyncio.sleep(self._dns_interval_s)
            await self.refresh()

    async def _retire(self, upstream: Upstream) -> None:
        deadline = asyncio.get_running_loop().time() + _RETIRE_GRACE_S
        try:
            while upstream.in_flight and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.5)
            await upstream.close()
        finally:
            metrics.set_up(upstream.url, False)
            self._retiring.pop(upstream, None)


def _unreachable(upstream: Upstream, exc: grpc.aio.AioRpcError, started: bool) -> bool:
    """Whether the request may go to the next upstream: this one could not be reached before
    the request produced anything (it is then marked down)."""
    if exc.code() != grpc.StatusCode.UNAVAILABLE or started:
        return False
    upstream.ready = False
    log.warning("upstream %s unreachable, trying the next one", upstream.url)
    return True


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
        return UpstreamTimeout(f"Triton upstream {upstream.url} timed out.")
    return UpstreamError(f"Triton upstream {upstream.url} failed ({code.name}).")
