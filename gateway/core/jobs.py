"""A validated OpenAI request turned into a `Job`: the model, the prompts and their token
budget, the images, the sampling options and the cache key. Everything that can refuse a request
before Triton is asked happens here (validation, model access, images, context length, token
budget); images are fetched and decoded last, once every cheaper check has passed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gateway.core import structured, validation
from gateway.core.backend import SamplingOptions
from gateway.core.catalogue import Catalogue, ServedModel
from gateway.core.context import CallContext
from gateway.core.images import ImageLoader, image_parts
from gateway.core.messages import render_prompt
from gateway.core.protocol import ChatCompletionRequest, CompletionRequest
from gateway.core.toolcalls import ToolParsing
from gateway.errors import ContextLengthExceeded, ModelNotFound
from gateway.policy.cache import cache_key, is_cacheable
from gateway.settings import ImageSettings, RequestSettings

CHAT, COMPLETION = "chat.completion", "text_completion"


@dataclass(frozen=True, slots=True)
class Job:
    """What to generate for one request: `n` samples of each prompt."""

    kind: str
    """`chat.completion` or `text_completion`: the OpenAI object it answers with."""
    model: ServedModel
    prompts: list[str]
    prompt_tokens: list[int | None]
    """Per prompt; None where no count was needed before generation (Triton reports it)."""
    special_tokens: bool
    """Whether the tokenizer adds its special tokens (completions) or the template has (chat)."""
    stream: bool
    """Ask the backend for deltas as they come (streamed answers, and per-token logprobs)."""
    options: SamplingOptions
    n: int
    include_usage: bool
    cache_key: str | None = None
    """Set when the answer may come from, and go to, the response cache."""
    echo: bool = False
    affinity: str | None = None
    """What keeps the request's conversation on one upstream: the session, else `user`."""
    images: tuple[str, ...] = ()
    """The prompt's images in order, as `data:` URLs of their checked bytes."""
    image_tokens: int = 0
    """Prompt tokens the images add beyond their one placeholder token each (a tokenizer count
    of the prompt misses them)."""
    tools: ToolParsing | None = None
    """How tool calls are read out of the answer into `message.tool_calls`; None: not at all."""

    @property
    def choices(self) -> int:
        """Choice `i*n + k` is sample `k` of prompt `i`."""
        return len(self.prompts) * self.n

    def echo_text(self, index: int) -> str:
        """The prompt that choice `index` repeats before its text (`echo`), else ''."""
        return self.prompts[index // self.n] if self.echo else ""


class JobBuilder:
    """Prepares jobs against one catalogue, under one set of request bounds."""

    def __init__(
        self,
        catalogue: Catalogue,
        limits: RequestSettings,
        *,
        caching: bool,
        images: ImageSettings | None = None,
    ):
        self.catalogue = catalogue
        self.limits = limits
        self.caching = caching
        self.images = ImageLoader(images or ImageSettings())

    async def chat(self, request: ChatCompletionRequest, ctx: CallContext) -> Job:
        """The job of a chat request, after the chat template, with its images loaded."""
        validation.check_chat(request, self.limits)
        model = self.model(request.model, ctx)
        parts = image_parts(request)
        self.images.check(request, parts, model)
        prompt = render_prompt(model, request, len(parts))
        extra = len(parts) * (model.image_tokens - 1) if parts and model.image_tokens else 0
        counts, max_tokens = await self._budget(
            model, [prompt], validation.requested_max_tokens(request), ctx, chat=True, extra=extra
        )
        loaded = await self.images.load(parts)
        logprobs = bool(request.logprobs)
        template = model.chat_template
        output = structured.output_of(
            request, tool_tags=template is not None and template.tool_tags
        )
        top = (request.top_logprobs or 0) if logprobs else 0
        return Job(
            kind=CHAT,
            model=model,
            prompts=[prompt],
            prompt_tokens=counts,
            special_tokens=False,
            stream=bool(request.stream) or logprobs,
            options=validation.sampling_options(
                request, max_tokens, logprobs=logprobs, top_logprobs=top, guide=output.guide
            ),
            n=request.n or 1,
            include_usage=_include_usage(request),
            cache_key=self._cache_key(request, model, ctx, [i.sha256 for i in loaded]),
            affinity=ctx.session or request.user,
            images=tuple(image.data_url for image in loaded),
            image_tokens=extra,
            tools=output.tools,
        )

    async def completion(self, request: CompletionRequest, ctx: CallContext) -> Job:
        """The job of a completion request: one budget for all its prompts."""
        validation.check_completion(request, self.limits)
        model = self.model(request.model, ctx)
        prompts = [request.prompt] if isinstance(request.prompt, str) else list(request.prompt)
        counts, max_tokens = await self._budget(
            model, prompts, validation.requested_max_tokens(request), ctx, chat=False
        )
        logprobs = request.logprobs is not None
        return Job(
            kind=COMPLETION,
            model=model,
            prompts=prompts,  # type: ignore[arg-type]  # text prompts only (validation)
            prompt_tokens=counts,
            special_tokens=True,
            stream=bool(request.stream) or logprobs,
            options=validation.sampling_options(
                request, max_tokens, logprobs=logprobs, top_logprobs=request.logprobs or 0
            ),
            n=request.n or 1,
            include_usage=_include_usage(request),
            cache_key=self._cache_key(request, model, ctx),
            echo=bool(request.echo),
            affinity=ctx.session or request.user,
        )

    def model(self, model_id: str, ctx: CallContext) -> ServedModel:
        """The served model, or 404; one the caller may not use answers like one that is not."""
        if ctx.allows_model is not None and not ctx.allows_model(model_id):
            raise ModelNotFound(model_id)
        return self.catalogue.get(model_id)

    def _cache_key(
        self,
        request: validation.OpenAIRequest,
        model: ServedModel,
        ctx: CallContext,
        image_hashes: list[str] | None = None,
    ) -> str | None:
        if not self.caching:
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
        # Unknown fields were already dropped by the parser and cannot change the answer.
        return cache_key(
            ctx.tenant,
            model.cache_identity,
            request.model_dump(exclude_unset=True),
            image_hashes=image_hashes or (),
        )

    async def _budget(
        self,
        model: ServedModel,
        prompts: list[str],
        requested: int | None,
        ctx: CallContext,
        *,
        chat: bool,
        extra: int = 0,
    ) -> tuple[list[int | None], int]:
        """The prompts' token counts (with `extra` tokens each that the text does not show:
        image features) and the completion budget, after the context and token budget checks
        (400 or 429).

        Counting is skipped (None) when a cheap upper bound already passes both checks, since
        Triton reports the exact count; a prompt whose cheap lower bound already overflows the
        context is refused without tokenising it."""
        tokenizer, special, param = model.tokenizer, not chat, "messages" if chat else "prompt"
        if requested is not None:
            bounds = [tokenizer.bound(p, add_special_tokens=special) for p in prompts]
            known = [b + extra for b in bounds if b is not None]
            fits = len(known) == len(bounds) and max(known) + requested <= model.context_length
            if fits and (ctx.meter is None or ctx.meter.admits(sum(known))):
                return [None] * len(prompts), requested
        for prompt in prompts:
            if tokenizer.floor(prompt) + extra > model.context_length:
                raise ContextLengthExceeded(
                    f"This model's maximum context length is {model.context_length} tokens, "
                    f"and the {param} alone are far longer. Please shorten the {param}.",
                    param=param,
                )
        counts = [count + extra for count in await _count(model, prompts, special)]
        max_tokens = validation.fit_context(
            model.context_length, max(counts), requested, param=param, cap=self.limits.max_tokens
        )
        if ctx.meter is not None:
            await ctx.meter.check(sum(counts))
        return list(counts), max_tokens


async def _count(model: ServedModel, prompts: list[str], special: bool) -> list[int]:
    if len(prompts) == 1:
        return [await model.tokenizer.count_async(prompts[0], add_special_tokens=special)]
    # One thread hop for the whole batch, not one per prompt.
    return await asyncio.to_thread(
        lambda: [model.tokenizer.count(p, add_special_tokens=special) for p in prompts]
    )


def _include_usage(request: ChatCompletionRequest | CompletionRequest) -> bool:
    options = request.stream_options
    return bool(request.stream and options is not None and options.include_usage)
