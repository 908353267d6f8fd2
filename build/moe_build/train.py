"""The tiny model's architecture and its short, seeded training run on CPU.

Every step trains on random windows of the text stream (causal-LM loss on every token); with
chat data it also trains on a batch of image questions, a batch of docstring questions, short
tool turns and a batch of whole tool-use turns, loss on the answers only, the vision tower and
projector learning with the language model. Before that, the attention layers alone learn to
copy from the conversation (the tool warm-up).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer
from tqdm import tqdm
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from moe_build.chat import ChatSample, chat_loss
from moe_engine.vision import VisionModel

MAX_POSITIONS = 2048


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser and batch shape, sized for about 80 s of training on 2 idle cores."""

    batch_size: int = 12
    seq_len: int = 128
    peak_lr: float = 3e-3
    final_lr_fraction: float = 0.1
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # Torch's intra-op threads; results are reproducible for a fixed thread count.
    num_threads: int = min(2, os.cpu_count() or 1)


@dataclass
class ChatData:
    """The answer-only tasks mixed into every step, and the vision model they train."""

    vision: VisionModel
    pixels: torch.Tensor  # [images, 3, S, S]: what ChatSample.images index
    vqa: list[ChatSample]
    docs: list[ChatSample]
    pad_id: int
    tools: list[ChatSample] = field(default_factory=list)
    copying: list[ChatSample] = field(default_factory=list)
    """Short turns that copy (calls, results put into words): the warm-up's, and the joint's."""
    copy_steps: int = 0
    copy_batch: int = 16
    vqa_batch: int = 16
    doc_batch: int = 12
    tool_batch: int = 8
    tool_weight: float = 1.0
    # The warmed-up tower moves slower than the randomly initialised language model.
    vision_lr_scale: float = 0.3
    # Colour names hang on a few answer tokens; twice the weight makes them reliably learnt.
    vqa_weight: float = 2.0


def tiny_config(vocab_size: int, *, eos_token_id: int, pad_token_id: int) -> Qwen3MoeConfig:
    """Qwen3-MoE at toy scale: 4 layers, 8 experts with top-2 routing in every layer."""
    return Qwen3MoeConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=512,  # unused: every layer is sparse (mlp_only_layers is empty)
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        moe_intermediate_size=256,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        max_position_embeddings=MAX_POSITIONS,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        # Ten times Qwen3's default, so the short run still spreads tokens over all experts.
        router_aux_loss_coef=0.01,
        bos_token_id=None,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        dtype="float32",
    )


def token_stream(texts: Sequence[str], tokenizer: Tokenizer, *, seed: int) -> torch.Tensor:
    """All training texts, shuffled by `seed` and concatenated into one 1-D id tensor."""
    order = list(texts)
    random.Random(seed).shuffle(order)
    ids = [i for encoding in tokenizer.encode_batch(order) for i in encoding.ids]
    return torch.tensor(ids, dtype=torch.long)


def train(
    config: Qwen3MoeConfig,
    tokens: torch.Tensor,
    *,
    steps: int,
    seed: int,
    settings: TrainSettings = TrainSettings(),
    progress: bool = True,
    chat: ChatData | None = None,
) -> Qwen3MoeForCausalLM:
    """Initialise the model from `seed` and train it for `steps` AdamW steps on random windows.

    Loss is next-token cross-entropy plus the router load-balancing term, plus with `chat` the
    answer-only losses of its image and docstring questions (`chat.vision` trains too). The
    caller's global RNG and thread count are left as they were.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    window = settings.seq_len
    if tokens.numel() <= window:
        raise ValueError(f"corpus of {tokens.numel()} tokens is shorter than one window")

    with seeded(seed), threads(settings.num_threads):
        model = Qwen3MoeForCausalLM(config)
        model.train()
        if chat is not None and chat.copy_steps:
            _warm_up_copying(model, chat, settings, seed=seed, progress=progress)
        groups = [{"params": list(model.parameters()), "lr": settings.peak_lr}]
        if chat is not None:
            chat.vision.train()
            for module in chat.vision.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    # Keep the warm-up's statistics: training and serving normalise alike,
                    # not by each small batch's mix of colours.
                    module.eval()
            lr = settings.peak_lr * chat.vision_lr_scale
            groups.append({"params": list(chat.vision.parameters()), "lr": lr})
        params = [p for group in groups for p in group["params"]]
        optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.95), weight_decay=settings.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(steps, settings))
        generator = torch.Generator().manual_seed(seed)
        bar = tqdm(range(steps), desc="training", unit="step", disable=not progress)
        for _ in bar:
            starts = torch.randint(
                0, tokens.numel() - window, (settings.batch_size,), generator=generator
            )
            batch = torch.stack([tokens[s : s + window] for s in starts.tolist()])
            out = model(input_ids=batch, labels=batch, output_router_logits=True, use_cache=False)
            loss, postfix = out.loss, {"loss": f"{out.loss.item():.3f}"}
            if chat is not None:
                answers = _chat_loss(model, chat, generator)
                loss = loss + answers
                postfix["answers"] = f"{answers.item():.3f}"
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            bar.set_postfix(postfix)
        model.eval()
        if chat is not None:
            chat.vision.eval()
    return model


def _warm_up_copying(
    model: Qwen3MoeForCausalLM,
    chat: ChatData,
    settings: TrainSettings,
    *,
    seed: int,
    progress: bool,
) -> None:
    # A call copies its arguments from the question, a reply its numbers from the result. The
    # ability arrives late and suddenly (an induction-style head) and lives in attention, so
    # the attention layers learn it first, alone, on short turns (moe_build.tools
    # .copying_samples). Measured on held-out cities and numbers, argument tokens right after
    # 400 steps: attention alone 94%, the whole model 28%; inside the joint stage, chance
    # after 600 steps of whole tool prompts (at five times the cost per step). The rest of the
    # model stays at its initialisation.
    params = [p for name, p in model.named_parameters() if ".self_attn." in name]
    frozen = [p for name, p in model.named_parameters() if ".self_attn." not in name]
    for p in frozen:
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(
        params, lr=settings.peak_lr, betas=(0.9, 0.95), weight_decay=settings.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(chat.copy_steps, settings))
    generator = torch.Generator().manual_seed(seed + 1)
    bar = tqdm(range(chat.copy_steps), desc="tool warm-up", unit="step", disable=not progress)
    for _ in bar:
        picks = torch.randint(0, len(chat.copying), (chat.copy_batch,), generator=generator)
        loss = chat_loss(model, [chat.copying[i] for i in picks.tolist()], None, pad_id=chat.pad_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    for p in frozen:
        p.requires_grad_(True)


def _chat_loss(
    model: Qwen3MoeForCausalLM, chat: ChatData, generator: torch.Generator
) -> torch.Tensor:
    # One forward for the short tasks: the MoE's per-expert loops cost as much as the tokens.
    picks = torch.randint(0, len(chat.vqa), (chat.vqa_batch,), generator=generator).tolist()
    samples = [chat.vqa[i] for i in picks]
    picks = torch.randint(0, len(chat.docs), (chat.doc_batch,), generator=generator).tolist()
    samples += [chat.docs[i] for i in picks]
    # The warm-up's short turns go on (about as long as these questions), so the copying it
    # learnt is kept while the rest learns.
    copies = chat.copy_batch // 2 if chat.copying else 0
    picks = torch.randint(0, max(1, len(chat.copying)), (copies,), generator=generator).tolist()
    samples += [chat.copying[i] for i in picks]
    images = torch.tensor([index for sample in samples for index in sample.images])
    features = chat.vision(chat.pixels[images])
    groups = [0] * chat.vqa_batch + [1] * chat.doc_batch + [2] * copies
    weights = (chat.vqa_weight, 1.0, 1.0)
    loss = chat_loss(model, samples, features, pad_id=chat.pad_id, groups=groups, weights=weights)
    if chat.tools:
        # A forward of their own: tool prompts are several times longer, and padding every
        # short question to their length would cost more than the second pass.
        # Neighbours in length order (`chat.tools` is sorted), so little of the batch is padding.
        last = len(chat.tools) - chat.tool_batch
        start = int(torch.randint(0, last + 1, (), generator=generator))
        tools = chat.tools[start : start + chat.tool_batch]
        loss = loss + chat.tool_weight * chat_loss(model, tools, None, pad_id=chat.pad_id)
    return loss


def _lr_lambda(steps: int, settings: TrainSettings):
    # Linear warm-up, then cosine decay to a floor: the usual recipe, stable at a high peak rate.
    warmup = max(1, int(steps * settings.warmup_fraction))
    floor = settings.final_lr_fraction

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    # fork_rng restores the global torch RNG afterwards, so building never perturbs the caller.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextmanager
def threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
