"""The OpenAI engine: one method per endpoint, OpenAI objects in and out, no HTTP and no tensors.

A request goes: validation (model access included) → (chat template) → prompt token count and
context check → the caller's token budget → response cache → one backend generation per prompt and
per `n` → OpenAI response, or chunks as the deltas arrive; then the used tokens are charged (also
when the client left) and a normal finish fills the cache. Non-streaming answers aggregate the
very same delta streams; cached answers are replayed as either. Authentication and the request
limit stay in the HTTP layer, which describes the caller in a `CallContext`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

from gateway.core import protocol, validation
from gateway.core.backend import Backend, Delta, GenerationRequest, SamplingParams
from gateway.core.catalogue import Catalogue, ServedModel
from gateway.core.context import CallContext, TokenMeter
from gateway.core.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
)
from gateway.errors import InvalidRequest, ModelNotFound, UpstreamError
from gateway.policy.cache import (
    CachedChoice,
    CachedCompletion,
    ResponseCache,
    cache_key,
    is_cacheable,
)
from gateway.settings import Settings

# Tasks nobody awaits (charging a client that went away) must be referenced until they finish.
_background: set[asyncio.Task[None]] = set()


class LLMEngine(Protocol):
    """What the HTTP layer needs from an engine."""

    def ready(self) -> bool:
        """True when requests can be served now (a model is known and an upstream is ready)."""
        ...

    def models(self) -> list[protocol.Model]:
        """The `/v1/models` entries."""
        ...

    def model(self, model_id: str) -> protocol.Model:
        """One model's entry, or `ModelNotFound`."""
        ...

    async def chat(
        self, request: ChatCompletionRequest, ctx: CallContext
    ) -> ChatCompletionResponse:
        """A whole chat completion."""
        ...

    def chat_stream(
        self, request: ChatCompletionRequest, ctx: CallContext
    ) -> AsyncGenerator[ChatCompletionChunk | bytes, None]:
        """Chat completion chunks, as models or already serialised (the per-token text chunks);
        the first one is yielded once the upstream has answered."""
        ...

    async def completion(self, request: CompletionRequest, ctx: CallContext) -> CompletionResponse:
        """A whole text completion."""
        ...

    def completion_stream(
        self, request: CompletionRequest, ctx: CallContext
    ) -> AsyncGenerator[CompletionResponse | bytes, None]:
        """Text completion chunks, as models or already serialised (the per-token text chunks);
        the first one is yielded once the upstream has answered."""
        ...


@dataclass(frozen=True, slots=True)
class _Job:
    """A validated request, ready for the backend."""

    model: ServedModel
    prompts: list[str]
    prompt_tokens: list[int | None]
    """Per prompt; None where no count was needed before generation (Triton reports it)."""
    special_tokens: bool
    """Whether the tokenizer adds its special tokens (completions) or the template has (chat)."""
    stream: bool
    params: SamplingParams
    n: int
    include_usage: bool
    cache_key: str | None = None
    """Set when the answer may come from, and go to, the response cache."""
    echo: bool = False


@dataclass(slots=True)
class _Choice:
    """What one generation produced, accumulated from its deltas."""

    seen: bool = False
    chars: int = 0
    text: list[str] = dataclasses.field(default_factory=list)
    logprobs: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int = 0

    def add(self, delta: Delta) -> None:
        self.seen = True
        if delta.text:
            self.text.append(delta.text)
            self.chars += len(delta.text)
        if delta.logprobs:
            self.logprobs.extend(_token_logprobs(delta))
        if delta.num_input_tokens is not None:
            self.input_tokens = delta.num_input_tokens
        if delta.num_output_tokens is not None:
            self.output_tokens = delta.num_output_tokens
        if delta.finish_reason is not None:
            self.finish_reason = _finish_reason(delta.finish_reason)


class Engine:
    """`LLMEngine` on top of a models catalogue and a generation backend (Triton)."""

    def __init__(
        self,
        settings: Settings,
        catalogue: Catalogue,
        backend: Backend,
        cache: ResponseCache | None = None,
    ):
        self._settings = settings
        self.catalogue = catalogue
        self.backend = backend
        self.cache = cache

    def ready(self) -> bool:
        """True when a model is known and an upstream is ready."""
        return bool(self.catalogue.all()) and self.backend.ready()

    def models(self) -> list[protocol.Model]:
        """The `/v1/models` entries."""
        return [model.card() for model in self.catalogue.all()]

    def model(self, model_id: str) -> protocol.Model:
        """One model's entry, or `ModelNotFound`."""
        return self.catalogue.get(model_id).card()

    async def chat(
        self, request: ChatCompletionRequest, ctx: CallContext
    ) -> ChatCompletionResponse:
        """A whole chat completion."""
        job = await self._prepare_chat(request, ctx)
        cached = await self._lookup(job, _CHAT, ctx)
        if cached is not None:
            return ChatCompletionResponse(
                id=_new_id("chatcmpl"),
                created=cached.created,
                model=job.model.id,
                choices=[
                    protocol.ChatCompletionChoice(
                        index=c.index,
                        message=protocol.ChatCompletionMessage(content=c.text),
                        finish_reason=c.finish_reason,  # type: ignore[arg-type]
                    )
                    for c in cached.choices
                ],
                usage=_cached_usage(cached),
            )
        results = await self._collect_all(job, ctx)
        await self._fill(job, _CHAT, results)
        return ChatCompletionResponse(
            id=_new_id("chatcmpl"),
            created=int(time.time()),
            model=job.model.id,
            choices=[
                protocol.ChatCompletionChoice(
                    index=index,
                    message=protocol.ChatCompletionMessage(content="".join(result.text)),
                    logprobs=_chat_logprobs(result.logprobs) if job.params.logprobs else None,
                    finish_reason=result.finish_reason,
                )
                for index, result in enumerate(results)
            ],
            usage=_usage(job, results),
        )

    async def chat_stream(
        self, request: ChatCompletionRequest, ctx: CallContext
    ) -> AsyncGenerator[ChatCompletionChunk | bytes, None]:
        """Role chunk, content chunks and one finish chunk per choice, then usage if asked."""
        job = await self._prepare_chat(request, ctx)
        cached = await self._lookup(job, _CHAT, ctx)
        chunk_id, created, model_id = _new_id("chatcmpl"), int(time.time()), job.model.id

        def chunk(
            index: int,
            delta: protocol.DeltaMessage,
            finish_reason: str | None = None,
            logprobs: protocol.ChoiceLogprobs | None = None,
        ) -> ChatCompletionChunk:
            choice = protocol.ChatCompletionStreamChoice(
                index=index, delta=delta, logprobs=logprobs, finish_reason=finish_reason
            )
            return ChatCompletionChunk(
                id=chunk_id, created=created, model=model_id, choices=[choice]
            )

        texts = protocol.TextChunks(lambda i, text: chunk(i, protocol.DeltaMessage(content=text)))
        if cached is not None:
            for c in cached.choices:
                yield chunk(c.index, protocol.DeltaMessage(role="assistant", content=""))
                if c.text:
                    yield chunk(c.index, protocol.DeltaMessage(content=c.text))
                yield chunk(c.index, protocol.DeltaMessage(), finish_reason=c.finish_reason)
            if job.include_usage:
                yield ChatCompletionChunk(
                    id=chunk_id,
                    created=created,
                    model=model_id,
                    choices=[],
                    usage=_cached_usage(cached),
                )
            return

        choices = [_Choice() for _ in range(len(job.prompts) * job.n)]
        try:
            async for index, delta in self._deltas(job, ctx.request_id):
                choice = choices[index]
                if not choice.seen:
                    yield chunk(index, protocol.DeltaMessage(role="assistant", content=""))
                choice.add(delta)
                if job.params.logprobs and (delta.text or delta.logprobs):
                    logprobs = _chat_logprobs(_token_logprobs(delta))
                    yield chunk(index, protocol.DeltaMessage(content=delta.text), logprobs=logprobs)
                elif delta.text:
                    yield texts.json(index, delta.text)
                if choice.finish_reason is not None:
                    yield chunk(index, protocol.DeltaMessage(), finish_reason=choice.finish_reason)
        except BaseException:
            _charge_later(ctx.meter, job, choices)
            raise
        await _charge(ctx.meter, job, choices)
        await self._fill(job, _CHAT, choices)
        if job.include_usage:
            yield ChatCompletionChunk(
                id=chunk_id, created=created, model=model_id, choices=[], usage=_usage(job, choices)
            )

    async def completion(self, request: CompletionRequest, ctx: CallContext) -> CompletionResponse:
        """A whole text completion; choice `i*n + k` is sample `k` of prompt `i`."""
        job = await self._prepare_completion(request, ctx)
        cached = await self._lookup(job, _COMPLETION, ctx)
        if cached is not None:
            return CompletionResponse(
                id=_new_id("cmpl"),
                created=cached.created,
                model=job.model.id,
                choices=[
                    protocol.CompletionChoice(
                        index=c.index,
                        text=_echo(job, c.index) + c.text,
                        finish_reason=c.finish_reason,  # type: ignore[arg-type]
                    )
                    for c in cached.choices
                ],
                usage=_cached_usage(cached),
            )
        results = await self._collect_all(job, ctx)
        await self._fill(job, _COMPLETION, results)
        choices = []
        for index, result in enumerate(results):
            text = _echo(job, index) + "".join(result.text)
            logprobs = _completion_logprobs(result.logprobs, 0) if job.params.logprobs else None
            choices.append(
                protocol.CompletionChoice(
                    index=index, text=text, logprobs=logprobs, finish_reason=result.finish_reason
                )
            )
        return CompletionResponse(
            id=_new_id("cmpl"),
            created=int(time.time()),
            model=job.model.id,
            choices=choices,
            usage=_usage(job, results),
        )

    async def completion_stream(
        self, request: CompletionRequest, ctx: CallContext
    ) -> AsyncGenerator[CompletionResponse | bytes, None]:
        """Text chunks and one finish chunk per choice, then usage if asked."""
        job = await self._prepare_completion(request, ctx)
        cached = await self._lookup(job, _COMPLETION, ctx)
        chunk_id, created, model_id = _new_id("cmpl"), int(time.time()), job.model.id

        def chunk(
            index: int,
            text: str,
            finish_reason: str | None = None,
            logprobs: protocol.CompletionLogprobs | None = None,
        ) -> CompletionResponse:
            choice = protocol.CompletionChoice(
                index=index, text=text, logprobs=logprobs, finish_reason=finish_reason
            )
            return CompletionResponse(
                id=chunk_id, created=created, model=model_id, choices=[choice]
            )

        texts = protocol.TextChunks(chunk)
        if cached is not None:
            for c in cached.choices:
                if job.echo:
                    yield chunk(c.index, _echo(job, c.index))
                if c.text:
                    yield chunk(c.index, c.text)
                yield chunk(c.index, "", finish_reason=c.finish_reason)
            if job.include_usage:
                yield CompletionResponse(
                    id=chunk_id,
                    created=created,
                    model=model_id,
                    choices=[],
                    usage=_cached_usage(cached),
                )
            return

        choices = [_Choice() for _ in range(len(job.prompts) * job.n)]
        try:
            async for index, delta in self._deltas(job, ctx.request_id):
                choice = choices[index]
                if job.echo and not choice.seen:
                    yield chunk(index, _echo(job, index))
                offset = choice.chars  # echo and logprobs never come together (validation)
                choice.add(delta)
                if job.params.logprobs and (delta.text or delta.logprobs):
                    logprobs = _completion_logprobs(_token_logprobs(delta), offset)
                    yield chunk(index, delta.text, logprobs=logprobs)
                elif delta.text:
                    yield texts.json(index, delta.text)
                if choice.finish_reason is not None:
                    yield chunk(index, "", finish_reason=choice.finish_reason)
        except BaseException:
            _charge_later(ctx.meter, job, choices)
            raise
        await _charge(ctx.meter, job, choices)
        await self._fill(job, _COMPLETION, choices)
        if job.include_usage:
            yield CompletionResponse(
                id=chunk_id, created=created, model=model_id, choices=[], usage=_usage(job, choices)
            )

    async def _prepare_chat(self, request: ChatCompletionRequest, ctx: CallContext) -> _Job:
        validation.check_chat(request, self._settings)
        model = self._model(request.model, ctx)
        if model.chat_template is None:
            raise InvalidRequest(
                f"Model '{model.id}' has no chat template; use /v1/completions.", param="model"
            )
        prompt = model.chat_template.render(validation.chat_messages(request), tools=request.tools)
        prompt_tokens, max_tokens = await _budget(
            model,
            [prompt],
            validation.requested_max_tokens(request),
            ctx,
            special_tokens=False,
            param="messages",
            cap=self._settings.requests.max_tokens,
        )
        return _Job(
            model=model,
            prompts=[prompt],
            prompt_tokens=prompt_tokens,
            special_tokens=False,
            stream=bool(request.stream),
            params=validation.sampling_params(request, max_tokens, logprobs=bool(request.logprobs)),
            n=request.n or 1,
            include_usage=_include_usage(request),
            cache_key=self._cache_key(request, model, ctx),
        )

    async def _prepare_completion(self, request: CompletionRequest, ctx: CallContext) -> _Job:
        validation.check_completion(request, self._settings)
        model = self._model(request.model, ctx)
        prompts = [request.prompt] if isinstance(request.prompt, str) else list(request.prompt)
        # One budget for all prompts, as the request has one max_tokens: the longest prompt decides.
        counts, max_tokens = await _budget(
            model,
            prompts,
            validation.requested_max_tokens(request),
            ctx,
            special_tokens=True,
            param="prompt",
            cap=self._settings.requests.max_tokens,
        )
        return _Job(
            model=model,
            prompts=prompts,
            prompt_tokens=counts,
            special_tokens=True,
            stream=bool(request.stream),
            params=validation.sampling_params(
                request, max_tokens, logprobs=request.logprobs is not None
            ),
            n=request.n or 1,
            include_usage=_include_usage(request),
            cache_key=self._cache_key(request, model, ctx),
            echo=bool(request.echo),
        )

    def _model(self, model_id: str, ctx: CallContext) -> ServedModel:
        # A model the caller may not use answers exactly like one that does not exist.
        if ctx.allows_model is not None and not ctx.allows_model(model_id):
            raise ModelNotFound(model_id)
        return self.catalogue.get(model_id)

    def _cache_key(
        self, request: validation.Request, model: ServedModel, ctx: CallContext
    ) -> str | None:
        if self.cache is None:
            return None
        ctx.headers["x-cache"] = "miss"
        if not model.cache:
            return None
        flags = {
            "cache": request.cache,
            "logprobs": request.logprobs,
            "seed": request.seed,
            "temperature": request.temperature,
        }
        if not is_cacheable(flags, ctx.cache_control):
            return None
        # Fields the client did not send are left out (the normalisation drops defaults anyway);
        # unknown fields were already dropped by the parser and cannot change the answer.
        return cache_key(ctx.tenant, model.cache_identity, request.model_dump(exclude_unset=True))

    async def _lookup(self, job: _Job, kind: str, ctx: CallContext) -> CachedCompletion | None:
        if job.cache_key is None or self.cache is None:
            return None
        cached = await self.cache.get(job.cache_key)
        if cached is None or cached.object != kind or len(cached.choices) != _choices(job):
            return None
        ctx.headers["x-cache"] = "hit"
        return cached

    async def _fill(self, job: _Job, kind: str, choices: Sequence[_Choice]) -> None:
        """Cache an answer whose every choice finished normally."""
        if job.cache_key is None or self.cache is None:
            return
        if any(c.finish_reason is None for c in choices):
            return
        usage = _usage(job, choices)
        await self.cache.put(
            job.cache_key,
            CachedCompletion(
                object=kind,
                model=job.model.id,
                created=int(time.time()),
                choices=tuple(
                    CachedChoice(i, "".join(c.text), c.finish_reason) for i, c in enumerate(choices)
                ),
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
            ),
        )

    def _generations(self, job: _Job, request_id: str) -> list[AsyncGenerator[Delta, None]]:
        streams: list[AsyncGenerator[Delta, None]] = []
        several = len(job.prompts) * job.n > 1
        for prompt in job.prompts:
            for k in range(job.n):
                params = job.params
                if k and params.seed is not None:  # n samples with one seed must still differ
                    params = dataclasses.replace(params, seed=params.seed + k)
                sub_id = f"{request_id}-{len(streams)}" if several else request_id
                streams.append(
                    self.backend.generate(
                        job.model.route, GenerationRequest(prompt, params, sub_id, job.stream)
                    )
                )
        return streams

    def _deltas(self, job: _Job, request_id: str) -> AsyncGenerator[tuple[int, Delta], None]:
        return _merge(self._generations(job, request_id))

    async def _collect_all(self, job: _Job, ctx: CallContext) -> list[_Choice]:
        choices = [_Choice() for _ in range(_choices(job))]
        try:
            async for index, delta in self._deltas(job, ctx.request_id):
                choices[index].add(delta)
        except BaseException:  # the client left (cancelled) or the upstream failed
            _charge_later(ctx.meter, job, choices)
            raise
        await _charge(ctx.meter, job, choices)
        return choices


async def _merge(
    streams: Sequence[AsyncGenerator[Delta, None]],
) -> AsyncGenerator[tuple[int, Delta], None]:
    """Interleave several delta streams as their deltas arrive, tagged with the stream's index."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as only:
            async for delta in only:
                yield 0, delta
        return
    queue: asyncio.Queue[tuple[int, Delta | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncGenerator[Delta, None]) -> None:
        try:
            async with aclosing(stream):
                async for delta in stream:
                    queue.put_nowait((index, delta))
        except Exception as exc:
            queue.put_nowait((index, exc))
        else:
            queue.put_nowait((index, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


_CHAT, _COMPLETION = "chat.completion", "text_completion"


def _choices(job: _Job) -> int:
    return len(job.prompts) * job.n


def _echo(job: _Job, index: int) -> str:
    return job.prompts[index // job.n] if job.echo else ""


def _used(job: _Job, choices: Sequence[_Choice]) -> int:
    """Tokens to charge: prompts and completions of the generations that started."""
    return _usage(job, choices).total_tokens if any(c.seen for c in choices) else 0


async def _charge(meter: TokenMeter | None, job: _Job, choices: Sequence[_Choice]) -> None:
    if meter is not None:
        used = _used(job, choices)
        if used:
            await meter.charge(used)


def _charge_later(meter: TokenMeter | None, job: _Job, choices: Sequence[_Choice]) -> None:
    # Called while the request's task is being cancelled: an await here would be cancelled too.
    if meter is None:
        return
    used = _used(job, choices)
    if not used:
        return
    try:
        task = asyncio.get_running_loop().create_task(meter.charge(used))
    except RuntimeError:  # finalised after its event loop stopped: nothing left to charge with
        return
    _background.add(task)
    task.add_done_callback(_background.discard)


def _cached_usage(cached: CachedCompletion) -> protocol.Usage:
    return protocol.Usage(
        prompt_tokens=cached.prompt_tokens,
        completion_tokens=cached.completion_tokens,
        total_tokens=cached.total_tokens,
    )


def _include_usage(request: ChatCompletionRequest | CompletionRequest) -> bool:
    options = request.stream_options
    return bool(request.stream and options is not None and options.include_usage)


def _finish_reason(reason: str) -> str:
    if reason in ("stop", "length"):
        return reason
    if reason == "cancelled":
        raise UpstreamError("The generation was cancelled by the server.")
    return "stop"


async def _budget(
    model: ServedModel,
    prompts: list[str],
    requested: int | None,
    ctx: CallContext,
    *,
    special_tokens: bool,
    param: str,
    cap: int | None,
) -> tuple[list[int | None], int]:
    """The prompts' token counts and the completion budget, after the context and token-budget
    checks; a 400 or 429 when they fail.

    Counting is skipped (None) when a cheap upper bound of the count already passes both checks,
    since Triton reports the exact count: on short prompts, tokenising cost more than the rest
    of the request's validation. Without `max_tokens` the budget depends on the exact count."""
    tokenizer = model.tokenizer
    if requested is not None:
        bounds = [tokenizer.bound(p, add_special_tokens=special_tokens) for p in prompts]
        known = [b for b in bounds if b is not None]
        fits = len(known) == len(bounds) and max(known) + requested <= model.context_length
        if fits and (ctx.meter is None or ctx.meter.admits(sum(known))):
            return [None] * len(prompts), requested
    counts = [await tokenizer.count_async(p, add_special_tokens=special_tokens) for p in prompts]
    max_tokens = validation.fit_context(
        model.context_length, max(counts), requested, param=param, cap=cap
    )
    if ctx.meter is not None:
        await ctx.meter.check(sum(counts))
    return list(counts), max_tokens


def _usage(job: _Job, choices: Sequence[_Choice]) -> protocol.Usage:
    # Prompt tokens count once per prompt (not per sample); Triton's own count wins over ours.
    prompt_tokens = 0
    for i, counted in enumerate(job.prompt_tokens):
        reported = choices[i * job.n].input_tokens
        if reported is None:
            reported = counted
        if reported is None:  # a route that does not report it, and a prompt we did not count
            reported = job.model.tokenizer.count(
                job.prompts[i], add_special_tokens=job.special_tokens
            )
        prompt_tokens += reported
    completion_tokens = sum(c.output_tokens for c in choices)
    return protocol.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def _token_logprobs(delta: Delta) -> list[tuple[str, float]]:
    # Triton gives the logprobs of the delta's tokens but not their strings: the first token
    # carries the delta's text, so the tokens still concatenate to the generated text.
    return [(delta.text if i == 0 else "", lp) for i, lp in enumerate(delta.logprobs or ())]


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
