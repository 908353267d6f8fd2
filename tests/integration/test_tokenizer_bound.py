"""`PromptTokenizer.bound`: a cheap upper bound on a prompt's token count, which lets the gateway
skip exact tokenisation when the bound already fits the context; and, end to end, that skipping
it changes neither the reported usage nor the context-length errors."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers.processors import TemplateProcessing

from gateway.core.tokenizer import PromptTokenizer
from tests.gateway_fixtures import GatewayProcess, context_length

TEXTS = {
    "empty": "",
    "ascii": "Hello, world! How are you today?",
    "spaces": " leading and  double  spaces\n\tand tabs ",
    "long repeated": "the quick brown fox jumps over the lazy dog. " * 400,
    "cjk": "日本語のテキストと中文文本와 한국어",
    "emoji": "🙂👍🏽👨‍👩‍👧‍👦🇫🇷" * 3,
    "combining marks": "e\u0301a\u0300o\u0308n\u0303" * 5 + "Z\u0351\u0352\u0353\u0354",
    "special tokens": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<|endoftext|>",
    "specials back to back": "<|im_end|><|im_start|>" * 20,
    "nfc expands: devanagari qa": "\u0958" * 10,
    "nfc expands: musical note": "\U0001d160" * 10,
    "control characters": "\x00\x01\x7f\u200b\ufeff",
}


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir: Path) -> PromptTokenizer:
    """The tiny model's own tokenizer."""
    return PromptTokenizer.from_dir(tiny_model_dir)


def _byte_tokenizer(
    normalizer: normalizers.Normalizer | None = None, *, add_prefix_space: bool = False
) -> Tokenizer:
    """A byte-level BPE without merges: one token per byte of the normalised text, the worst
    case the bound must cover."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tokenizer.decoder = decoders.ByteLevel()
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    return tokenizer


@pytest.mark.parametrize("add_special_tokens", [False, True])
@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_bound_is_at_least_the_count_for_the_tiny_model(
    tiny_tokenizer: PromptTokenizer, text: str, add_special_tokens: bool
) -> None:
    bound = tiny_tokenizer.bound(text, add_special_tokens=add_special_tokens)
    count = tiny_tokenizer.count(text, add_special_tokens=add_special_tokens)
    assert bound is not None and bound >= count


@pytest.mark.parametrize("add_prefix_space", [False, True])
@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_bound_covers_one_token_per_byte_with_or_without_a_prefix_space(
    text: str, add_prefix_space: bool
) -> None:
    tokenizer = PromptTokenizer(_byte_tokenizer(add_prefix_space=add_prefix_space))
    bound = tokenizer.bound(text, add_special_tokens=False)
    count = tokenizer.count(text, add_special_tokens=False)
    assert bound is not None and bound >= count


def test_bound_covers_the_special_tokens_the_tokenizer_adds() -> None:
    tokenizer = _byte_tokenizer()
    tokenizer.add_special_tokens(["<s>", "</s>"])
    tokenizer.post_processor = TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 256), ("</s>", 257)]
    )
    prompt = PromptTokenizer(tokenizer)
    for text in ("", "a", "abc def"):
        count = prompt.count(text, add_special_tokens=True)
        assert count == len(text.encode()) + 2
        assert (prompt.bound(text, add_special_tokens=True) or 0) >= count
    # Without them, the bound does not pay for them either.
    assert prompt.bound("abc", add_special_tokens=False) == 3 + 1


@pytest.mark.parametrize(
    "normalizer",
    [normalizers.NFKC(), normalizers.NFKD(), normalizers.Lowercase()],
    ids=["NFKC", "NFKD", "Lowercase"],
)
def test_no_bound_when_the_normalizer_can_grow_the_text_without_a_small_limit(
    normalizer: normalizers.Normalizer,
) -> None:
    tokenizer = PromptTokenizer(_byte_tokenizer(normalizer))
    # NFKC turns this one 3-byte character into 18 code points.
    assert tokenizer.bound("\ufdfa", add_special_tokens=False) is None
    assert tokenizer.count("\ufdfa", add_special_tokens=False) >= 1


@pytest.mark.parametrize("add_prefix_space", [False, True])
def test_bound_covers_nfc_tripling_the_text(add_prefix_space: bool) -> None:
    tokenizer = PromptTokenizer(
        _byte_tokenizer(normalizers.NFC(), add_prefix_space=add_prefix_space)
    )
    text = "\U0001d160" * 10  # 4 bytes each; NFC makes 3 four-byte code points of each
    count = tokenizer.count(text, add_special_tokens=False)
    assert count >= 3 * len(text.encode())  # the expansion is real
    assert (tokenizer.bound(text, add_special_tokens=False) or 0) >= count
    for other in ("\u0958" * 10, "e\u0301" * 10, "plain ascii"):
        assert (tokenizer.bound(other, add_special_tokens=False) or 0) >= tokenizer.count(
            other, add_special_tokens=False
        )


def test_bound_covers_a_prefix_space_before_every_piece_between_added_tokens() -> None:
    tokenizer = _byte_tokenizer(add_prefix_space=True)
    tokenizer.add_special_tokens([AddedToken("~", special=True, normalized=False)])
    prompt = PromptTokenizer(tokenizer)
    text = "~}" * 20  # 40 bytes: "~", "Ġ", "}" twenty times over
    count = prompt.count(text, add_special_tokens=False)
    assert (prompt.bound(text, add_special_tokens=False) or 0) >= count


# --- end to end: the gateway skips counting when the bound fits -----------------------------

MESSAGES = [
    {"role": "system", "content": "You answer briefly. Réponds brièvement. 简短回答。"},
    {"role": "user", "content": "What does the json module do? 🙂 \u0958\U0001d160"},
]


def test_chat_usage_counts_the_prompt_the_same_with_and_without_max_tokens(
    client: openai.OpenAI, model_id: str
) -> None:
    # With max_tokens the bound fits and the count comes from Triton; without it the gateway
    # counts exactly to size the budget. A stop string ends both answers early.
    common = {"model": model_id, "messages": MESSAGES, "temperature": 0, "stop": [" "]}
    bounded = client.chat.completions.create(**common, max_tokens=8).usage
    counted = client.chat.completions.create(**common).usage
    assert bounded is not None and counted is not None
    assert bounded.prompt_tokens == counted.prompt_tokens > 20


def test_completion_usage_counts_the_prompt_the_same_with_and_without_max_tokens(
    client: openai.OpenAI, model_id: str
) -> None:
    common = {"model": model_id, "prompt": MESSAGES[1]["content"], "temperature": 0}
    bounded = client.completions.create(**common, max_tokens=8, stop=[" "]).usage
    counted = client.completions.create(**common, stop=[" "]).usage
    assert bounded is not None and counted is not None
    assert bounded.prompt_tokens == counted.prompt_tokens > 5


def test_prompt_plus_max_tokens_over_the_context_is_still_context_length_exceeded(
    client: openai.OpenAI,
    gateway: GatewayProcess,
    model_id: str,
    tiny_tokenizer: PromptTokenizer,
) -> None:
    context = context_length(gateway, model_id)
    prompt = " the" * (context * 3 // 4)  # fits alone: one token per word
    tokens = tiny_tokenizer.count(prompt, add_special_tokens=True)
    assert tokens < context
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model_id, prompt=prompt, max_tokens=context - tokens + 1)
    assert info.value.status_code == 400
    assert info.value.code == "context_length_exceeded"
    assert isinstance(info.value.body, dict)
    assert f"({tokens} in the prompt" in info.value.body["message"]  # the exact count


def test_prompt_whose_bound_exceeds_the_context_but_whose_count_fits_is_served(
    client: openai.OpenAI,
    gateway: GatewayProcess,
    model_id: str,
    tiny_tokenizer: PromptTokenizer,
) -> None:
    context = context_length(gateway, model_id)
    prompt = " the" * (context // 2)  # 4 bytes a token: the bound is 4 times the count
    tokens = tiny_tokenizer.count(prompt, add_special_tokens=True)
    bound = tiny_tokenizer.bound(prompt, add_special_tokens=True)
    assert bound is not None and bound + 4 > context >= tokens + 4
    reply = client.completions.create(model=model_id, prompt=prompt, max_tokens=4, temperature=0)
    assert reply.usage is not None and reply.usage.prompt_tokens == tokens
    assert reply.usage.completion_tokens <= 4
