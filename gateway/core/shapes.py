"""The OpenAI objects a job answers with, built from the same choices and deltas whether the
answer is streamed, whole, fresh or cached: one shape for chat, one for text completions."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel

from gateway.core import protocol, structured
from gateway.core.accounting import Choice, TokenEntry, token_logprobs
from gateway.core.backend import Delta
from gateway.core.jobs import CHAT, Job

Chunk = BaseModel | bytes
"""A stream chunk, as a model or already serialised (the per-token text chunks)."""


class Shape(Protocol):
    """How one kind of answer looks, streamed and whole."""

    def opening(self, index: int) -> list[Chunk]:
        """Chunks before choice `index`'s first text."""
        ...

    def delta(self, index: int, delta: Delta, offset: int) -> Chunk | None:
        """The chunk of a delta (`offset`: the choice's characters before it), if any."""
        ...

    def finish(self, index: int, reason: str) -> list[Chunk]:
        """The chunks that end choice `index` (the last names the finish reason)."""
        ...

    def usage(self, usage: protocol.Usage) -> Chunk:
        """The last chunk, with the whole answer's usage."""
        ...

    def response(self, choices: Sequence[Choice], usage: protocol.Usage) -> BaseModel:
        """The whole answer."""
        ...


def shape_of(job: Job) -> Shape:
    """The shape `job` answers in."""
    return ChatShape(job) if job.kind == CHAT else CompletionShape(job)


class ChatShape:
    """`chat.completion` and `chat.completion.chunk`."""

    def __init__(self, job: Job):
        self.job = job
        self.id, self.created = _new_id("chatcmpl"), int(time.time())
        self.texts = protocol.TextChunks(
            lambda i, text: self._chunk(i, protocol.DeltaMessage(content=text))
        )
        # Tool-call answers are held back until whole: their JSON is parsed once complete.
        self.held: dict[int, list[str]] = {}

    def opening(self, index: int) -> list[Chunk]:
        content = None if self.job.tool_calls else ""
        return [self._chunk(index, protocol.DeltaMessage(role="assistant", content=content))]

    def delta(self, index: int, delta: Delta, offset: int) -> Chunk | None:
        if self.job.tool_calls:
            self.held.setdefault(index, []).append(delta.text)
            return None
        if self.job.options.logprobs and (delta.text or delta.logprobs):
            logprobs = _chat_logprobs(token_logprobs(delta), self.job)
            return self._chunk(index, protocol.DeltaMessage(content=delta.text), logprobs=logprobs)
        return self.texts.json(index, delta.text) if delta.text else None

    def finish(self, index: int, reason: str) -> list[Chunk]:
        chunks: list[Chunk] = []
        if self.job.tool_calls:
            text = "".join(self.held.pop(index, []))
            calls = structured.parse_tool_calls(text)
            if calls is None:  # cut short (length): the text as it is
                chunks.append(self._chunk(index, protocol.DeltaMessage(content=text)))
            else:
                reason = "tool_calls"
                for i, call in enumerate(calls):
                    # OpenAI's pieces: id, type and name first, then the arguments.
                    first = protocol.DeltaToolCall(
                        index=i,
                        id=call.id,
                        type="function",
                        function=protocol.DeltaFunction(name=call.function.name, arguments=""),
                    )
                    rest = protocol.DeltaToolCall(
                        index=i, function=protocol.DeltaFunction(arguments=call.function.arguments)
                    )
                    for piece in (first, rest):
                        chunks.append(self._chunk(index, protocol.DeltaMessage(tool_calls=[piece])))
        chunks.append(self._chunk(index, protocol.DeltaMessage(), finish_reason=reason))
        return chunks

    def usage(self, usage: protocol.Usage) -> Chunk:
        return protocol.ChatCompletionChunk(
            id=self.id, created=self.created, model=self.job.model.id, choices=[], usage=usage
        )

    def response(self, choices: Sequence[Choice], usage: protocol.Usage) -> BaseModel:
        logprobs = self.job.options.logprobs
        return protocol.ChatCompletionResponse(
            id=self.id,
            created=self.created,
            model=self.job.model.id,
            choices=[self._choice(index, choice, logprobs) for index, choice in enumerate(choices)],
            usage=usage,
        )

    def _choice(self, index: int, choice: Choice, logprobs: bool) -> protocol.ChatCompletionChoice:
        text, reason = "".join(choice.text), choice.finish_reason
        message = protocol.ChatCompletionMessage(content=text)
        if self.job.tool_calls:
            calls = structured.parse_tool_calls(text)
            if calls is not None:
                message = protocol.ChatCompletionMessage(content=None, tool_calls=calls)
                reason = "tool_calls"
        return protocol.ChatCompletionChoice(
            index=index,
            message=message,
            logprobs=_chat_logprobs(choice.logprobs, self.job) if logprobs else None,
            finish_reason=reason,  # type: ignore[arg-type]
        )

    def _chunk(
        self,
        index: int,
        delta: protocol.DeltaMessage,
        finish_reason: str | None = None,
        logprobs: protocol.ChoiceLogprobs | None = None,
    ) -> protocol.ChatCompletionChunk:
        choice = protocol.ChatCompletionStreamChoice(
            index=index,
            delta=delta,
            logprobs=logprobs,
            finish_reason=finish_reason,  # type: ignore[arg-type]
        )
        return protocol.ChatCompletionChunk(
            id=self.id, created=self.created, model=self.job.model.id, choices=[choice]
        )


class CompletionShape:
    """`text_completion`, whole and as chunks."""

    def __init__(self, job: Job):
        self.job = job
        self.id, self.created = _new_id("cmpl"), int(time.time())
        self.texts = protocol.TextChunks(self._chunk)

    def opening(self, index: int) -> list[Chunk]:
        echo = self.job.echo_text(index)
        return [self._chunk(index, echo)] if echo else []

    def delta(self, index: int, delta: Delta, offset: int) -> Chunk | None:
        if self.job.options.logprobs and (delta.text or delta.logprobs):
            logprobs = _completion_logprobs(token_logprobs(delta), offset, self.job)
            return self._chunk(index, delta.text, logprobs=logprobs)
        return self.texts.json(index, delta.text) if delta.text else None

    def finish(self, index: int, reason: str) -> list[Chunk]:
        return [self._chunk(index, "", finish_reason=reason)]

    def usage(self, usage: protocol.Usage) -> Chunk:
        return protocol.CompletionResponse(
            id=self.id, created=self.created, model=self.job.model.id, choices=[], usage=usage
        )

    def response(self, choices: Sequence[Choice], usage: protocol.Usage) -> BaseModel:
        logprobs = self.job.options.logprobs
        return protocol.CompletionResponse(
            id=self.id,
            created=self.created,
            model=self.job.model.id,
            choices=[
                protocol.CompletionChoice(
                    index=index,
                    text=self.job.echo_text(index) + "".join(choice.text),
                    logprobs=_completion_logprobs(choice.logprobs, 0, self.job)
                    if logprobs
                    else None,
                    finish_reason=choice.finish_reason,  # type: ignore[arg-type]
                )
                for index, choice in enumerate(choices)
            ],
            usage=usage,
        )

    def _chunk(
        self,
        index: int,
        text: str,
        finish_reason: str | None = None,
        logprobs: protocol.CompletionLogprobs | None = None,
    ) -> protocol.CompletionResponse:
        choice = protocol.CompletionChoice(
            index=index,
            text=text,
            logprobs=logprobs,
            finish_reason=finish_reason,  # type: ignore[arg-type]
        )
        return protocol.CompletionResponse(
            id=self.id, created=self.created, model=self.job.model.id, choices=[choice]
        )


def _chat_logprobs(tokens: list[TokenEntry], job: Job) -> protocol.ChoiceLogprobs:
    tokenizer = job.model.tokenizer
    content = []
    for entry in tokens:
        text, raw = _token(entry, job)
        top = [
            protocol.TopLogprob(
                token=tokenizer.token_text(i), logprob=lp, bytes=tokenizer.token_bytes(i)
            )
            for i, lp in entry.top
        ]
        content.append(
            protocol.TokenLogprob(token=text, logprob=entry.logprob, bytes=raw, top_logprobs=top)
        )
    return protocol.ChoiceLogprobs(content=content)


def _completion_logprobs(
    tokens: list[TokenEntry], offset: int, job: Job
) -> protocol.CompletionLogprobs:
    offsets, texts = [], []
    for entry in tokens:
        text, _ = _token(entry, job)
        offsets.append(offset)
        texts.append(text)
        offset += len(text)
    top: list[dict[str, float] | None] | None = None
    if job.options.top_logprobs:
        tokenizer = job.model.tokenizer
        top = []
        for entry in tokens:
            alternatives: dict[str, float] = {}
            for i, lp in entry.top:  # best first: two ids of one text keep the likelier
                alternatives.setdefault(tokenizer.token_text(i), lp)
            top.append(alternatives)
    return protocol.CompletionLogprobs(
        tokens=texts,
        token_logprobs=[entry.logprob for entry in tokens],
        top_logprobs=top,
        text_offset=offsets,
    )


def _token(entry: TokenEntry, job: Job) -> tuple[str, list[int]]:
    if entry.token_id is None:
        return entry.text, list(entry.text.encode())
    tokenizer = job.model.tokenizer
    return tokenizer.token_text(entry.token_id), tokenizer.token_bytes(entry.token_id)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(16)}"
