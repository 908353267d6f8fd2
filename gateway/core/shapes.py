"""The OpenAI objects a job answers with, built from the same choices and deltas whether the
answer is streamed, whole, fresh or cached: one shape for chat, one for text completions."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel

from gateway.core import protocol, toolcalls
from gateway.core.accounting import Choice, TokenEntry, token_logprobs
from gateway.core.backend import Delta
from gateway.core.jobs import CHAT, Job
from gateway.core.toolcalls import JSON, JsonParser, TagParser

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
        # With tools, each choice's text goes through a tool-call parser (gateway.core.toolcalls),
        # and token logprobs wait for the next chunk the parser lets out.
        self.parsers: dict[int, TagParser | JsonParser] = {}
        self.pending: dict[int, list[TokenEntry]] = {}

    def opening(self, index: int) -> list[Chunk]:
        tools = self.job.tools
        content = None if tools is not None and tools.format == JSON else ""
        return [self._chunk(index, protocol.DeltaMessage(role="assistant", content=content))]

    def delta(self, index: int, delta: Delta, offset: int) -> Chunk | None:
        if self.job.tools is not None:
            return self._parsed(index, delta)
        if self.job.options.logprobs and (delta.text or delta.logprobs):
            logprobs = _chat_logprobs(token_logprobs(delta), self.job)
            return self._chunk(index, protocol.DeltaMessage(content=delta.text), logprobs=logprobs)
        return self.texts.json(index, delta.text) if delta.text else None

    def finish(self, index: int, reason: str) -> list[Chunk]:
        chunks: list[Chunk] = []
        parser = self.parsers.pop(index, None)
        if self.job.tools is not None:
            parser = parser or self.job.tools.parser()
            last = self._events_chunk(index, parser.finish())
            if last is not None:
                chunks.append(last)
            if parser.calls and reason == "stop":
                reason = "tool_calls"
        logprobs = self._take_logprobs(index)
        chunks.append(
            self._chunk(index, protocol.DeltaMessage(), finish_reason=reason, logprobs=logprobs)
        )
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
        if self.job.tools is not None:
            content, calls = toolcalls.whole(self.job.tools, text)
            message = protocol.ChatCompletionMessage(content=content, tool_calls=calls or None)
            if calls and reason == "stop":
                reason = "tool_calls"
        return protocol.ChatCompletionChoice(
            index=index,
            message=message,
            logprobs=_chat_logprobs(choice.logprobs, self.job) if logprobs else None,
            finish_reason=reason,  # type: ignore[arg-type]
        )

    def _parsed(self, index: int, delta: Delta) -> Chunk | None:
        parser = self.parsers.get(index)
        if parser is None:
            assert self.job.tools is not None
            parser = self.parsers[index] = self.job.tools.parser()
        if self.job.options.logprobs:
            self.pending.setdefault(index, []).extend(token_logprobs(delta))
        return self._events_chunk(index, parser.feed(delta.text) if delta.text else [])

    def _take_logprobs(self, index: int) -> protocol.ChoiceLogprobs | None:
        entries = self.pending.pop(index, None)
        return _chat_logprobs(entries, self.job) if entries else None

    def _events_chunk(
        self, index: int, events: list[toolcalls.Event]
    ) -> protocol.ChatCompletionChunk | None:
        """One chunk for what a piece of text let out of the parser (usually one event; a call's
        start and its first arguments travel together), with the logprobs held till then."""
        if not events:
            return None
        content: list[str] = []
        calls: list[protocol.DeltaToolCall] = []
        for event in events:
            if isinstance(event, toolcalls.Content):
                content.append(event.text)
            elif isinstance(event, toolcalls.CallStart):
                # OpenAI's first piece of a call: id, type and name (then only arguments).
                function = protocol.DeltaFunction(name=event.name, arguments="")
                calls.append(
                    protocol.DeltaToolCall(
                        index=event.index, id=event.id, type="function", function=function
                    )
                )
            elif calls and calls[-1].index == event.index:
                function = calls[-1].function
                assert function is not None
                function.arguments = (function.arguments or "") + event.text
            else:
                function = protocol.DeltaFunction(arguments=event.text)
                calls.append(protocol.DeltaToolCall(index=event.index, function=function))
        delta = protocol.DeltaMessage(content="".join(content) or None, tool_calls=calls or None)
        return self._chunk(index, delta, logprobs=self._take_logprobs(index))

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
