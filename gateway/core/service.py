"""The OpenAI service: one method per endpoint, OpenAI objects in and out, no HTTP, no tensors.

A request becomes a `Job` (`jobs`), whose answer comes from the response cache (`cached`) or
from one backend generation per prompt and sample (`fanout`); either way it arrives as deltas,
accumulated per choice (`accounting`) and shaped into chunks or a whole response (`shapes`).
The used tokens are charged also when the client left; a normal finish fills the cache.
Authentication and the request limit stay in the HTTP layer, which describes the caller in a
`CallContext`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

from pydantic import BaseModel

from gateway.core import accounting, cached, fanout, protocol
from gateway.core.accounting import Choice
from gateway.core.backend import Backend, Delta
from gateway.core.catalogue import Catalogue, ServedModel
from gateway.core.context import CallContext
from gateway.core.jobs import Job, JobBuilder
from gateway.core.metrics import GenerationClock
from gateway.core.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
)
from gateway.core.shapes import Chunk, shape_of
from gateway.policy.cache import CachedCompletion, ResponseCache
from gateway.settings import ImageSettings, RequestSettings

R = TypeVar("R", ChatCompletionRequest, CompletionRequest)


class Service(Protocol):
    """What the HTTP layer needs from the core."""

    def ready(self) -> bool:
        """True when requests can be served now (a model is known and an upstream is ready)."""
        ...

    def models(self) -> list[protocol.Model]:
        """The `/v1/models` entries."""
        ...

    def model(self, model_id: str) -> protocol.Model:
        """One model's entry, or `ModelNotFound`."""
        ...

    async def learn_capabilities(self) -> None:
        """Ask the backend what each model's route can do, where it has not said yet."""
        ...

    async def chat(
        self, request: ChatCompletionRequest, ctx: CallContext
    ) -> ChatCompletionResponse:
        """A whole chat completion."""
        ...

    def chat_stream(
        self, request: ChatCompletionRequest, ctx: CallContext
    ) -> AsyncGenerator[Chunk, None]:
        """Chat completion chunks; the first is yielded once the upstream has answered."""
        ...

    async def completion(self, request: CompletionRequest, ctx: CallContext) -> CompletionResponse:
        """A whole text completion."""
        ...

    def completion_stream(
        self, request: CompletionRequest, ctx: CallContext
    ) -> AsyncGenerator[Chunk, None]:
        """Text completion chunks; the first is yielded once the upstream has answered."""
        ...


class OpenAIService:
    """`Service` on top of a models catalogue, a generation backend and the response cache."""

    def __init__(
        self,
        limits: RequestSettings,
        catalogue: Catalogue,
        backend: Backend,
        cache: ResponseCache | None = None,
        images: ImageSettings | None = None,
    ):
        self.catalogue = catalogue
        self.backend = backend
        self.cache = cache
        self.jobs = JobBuilder(catalogue, limits, caching=cache is not None, images=images)
        self._inputs: dict[str, frozenset[str]] = {}
        """Each route's input tensors, once the backend has said (`learn_capabilities`)."""

    def reconfigure(
        self,
        limits: RequestSettings,
        catalogue: Catalogue | None = None,
        images: ImageSettings | None = None,
    ) -> None:
        """New request limits, image limits (and models) for the requests that arrive from now
        on; those in flight finish with what they started with."""
        self.catalogue = catalogue or self.catalogue
        self.jobs = JobBuilder(
            self.catalogue,
            limits,
            caching=self.cache is not None,
            images=images or self.jobs.images.settings,
        )

    def ready(self) -> bool:
        """True when a model is known and an upstream is ready."""
        return bool(self.catalogue.all()) and self.backend.ready()

    def models(self) -> list[protocol.Model]:
        """The `/v1/models` entries."""
        return [self._card(model) for model in self.catalogue.all()]

    def model(self, model_id: str) -> protocol.Model:
        """One model's entry, or `ModelNotFound`."""
        return self._card(self.catalogue.get(model_id))

    async def learn_capabilities(self) -> None:
        """Ask the backend what each model's route can do, where it has not said yet."""
        learn = getattr(self.backend, "route_inputs", None)
        for model in self.catalogue.all():
            if learn is not None and model.route not in self._inputs:
                inputs = await learn(model.route)
                if inputs is not None:
                    self._inputs[model.route] = inputs

    def _card(self, model: ServedModel) -> protocol.Model:
        # What a route can do is in the tensors it declares, which only the backend learns.
        return model.card(self._inputs.get(model.route))

    async def chat(
        self, request: ChatCompletionRequest, ctx: CallContext
    ) -> ChatCompletionResponse:
        """A whole chat completion."""
        return await self._whole(await self.jobs.chat(request, ctx), ctx)  # type: ignore[return-value]

    def chat_stream(
        self, request: ChatCompletionRequest, ctx: CallContext
    ) -> AsyncGenerator[Chunk, None]:
        """Role chunk, content chunks and one finish chunk per choice, then usage if asked."""
        return self._chunks(self.jobs.chat, request, ctx)

    async def completion(self, request: CompletionRequest, ctx: CallContext) -> CompletionResponse:
        """A whole text completion; choice `i*n + k` is sample `k` of prompt `i`."""
        return await self._whole(await self.jobs.completion(request, ctx), ctx)  # type: ignore[return-value]

    def completion_stream(
        self, request: CompletionRequest, ctx: CallContext
    ) -> AsyncGenerator[Chunk, None]:
        """Echo and text chunks and one finish chunk per choice, then usage if asked."""
        return self._chunks(self.jobs.completion, request, ctx)

    async def _whole(self, job: Job, ctx: CallContext) -> BaseModel:
        shape = shape_of(job)
        choices = [Choice() for _ in range(job.choices)]
        hit = await cached.lookup(self.cache, job, ctx)
        async with self._accounted(job, ctx, choices, hit) as clock:
            async for index, delta in self._deltas(job, ctx, hit):
                choice = choices[index]
                choice.last_at = clock.tick(choice.last_at)
                choice.add(delta)
        return shape.response(choices, self._usage(job, choices, hit))

    async def _chunks(
        self, prepare: Callable[[R, CallContext], Awaitable[Job]], request: R, ctx: CallContext
    ) -> AsyncGenerator[Chunk, None]:
        # One generator from the job to the last chunk: each token passes one `yield`, not two.
        job = await prepare(request, ctx)
        shape = shape_of(job)
        choices = [Choice() for _ in range(job.choices)]
        hit = await cached.lookup(self.cache, job, ctx)
        async with self._accounted(job, ctx, choices, hit) as clock:
            async for index, delta in self._deltas(job, ctx, hit):
                choice = choices[index]
                choice.last_at = clock.tick(choice.last_at)
                if not choice.seen:
                    for chunk in shape.opening(index):
                        yield chunk
                offset = choice.chars
                choice.add(delta)
                piece = shape.delta(index, delta, offset)
                if piece is not None:
                    yield piece
                if choice.finish_reason is not None:
                    for chunk in shape.finish(index, choice.finish_reason):
                        yield chunk
        if job.include_usage:
            yield shape.usage(self._usage(job, choices, hit))

    def _deltas(
        self, job: Job, ctx: CallContext, hit: CachedCompletion | None
    ) -> AsyncIterator[tuple[int, Delta]]:
        if hit is not None:
            return cached.replay(hit)
        return fanout.generate(self.backend, job, ctx.request_id)

    @contextlib.asynccontextmanager
    async def _accounted(
        self, job: Job, ctx: CallContext, choices: list[Choice], hit: CachedCompletion | None
    ) -> AsyncIterator[GenerationClock]:
        """Time the answer; charge what a fresh one used (also when it ends early), count its
        tokens and cache it once finished."""
        clock = GenerationClock(job.model.id, cached=hit is not None)
        if hit is not None:
            yield clock
            clock.finish(0, 0)
            return
        try:
            yield clock
        except BaseException:  # the client left (cancelled) or the upstream failed
            accounting.charge_later(ctx.meter, job, choices)
            raise
        spent = accounting.usage(job, choices)
        clock.finish(spent.prompt_tokens, spent.completion_tokens)
        await accounting.charge(ctx.meter, job, choices)
        await cached.fill(self.cache, job, choices)

    @staticmethod
    def _usage(job: Job, choices: list[Choice], hit: CachedCompletion | None) -> protocol.Usage:
        return cached.cached_usage(hit) if hit is not None else accounting.usage(job, choices)
