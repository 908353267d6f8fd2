"""The asynchronous Python load generator, run as its own process (`python -m bench.loadgen`).

It drives Triton directly over gRPC streaming and HTTP servers (the gateway, the LiteLLM proxy)
with streamed or plain requests, closed loop: `concurrency` virtual users, each sending its next
request when the previous one has finished. It measures what wrk cannot: time to first token,
inter-token latency and tokens per second of streams.

The parent (`LoadGenerator`) sends one JSON job per line on stdin and reads one JSON result per
line on stdout, so the interpreter and its imports start once per benchmark, not once per run.
Only events inside the measurement window (after `warmup`) count; requests still running at the
end of the window are cancelled, which cancels them upstream too.

One Python process tops out near 1,000-2,000 requests/s on this machine's cores; results carry
the client's own CPU use so a run where the client, not the server, was the limit shows as such.

gRPC requests are prebuilt `ModelInferRequest` protobufs sent on one long-lived stream per
virtual user (as Triton's perf_analyzer does), the cheapest way a Python client can talk to Triton.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.stats import summarize

# Triton datatypes of the text-interface inputs the benchmark sends.
_DTYPES = {
    "text_input": "BYTES",
    "stop_words": "BYTES",
    "max_tokens": "INT32",
    "top_k": "INT32",
    "min_tokens": "INT32",
    "temperature": "FP32",
    "top_p": "FP32",
    "seed": "UINT64",
    "stream": "BOOL",
    "ignore_eos": "BOOL",
    "exclude_input_in_output": "BOOL",
    "return_num_input_tokens": "BOOL",
    "return_num_output_tokens": "BOOL",
}
_PACK = {"INT32": "<i", "FP32": "<f", "UINT64": "<Q", "BOOL": "<?"}
_MS = 1000.0
# Longest wait for requests still in flight when the window closes.
_DRAIN_S = 60.0


class LoadGenerator:
    """Parent-side handle of one load-generator process."""

    def __init__(self, log_path: Path | None = None) -> None:
        from bench.procs import popen

        self._log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        # The log's folder in the command line only tells `ps` which benchmark this one serves.
        tag = [str(log_path.parent)] if log_path else []
        self.process = popen(
            [sys.executable, "-m", "bench.loadgen", *tag],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            name="loadgen",
        )

    @property
    def pid(self) -> int:
        """The generator's process id (for CPU accounting)."""
        return self.process.pid

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """Run one job and return its result; raise RuntimeError if the generator died."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(job).encode() + b"\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator exited with {self.process.poll()}")
        result = json.loads(line)
        if "fatal" in result:
            raise RuntimeError(f"load generator failed: {result['fatal']}")
        return result

    def close(self) -> None:
        """Stop the generator process."""
        from bench.procs import stop_process

        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        stop_process(self.process, timeout=5)
        if self._log is not subprocess.DEVNULL:
            self._log.close()


@dataclass
class _Recorder:
    """What the virtual users observed inside the measurement window."""

    start: float
    end: float
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    itls: list[float] = field(default_factory=list)
    requests: int = 0
    tokens: int = 0
    total_requests: int = 0  # warm-up included, for CPU per request
    total_tokens: int = 0
    errors: int = 0
    error_sample: str = ""

    def inside(self, t: float) -> bool:
        return self.start <= t <= self.end

    def error(self, message: str, t: float) -> None:
        if self.inside(t):
            self.errors += 1
            self.error_sample = self.error_sample or message[:300]

    def result(self, cpu_s: float) -> dict[str, Any]:
        window = self.end - self.start
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_sample": self.error_sample,
            "window_s": window,
            "rps": self.requests / window,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens / window,
            "total_requests": self.total_requests,
            "total_tokens": self.total_tokens,
            "latency_ms": summarize(self.latencies),
            "ttft_ms": summarize(self.ttfts),
            "itl_ms": summarize(self.itls),
            "client_cpu_s": cpu_s,
        }


class _Stream:
    """Timing of one request's token events.

    Throughput counts what happens inside the window. Latency, time to first token and the
    request's count in the latency samples are kept for requests sent inside the window, and
    for the first request each user sends after the warm-up even if that is after the window:
    streams longer than the window would otherwise leave no sample at all.
    """

    __slots__ = ("first", "last", "measured", "rec", "sent")

    def __init__(self, rec: _Recorder, user: _User) -> None:
        self.rec = rec
        self.sent = time.perf_counter()
        self.measured = self.sent >= rec.start and (self.sent <= rec.end or not user.measured)
        user.measured = user.measured or self.measured
        self.first = 0.0
        self.last = 0.0

    def token(self) -> None:
        now = time.perf_counter()
        rec = self.rec
        rec.total_tokens += 1
        if rec.inside(now):
            rec.tokens += 1
            if self.first:
                rec.itls.append((now - self.last) * _MS)
        if not self.first:
            if self.measured:
                rec.ttfts.append((now - self.sent) * _MS)
            self.first = now
        self.last = now

    def done(self) -> None:
        now = time.perf_counter()
        self.rec.total_requests += 1
        if self.rec.inside(now):
            self.rec.requests += 1
        if self.measured:
            self.rec.latencies.append((now - self.sent) * _MS)


class _User:
    """One virtual user: sends until the window is over and it has had a measured request."""

    __slots__ = ("measured", "rec")

    def __init__(self, rec: _Recorder) -> None:
        self.rec = rec
        self.measured = False

    def more(self) -> bool:
        now = time.perf_counter()
        return now < self.rec.end or (not self.measured and now < self.rec.end + _DRAIN_S)

    def stream(self) -> _Stream:
        return _Stream(self.rec, self)


async def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job (see the module docstring) and return its measurements."""
    concurrency = int(job["concurrency"])
    now = time.perf_counter()
    rec = _Recorder(start=now + job.get("warmup", 0.0), end=now + job.get("warmup", 0.0))
    rec.end = rec.start + float(job["duration"])
    cpu0 = time.process_time()
    if job["kind"] == "grpc":
        users = _grpc_users(job, rec, concurrency)
    elif job["kind"] == "http":
        users = _http_users(job, rec, concurrency)
    else:
        raise ValueError(f"unknown job kind {job['kind']!r}")
    async with users as tasks:
        # Users start nothing after the window; what is in flight runs to its end. Cancelling
        # it instead would be realistic, but Triton 2.51 hangs when many decoupled streams are
        # cancelled while responses are in flight (`python -m bench.cancel_storm`).
        await asyncio.sleep(max(0.0, rec.end - time.perf_counter()))
        _, late = await asyncio.wait(tasks, timeout=2 * _DRAIN_S)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    result = rec.result(time.process_time() - cpu0)
    result["cancelled_at_end"] = len(late)
    return result


# --- gRPC -----------------------------------------------------------------------------------


def infer_request(model: str, inputs: dict[str, Any]) -> Any:
    """A `ModelInferRequest` for the text interface, every input shaped [1, 1]."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    for name, value in inputs.items():
        dtype = _DTYPES[name]
        request.inputs.add(name=name, datatype=dtype, shape=[1, 1])
        if dtype == "BYTES":
            data = str(value).encode()
            request.raw_input_contents.append(struct.pack("<I", len(data)) + data)
        else:
            request.raw_input_contents.append(struct.pack(_PACK[dtype], value))
    return request


@contextlib.asynccontextmanager
async def _grpc_users(
    job: dict[str, Any], rec: _Recorder, concurrency: int
) -> AsyncIterator[list[asyncio.Task]]:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    request = infer_request(job["model"], job["inputs"])
    channel = grpc.aio.insecure_channel(
        job["url"], options=[("grpc.max_receive_message_length", 64 << 20)]
    )
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    user = _grpc_stream_per_request_user if job.get("stream_per_request") else _grpc_user
    tasks = [asyncio.create_task(user(stub, request, rec)) for _ in range(concurrency)]
    try:
        yield tasks
    finally:
        await channel.close(grace=None)


async def _grpc_user(stub: Any, request: Any, rec: _Recorder) -> None:
    queue: asyncio.Queue = asyncio.Queue()

    async def requests() -> AsyncIterator[Any]:
        while (item := await queue.get()) is not None:
            yield item

    call = stub.ModelStreamInfer(requests())
    responses = call.__aiter__()
    user = _User(rec)
    try:
        while user.more():
            stream = user.stream()
            queue.put_nowait(request)
            await _read_one(responses, stream, rec)
        queue.put_nowait(None)  # half-close: Triton ends the RPC, nothing is cancelled
        await call.code()
    except StopAsyncIteration:
        rec.error("Triton closed the stream", time.perf_counter())
    except Exception as exc:
        rec.error(repr(exc), time.perf_counter())
    finally:
        call.cancel()


async def _grpc_stream_per_request_user(stub: Any, request: Any, rec: _Recorder) -> None:
    # What a gateway that opens one gRPC stream per HTTP request costs Triton and the client.
    user = _User(rec)
    while user.more():
        finished = asyncio.Event()

        async def one(finished: asyncio.Event = finished) -> AsyncIterator[Any]:
            yield request
            await finished.wait()

        call = stub.ModelStreamInfer(one())
        try:
            await _read_one(call.__aiter__(), user.stream(), rec)
            finished.set()
            await call.code()
        except StopAsyncIteration:
            rec.error("Triton closed the stream", time.perf_counter())
        except Exception as exc:
            rec.error(repr(exc), time.perf_counter())
        finally:
            finished.set()
            call.cancel()


async def _read_one(responses: Any, stream: _Stream, rec: _Recorder) -> None:
    """Read one request's responses, up to its final one."""
    while True:
        message = await responses.__anext__()
        if message.error_message:
            rec.error(message.error_message, time.perf_counter())
            return
        response = message.infer_response
        text, reason = _text_and_reason(response)
        if text:
            stream.token()
        final = response.parameters.get("triton_final_response")
        if reason or (final is not None and final.bool_param):
            stream.done()
            return


def _text_and_reason(response: Any) -> tuple[bytes, bytes]:
    text = reason = b""
    for output, raw in zip(response.outputs, response.raw_output_contents, strict=False):
        if output.name == "text_output":
            text = raw[4:]
        elif output.name == "finish_reason":
            reason = raw[4:]
    return text, reason


# --- HTTP -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _http_users(
    job: dict[str, Any], rec: _Recorder, concurrency: int
) -> AsyncIterator[list[asyncio.Task]]:
    import aiohttp

    body = job["body"]
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **job.get("headers", {})}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        user = _http_stream_user if job.get("stream") else _http_user
        tasks = [
            asyncio.create_task(user(session, job["url"], data, headers, rec))
            for _ in range(concurrency)
        ]
        yield tasks


async def _http_user(
    session: Any, url: str, data: bytes, headers: dict[str, str], rec: _Recorder
) -> None:
    user = _User(rec)
    while user.more():
        stream = user.stream()
        try:
            async with session.post(url, data=data, headers=headers) as resp:
                payload = await resp.read()
                if resp.status != 200:
                    rec.error(f"{resp.status} {payload[:200]!r}", time.perf_counter())
                    continue
            stream.done()
        except (TimeoutError, OSError) as exc:
            rec.error(repr(exc), time.perf_counter())


async def _http_stream_user(
    session: Any, url: str, data: bytes, headers: dict[str, str], rec: _Recorder
) -> None:
    import orjson

    user = _User(rec)
    while user.more():
        stream = user.stream()
        try:
            async with session.post(url, data=data, headers=headers) as resp:
                if resp.status != 200:
                    payload = await resp.read()
                    rec.error(f"{resp.status} {payload[:200]!r}", time.perf_counter())
                    continue
                async for line in resp.content:
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        break
                    chunk = orjson.loads(payload)
                    for choice in chunk.get("choices") or ():
                        if (choice.get("delta") or {}).get("content"):
                            stream.token()
            stream.done()
        except (TimeoutError, OSError, ValueError) as exc:
            rec.error(repr(exc), time.perf_counter())


# --- the process ----------------------------------------------------------------------------


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = os.fdopen(sys.stdout.fileno(), "wb", buffering=0, closefd=False)
    while line := await reader.readline():
        try:
            result = await run_job(json.loads(line))
        except Exception as exc:
            result = {"fatal": repr(exc)}
        out.write(json.dumps(result).encode() + b"\n")


def main() -> None:
    """Serve jobs from stdin until it closes."""
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        runner = asyncio.Runner()
    with runner, contextlib.suppress(KeyboardInterrupt):
        runner.run(_serve())


if __name__ == "__main__":
    main()
