"""The tiny model's tokenizer: a byte-level BPE trained locally, with ChatML special tokens."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)

from moe_build.corpus import ENDOFTEXT, IM_END, IM_START
from moe_engine.vision import IMAGE_TOKEN

# Ids 0, 1, 2, 3 in this order; the rest of the stack reads them from the saved files.
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, IMAGE_TOKEN)

# Qwen's tool-call tags (Hermes format): added tokens, not special ones, so a decoded answer
# keeps them for the gateway's tool-call parser.
TOOL_CALL_TAGS = ("<tool_call>", "</tool_call>")

# ChatML as Qwen writes it. List content (OpenAI "parts") keeps its text parts, and an image
# part (`image`, or OpenAI's `image_url`) becomes one <|image|>, joined by newlines as vLLM
# does; other part types are dropped; a null content renders as empty. With `tools`, a system
# turn lists each function as JSON (after the client's own system text; the model learnt the
# call format, so no instructions take up its short context); an assistant's `tool_calls`
# follow its content as Qwen writes them, one
# `<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>` each, the arguments as the client
# sent them; `tool` results are turns of their own role.
_CONTENT = (
    "{%- macro content(message) -%}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- elif message['content'] is not none -%}"
    "{%- for part in message['content'] | selectattr('type', 'in', ['text', 'image', 'image_url'])"
    " -%}"
    "{%- if not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- else -%}{{- '" + IMAGE_TOKEN + "' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
)
_TOOLS = (
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- content(messages[0]) + '\\n\\n' -}}"
    "{%- endif -%}"
    "{{- '# Tools\\n<tools>' -}}"
    "{%- for tool in tools -%}"
    "{{- '\\n' + ((tool['function'] if tool['function'] is defined else tool) | tojson) -}}"
    "{%- endfor -%}"
    "{{- '\\n</tools><|im_end|>\\n' -}}"
    "{%- endif -%}"
)
_CALLS = (
    "{%- if message['tool_calls'] -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set fn = call['function'] if call['function'] is defined else call -%}"
    "{%- if not loop.first or message['content'] -%}{{- '\\n' -}}{%- endif -%}"
    "{{- '<tool_call>\\n{\"name\": \"' + fn['name'] + '\", \"arguments\": ' -}}"
    "{%- if fn['arguments'] is string -%}{{- fn['arguments'] -}}"
    "{%- else -%}{{- fn['arguments'] | tojson(separators=(',', ':')) -}}{%- endif -%}"
    "{{- '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
)
CHAT_TEMPLATE = (
    _CONTENT + _TOOLS + "{%- for message in messages -%}"
    "{%- if not (loop.first and tools and message['role'] == 'system') -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content(message) -}}"
    + _CALLS
    + "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE on `texts`; every UTF-8 string encodes and decodes exactly."""
    tokenizer = Tokenizer(models.BPE())
    # A name or a number is the same tokens in a question and in the call that copies it:
    # the space before a capital is a token of its own (" Paris" is " " + "Paris", as in
    # '"Paris"'), and digits go one by one, as Qwen's tokenizer splits them. A tiny model
    # learns to copy a token far sooner than to map " Paris" to "Paris". No prefix space:
    # decode(encode(s)) must give back s byte for byte.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r" (?=[A-Z])"), behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        # The full byte alphabet, so bytes unseen in training (emoji, CJK) still encode.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,  # the build reports this phase through its own tqdm bar
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    # After training, so they take the last ids and BPE never merges across them.
    tags = [AddedToken(tag, special=False, normalized=False) for tag in TOOL_CALL_TAGS]
    tokenizer.add_tokens(tags)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, out_dir: Path, *, model_max_length: int) -> None:
    """Write `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json`."""
    tokenizer.save(str(out_dir / "tokenizer.json"), pretty=True)
    added_tokens_decoder = {
        str(tokenizer.token_to_id(token)): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token in SPECIAL_TOKENS
    } | {
        str(tokenizer.token_to_id(tag)): {
            "content": tag,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": False,
        }
        for tag in TOOL_CALL_TAGS
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added_tokens_decoder,
        "additional_special_tokens": [IM_START, IM_END, IMAGE_TOKEN],
        "image_token": IMAGE_TOKEN,
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "errors": "replace",
        "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,
    }
    special_tokens_map = {
        "additional_special_tokens": [IM_START, IM_END, IMAGE_TOKEN],
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
    }
    _write_json(out_dir / "tokenizer_config.json", config)
    _write_json(out_dir / "special_tokens_map.json", special_tokens_map)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
