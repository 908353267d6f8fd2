"""A shared stream's writes outlive a cancelled caller: grpc.aio cancels the whole call when a
write is cancelled, which would end every request on the stream.

`SlowCall` stands in for grpc.aio's `StreamStreamCall` (no server here): its write takes until
released, and, as grpc.aio's `_write` does, a cancelled write cancels the call.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import grpc

from gateway.triton.upstream import Request, SharedStream


class SlowCall:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.written: list[str] = []
        self.cancelled = False

    async def write(self, request: Request) -> None:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancel()
            raise
        self.written.append(request.id)

    async def read(self) -> object:
        await asyncio.Event().wait()  # no responses in these tests
        return grpc.aio.EOF

    def cancel(self) -> None:
        self.cancelled = True


def _stream(call: SlowCall) -> SharedStream:
    upstream = SimpleNamespace(
        url="stand-in:1", stub=SimpleNamespace(ModelStreamInfer=lambda: call)
    )
    return SharedStream(upstream)  # type: ignore[arg-type]


def test_a_caller_cancelled_mid_write_leaves_the_call_and_its_write_intact() -> None:
    async def scenario() -> tuple[list[str], bool, object]:
        call = SlowCall()
        stream = _stream(call)
        sender = asyncio.create_task(stream.send(Request(id="a")))
        await asyncio.sleep(0.01)  # the write is under way
        sender.cancel()
        await asyncio.sleep(0.01)
        assert sender.cancelled()
        later = asyncio.create_task(stream.send(Request(id="b")))  # waits for its turn
        call.release.set()
        await later
        return call.written, call.cancelled, stream.failure

    written, cancelled, failure = asyncio.run(scenario())
    assert written == ["a", "b"]  # in order, the cancelled caller's included
    assert not cancelled
    assert failure is None
