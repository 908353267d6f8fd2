"""One attempt of a request on one upstream: a message on a shared stream (stopped by id when
the caller leaves) or an RPC of its own (cancelled), yielding `(item, final)` per response.

An attempt that fails for the upstream's sake before the request has any response raises `Lost`
(the pool may move the request elsewhere); after a response, the error itself (the client has
output and hears of it); Triton refusing the request is an `UpstreamError` either way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable
from typing import TypeVar

import grpc
from tritonclient.grpc import service_pb2

from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.triton.upstream import Request, StopRequest, Upstream

log = logging.getLogger("localmoe.triton")

T = TypeVar("T")
Parse = Callable[[service_pb2.ModelInferResponse], tuple[T, bool]]

# Triton's wording when the model is missing or still loading there: try another upstream.
_NOT_SERVING = ("unknown model", "is not ready", "is not found", "not available")


class Lost(Exception):
    """The attempt failed for the upstream's sake before the request had any response."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


async def on_shared_stream(
    upstream: Upstream,
    request: Request,
    parse: Parse[T],
    stop: StopRequest,
    timeout_s: float | None,
) -> AsyncGenerator[tuple[T, bool], None]:
    """`request` as one message on one of `upstream`'s shared streams; closing early sends
    `stop(request.id)`."""
    loop = asyncio.get_running_loop()
    stream = upstream.shared_stream()
    inbox = stream.open(request)
    started = ended = False
    # The deadline arrives in the inbox like a response: the request's task may be busy
    # outside this generator (writing to its client), where a cancellation would land.
    deadline = None
    if timeout_s is not None:
        timed_out = UpstreamTimeout(f"Triton upstream {upstream.url} timed out.")
        deadline = loop.call_later(timeout_s, inbox.put, timed_out)
    try:
        try:
            await stream.send(request)
        except grpc.aio.AioRpcError as exc:
            ended = True  # the call is gone, and with it the request
            raise transport_error(upstream, exc, started) from exc
        except (UpstreamUnavailable, UpstreamError) as exc:
            ended = True  # the stream broke before the request was on it
            raise Lost(unavailable(upstream, "ended a stream")) from exc
        while True:
            try:
                response = await inbox.get()
            except grpc.aio.AioRpcError as exc:
                ended = True
                raise transport_error(upstream, exc, started) from exc
            except UpstreamTimeout:
                raise
            except (UpstreamUnavailable, UpstreamError) as exc:
                ended = True  # the stream broke under the request
                if started:
                    raise
                raise Lost(unavailable(upstream, "stopped answering")) from exc
            if response.error_message:
                ended = True  # Triton ended the request with the error
                raise triton_error(request.model_name, response.error_message, started)
            started = True
            item, ended = parse(response.infer_response)
            yield item, ended
            if ended:
                return
    finally:
        if deadline is not None:
            deadline.cancel()
        stream.forget(request.id)
        if not ended:
            stream.stop_soon(stop(request.id))


async def on_own_call(
    upstream: Upstream,
    request: Request,
    parse: Parse[T],
    timeout_s: float | None,
    calls: set[grpc.aio.StreamStreamCall],
    aborted: Callable[[], GatewayError | None],
) -> AsyncGenerator[tuple[T, bool], None]:
    """`request` on an RPC of its own; closing early cancels it. `calls` holds the live calls
    (an abort cancels them, and `aborted()` then says with what)."""
    call = upstream.stub.ModelStreamInfer(timeout=timeout_s)
    calls.add(call)
    started = complete = False
    try:
        try:
            await call.write(request)
        except (asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
            raise Lost(unavailable(upstream, "ended the call")) from exc
        # Our side stays open until the final response: half-closing early would let
        # some gRPC stacks end the call before a decoupled model has answered.
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                if started:
                    raise UpstreamError(
                        f"Triton closed the stream for '{request.model_name}' early."
                    )
                raise Lost(unavailable(upstream, "closed the stream"))
            if response.error_message:
                raise triton_error(request.model_name, response.error_message, started)
            started = True
            item, complete = parse(response.infer_response)
            yield item, complete
            if complete:
                await call.done_writing()
                return
    except grpc.aio.AioRpcError as exc:
        raise transport_error(upstream, exc, started) from exc
    except asyncio.CancelledError:
        error = aborted()
        if error is not None and call.cancelled():
            raise error from None
        raise
    finally:
        calls.discard(call)
        if not complete:
            call.cancel()


def unavailable(upstream: Upstream, what: str) -> UpstreamUnavailable:
    return UpstreamUnavailable(f"Triton upstream {upstream.url} {what}.")


def triton_error(model: str, message: str, started: bool) -> GatewayError | Lost:
    if any(marker in message for marker in _NOT_SERVING):
        error = UpstreamUnavailable(f"Model route '{model}' is not available on Triton: {message}")
        return error if started else Lost(error)
    return UpstreamError(f"Triton failed the request: {message}")


def transport_error(upstream: Upstream, exc: grpc.aio.AioRpcError, started: bool) -> Exception:
    """An RPC that ended: before any response the request moves to another upstream (it may
    not have run at all, and it produced nothing); after, the client hears of it."""
    code = exc.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return UpstreamTimeout(f"Triton upstream {upstream.url} timed out.")
    if code == grpc.StatusCode.UNAVAILABLE:
        upstream.ready = False
    log.warning("upstream %s ended a call: %s", upstream.url, code.name)
    if not started:
        return Lost(unavailable(upstream, f"failed ({code.name})"))
    if code == grpc.StatusCode.UNAVAILABLE:
        return unavailable(upstream, "went away")
    return UpstreamError(f"Triton upstream {upstream.url} failed ({code.name}).")
