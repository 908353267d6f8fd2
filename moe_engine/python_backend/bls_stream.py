"""One BLS request's stream: engine tokens in, text responses out.

`TextState` detokenises incrementally (spaces and multi-byte UTF-8 intact), cuts stop strings
before any part of them is sent, counts tokens and decides the finish reason. `relay` drives it
over the engine's responses, stops the engine request on a stop string or a client that went
away, and ends with exactly one final response. Responses are built by a `ResponseKit`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from moe_engine.outputs import TopLogprobs
from moe_engine.python_backend.responses import ResponseKit, Sender
from moe_engine.python_backend.text import IncrementalDetokenizer, StopStringMatcher


@dataclass
class Chunk:
    """One response of the engine model."""

    ids: list[int] | None
    """New token ids, padding dropped; None when the response has no `output_ids` (the empty
    final one)."""
    logprobs: list[float] | None = None
    tops: list[TopLogprobs] | None = None  # per token, with num_logprobs > 0
    error_response: Any = None
    """Set when the engine failed: the response that passes its error on, as the final one."""


@dataclass
class Piece:
    """What one text response carries."""

    text: str  # a delta when streaming, all of it otherwise
    generated: int  # tokens generated so far
    logprobs: list[float] | None  # those of the tokens behind `text`, when asked for
    finish_reason: str | None = None  # on the final piece only
    tops: tuple[list[int], list[TopLogprobs]] | None = None  # those tokens and their top-k
    num_logprobs: int = 0  # k of the top-k, also when this piece has no tokens


class TextState:
    """Detokeniser, stop strings and counters of one request; no I/O."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        stop: Sequence[str],
        max_tokens: int,
        *,
        stream: bool,
        logprobs: bool,
        num_logprobs: int = 0,
    ) -> None:
        self._detok = IncrementalDetokenizer(tokenizer)
        self._matcher = StopStringMatcher(stop)
        self._max_tokens = max_tokens
        self._stream = stream
        self._want_logprobs = logprobs
        self._text: list[str] = []
        self._logprobs: list[float] = []
        self._num_logprobs = num_logprobs
        self._ids: list[int] = []
        self._tops: list[TopLogprobs] = []
        self.generated = 0
        self.reason = ""  # "stop" | "length" | "cancelled" once decided

    @property
    def done(self) -> bool:
        """The outcome is decided; whatever the engine still sends is drained, not used."""
        return bool(self.reason)

    @property
    def hit_stop_string(self) -> bool:
        return self._matcher.stopped

    def add(
        self,
        ids: list[int],
        logprobs: list[float] | None = None,
        tops: list[TopLogprobs] | None = None,
    ) -> Piece | None:
        """Take one engine response's tokens; return the piece to send now, if any (streaming
        only: a non-streamed request gets everything in its final piece)."""
        if self.done:
            return None
        self.generated += len(ids)
        delta = self._matcher.feed(self._detok.add(ids))
        if logprobs is not None and self._want_logprobs:
            self._logprobs.extend(logprobs[: len(ids)])
        if self._num_logprobs:
            self._ids.extend(ids)
            self._tops.extend((tops or [])[: len(ids)])
        if self._matcher.stopped:
            self.reason = "stop"
        elif self.generated >= self._max_tokens:
            self.reason = "length"
        if not self._stream:
            self._text.append(delta)
            return None
        if not delta:
            return None  # held back (partial character or stop string); its logprobs wait too
        tops = self._take_tops()
        return Piece(delta, self.generated, self._take_logprobs(), None, tops, self._num_logprobs)

    def cancel(self) -> None:
        """The client went away: nothing more is sent but an empty final response."""
        if not self.done:
            self.reason = "cancelled"

    def finish(self) -> Piece | None:
        """The final piece once the engine is done; None for a cancelled request."""
        if not self.reason:
            self.reason = "stop"  # the engine ended on an end id before max_tokens
        if self.reason == "cancelled":
            return None
        tail = ""
        if not self._matcher.stopped:
            tail = self._matcher.feed(self._detok.flush()) + self._matcher.flush()
        body = tail if self._stream else "".join(self._text) + tail
        tops = self._take_tops()
        return Piece(
            body, self.generated, self._take_logprobs(), self.reason, tops, self._num_logprobs
        )

    def _take_logprobs(self) -> list[float] | None:
        if not self._want_logprobs:
            return None
        taken, self._logprobs = self._logprobs, []
        return taken

    def _take_tops(self) -> tuple[list[int], list[TopLogprobs]] | None:
        if not self._num_logprobs:
            return None
        taken = (self._ids, self._tops)  # on the final piece, maybe empty
        self._ids, self._tops = [], []
        return taken


class Client:
    """A BLS request's client side: sends its responses, remembers whether the final one went
    out, and says whether the client has gone (a `stop` for it, or the server's flag).

    The server is asked at most every `poll_interval_s` (each ask is a round trip), and never
    after the final response: `is_cancelled()` then crashes tritonserver 2.51.
    """

    def __init__(
        self,
        sender: Sender,
        final_flag: int,
        stop_engine: Callable[[str], Awaitable[None]],
        *,
        poll_interval_s: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sender = sender
        self._final = final_flag
        self._stop_engine = stop_engine
        self._interval_s = poll_interval_s
        self._clock = clock
        self._next_poll = clock() + poll_interval_s
        self.closed = False
        self.stopped = False  # a `stop` came for it, or the server said it was cancelled
        self.engine_id: str | None = None  # its engine request, while one may be running
        self._engine_stopped = False

    @property
    def poll_interval_s(self) -> float:
        return self._interval_s

    def send(self, response: Any = None, flags: int = 0) -> None:
        if flags & self._final:
            self.closed = True
        self._sender.send(response, flags)

    def cancelled(self) -> bool:
        """True once the client has gone."""
        if self.stopped or self.closed:
            return self.stopped
        now = self._clock()
        if now >= self._next_poll:
            self._next_poll = now + self._interval_s
            self.stopped = bool(self._sender.is_cancelled())
        return self.stopped

    async def stop_engine(self) -> None:
        """End its engine request (once), the TensorRT-LLM way: `stop=true` with its id."""
        if self.engine_id and not self._engine_stopped:
            self._engine_stopped = True
            await self._stop_engine(self.engine_id)


async def relay(
    chunks: AsyncIterator[Chunk],
    state: TextState,
    client: Client,
    kit: ResponseKit,
    *,
    prompt_tokens: int,
    on_first: Callable[[], None] = lambda: None,
) -> None:
    """Send `client` the text of the engine's responses, then its final response.

    A request can wait long for its first response (queued for an engine slot): meanwhile its
    client is watched, so one that goes away stops the engine request while still queued.
    `on_first` runs when the first response (or the end) arrives.
    """
    final = kit.final_flag
    chunk = await _first(chunks, client)
    on_first()
    while chunk is not None:
        if state.done:
            pass  # drain what the engine sent before it saw our stop
        elif chunk.error_response is not None:
            client.send(chunk.error_response, final)
            return
        elif client.cancelled():
            state.cancel()
            await client.stop_engine()
        elif chunk.ids is not None:
            piece = state.add(chunk.ids, chunk.logprobs, chunk.tops)
            if state.hit_stop_string:
                await client.stop_engine()
            if piece is not None:
                client.send(kit.tensors(text_tensors(piece, prompt_tokens)), 0)
        chunk = await anext(chunks, None)
    client.engine_id = None  # finished: nothing left to stop
    piece = state.finish()
    if piece is None:
        client.send(None, final)
    else:
        client.send(kit.tensors(text_tensors(piece, prompt_tokens)), final)


async def _first(chunks: AsyncIterator[Chunk], client: Client) -> Chunk | None:
    """The first chunk, stopping the engine request meanwhile if the client goes away."""

    async def first() -> Chunk | None:
        return await anext(chunks, None)

    pending = asyncio.ensure_future(first())
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=client.poll_interval_s)
            if done:
                return pending.result()
            if client.cancelled():
                await client.stop_engine()  # the engine's final response ends the wait
    except BaseException:
        pending.cancel()
        raise


def text_tensors(piece: Piece, prompt_tokens: int) -> dict[str, np.ndarray]:
    """The BLS's output tensors for one piece; the final one also says why it ended and how
    long the prompt was (what does not change token by token goes out once)."""
    tensors = {
        "text_output": np.asarray([[piece.text.encode("utf-8")]], dtype=np.object_),
        "num_output_tokens": np.asarray([[piece.generated]], dtype=np.int32),
    }
    if piece.finish_reason is not None:
        tensors["finish_reason"] = np.asarray([[piece.finish_reason.encode()]], dtype=np.object_)
        tensors["num_input_tokens"] = np.asarray([[prompt_tokens]], dtype=np.int32)
    if piece.logprobs is not None:
        tensors["output_log_probs"] = np.asarray([piece.logprobs], dtype=np.float32)
    if piece.tops is not None:
        ids, tops = piece.tops
        k = len(tops[0][0]) if tops else piece.num_logprobs
        tensors["output_token_ids"] = np.asarray([ids], dtype=np.int32)
        tensors["top_token_ids"] = np.asarray([[t[0] for t in tops]], dtype=np.int32).reshape(
            1, len(tops), k
        )
        tensors["top_log_probs"] = np.asarray([[t[1] for t in tops]], dtype=np.float32).reshape(
            1, len(tops), k
        )
    return tensors
