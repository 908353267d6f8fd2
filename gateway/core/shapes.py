"""The OpenAI objects a job answers with, built from the same choices and deltas whether the
answer is streamed, whole, fresh or cached: one shape for chat, one for text completions."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel

from gateway.core import protocol
from gateway.core.accounting import Choice, token_logprobs
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

    def finish(self, index: int, reason: str) -> Chunk:
        """The chunk that ends choice `index`."""
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

    def opening(self, index: int) -> list[Chunk]:
        return [self._chunk(index, protocol.DeltaMessage(role="assistant", content=""))]

    def delta(self, index: int, delta: Delta, offset: int) -> Chunk | None:
        if self.job.options.logprobs and (delta.text or delta.logprobs):
            logprobs = _chat_logprobs(token_logprobs(delta))
            return self._chunk(index, protocol.DeltaMessage(content=delta.text), logprobs=logprobs)
        return self.texts.json(index, delta.text) if delta.text else None

    def finish(self, index: int, reason: str) -> Chunk:
        return self._chunk(index, protocol.DeltaMessage(), finish_reason=reason)

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
            choices=[
                protocol.ChatCompletionChoice(
                    index=index,
                    message=protocol.ChatCompletionMessage(content="".join(choice.text)),
                    logprobs=_chat_logprobs(choice.logprobs) if logprobs else None,
                    finish_reason=choice.finish_reason,  # type: ignore[arg-type]
                )
                for index, choice in enumerate(choices)
            ],
            usage=usage,
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
            logprobs = _completion_logprobs(token_logprobs(delta), offset)
            return self._chunk(index, delta.text, logprobs=logprobs)
        return self.texts.json(index, delta.text) if delta.text else None

    def finish(self, index: int, reason: str) -> Chunk:
        return self._chunk(index, "", finish_reason=reason)

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
                    logprobs=_completion_logprobs(choice.logprobs, 0) if logprobs else None,
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


def _chat_logprobs(tokens: list[tuple[str, float]]) -> protocol.ChoiceLogprobs:
    return protocol.ChoiceLogprobs(
        content=[
            protocol.TokenLogprob(token=text, logprob=lp, bytes=list(text.encode()))
            for text, lp in tokens
        ]
    )


def _completion_logprobs(
    tokens: list[tuple[str, float]], offset: int
) -> protocol.CompletionLogprobs:
    offsets = []
    for text, _ in tokens:
        offsets.append(offset)
        offset += len(text)
    return protocol.CompletionLogprobs(
        tokens=[text for text, _ in tokens],
        token_logprobs=[lp for _, lp in tokens],
        top_logprobs=None,
        text_offset=offsets,
    )


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(16)}"
