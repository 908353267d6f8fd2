"""Guided decoding and top logprobs in the engine, on the tiny model and its real tokenizer."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import torch

from moe_engine import Engine, EngineConfig, SamplingParams
from moe_engine.guided import Grammars, GuidedRows
from moe_engine.python_backend.text import encode, load_tokenizer
from moe_engine.sampler import Sampler
from tests.engine_support import Collector

VOCAB = 4098  # the tiny model's: 4096 BPE tokens and the two tool-call tags
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
PALETTE = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
        "size": {
            "type": "object",
            "properties": {"w": {"type": "integer", "minimum": 0, "maximum": 9}},
            "required": ["w"],
            "additionalProperties": False,
        },
    },
    "required": ["color", "tags", "size"],
    "additionalProperties": False,
}
CHAT = "<|im_start|>user\nDescribe it as JSON.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[Engine]:
    engine = Engine.from_pretrained(tiny_model_dir, EngineConfig(max_batch_size=4, num_threads=1))
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def prompt(tiny_model_dir: Path) -> list[int]:
    return encode(load_tokenizer(str(tiny_model_dir)), CHAT)


def params(engine: Engine, guide: tuple[str, str] | None = None, **kwargs) -> SamplingParams:
    kwargs.setdefault("max_new_tokens", 96)
    kwargs.setdefault("temperature", 0)
    return SamplingParams(end_ids=engine.eos_token_ids, guide=guide, **kwargs)


def submit_all(
    engine: Engine, prompt: list[int], requests: list[SamplingParams]
) -> list[Collector]:
    """Submit before the engine runs, so they are prefilled and decoded in one batch."""
    collectors = [Collector() for _ in requests]
    for i, (p, c) in enumerate(zip(requests, collectors, strict=True)):
        engine.submit(f"r{i}-{id(c)}", prompt, p, c)
    engine.start()
    return [c.wait() for c in collectors]


def text(tiny_model_dir: Path, tokens: list[int]) -> str:
    return load_tokenizer(str(tiny_model_dir)).tokenizer.decode(tokens)


def schema_guide(schema: dict) -> tuple[str, str]:
    return ("json_schema", json.dumps(schema))


def test_json_schema_output_parses_and_validates(engine, prompt, tiny_model_dir) -> None:
    (out,) = submit_all(engine, prompt, [params(engine, schema_guide(PERSON))])
    assert out.outputs[-1].finish_reason == "stop"
    jsonschema.validate(json.loads(text(tiny_model_dir, out.tokens)), PERSON)


@pytest.fixture
def fresh(tiny_model_dir: Path) -> Iterator[Engine]:
    """Not started: what is submitted before `submit_all` starts it shares every step."""
    engine = Engine.from_pretrained(tiny_model_dir, EngineConfig(max_batch_size=4, num_threads=1))
    yield engine
    engine.shutdown()


def test_two_schemas_in_one_batch_do_not_leak_masks(engine, fresh, prompt, tiny_model_dir) -> None:
    alone = [
        submit_all(engine, prompt, [params(engine, schema_guide(s))])[0].tokens
        for s in (PERSON, PALETTE)
    ]
    together = submit_all(
        fresh, prompt, [params(fresh, schema_guide(PERSON)), params(fresh, schema_guide(PALETTE))]
    )
    for schema, out, tokens in zip((PERSON, PALETTE), together, alone, strict=True):
        jsonschema.validate(json.loads(text(tiny_model_dir, out.tokens)), schema)
        assert out.tokens == tokens  # greedy: the same as alone, whatever shares the batch


def test_unguided_request_beside_a_guided_one_is_untouched(engine, fresh, prompt) -> None:
    (alone,) = submit_all(engine, prompt, [params(engine, max_new_tokens=24)])
    beside, _ = submit_all(
        fresh, prompt, [params(fresh, max_new_tokens=24), params(fresh, schema_guide(PERSON))]
    )
    assert beside.tokens == alone.tokens


def test_json_guide_gives_a_json_object(engine, prompt, tiny_model_dir) -> None:
    (out,) = submit_all(engine, prompt, [params(engine, ("json", ""), max_new_tokens=200)])
    if out.outputs[-1].finish_reason == "stop":
        assert isinstance(json.loads(text(tiny_model_dir, out.tokens)), dict)
    else:  # an object can go on for ever; what came so far must still be its start
        assert text(tiny_model_dir, out.tokens).startswith("{")


def test_regex_guide_output_matches(engine, prompt, tiny_model_dir) -> None:
    pattern = r"(yes|no), [0-9]{2}"
    (out,) = submit_all(engine, prompt, [params(engine, ("regex", pattern))])
    assert out.outputs[-1].finish_reason == "stop"
    assert re.fullmatch(pattern, text(tiny_model_dir, out.tokens))


def test_ebnf_guide_output_is_in_the_language(engine, prompt, tiny_model_dir) -> None:
    grammar = 'root ::= "A" ("b" | "c")+ "."'
    (out,) = submit_all(engine, prompt, [params(engine, ("ebnf_grammar", grammar))])
    assert re.fullmatch(r"A[bc]+\.", text(tiny_model_dir, out.tokens))


@pytest.mark.parametrize(
    ("guide", "words"),
    [
        (("json_schema", '{"type": "nope"}'), "nope"),
        (("json_schema", "{not json"), "not JSON"),
        (("json_schema", ""), "empty"),
        (("regex", "[a-"), "regex"),
        (("xml", "<a/>"), "unknown guided_decoding_guide_type"),
    ],
)
def test_invalid_guide_is_refused_at_submit(engine, prompt, guide, words) -> None:
    with pytest.raises(ValueError, match=r"^invalid guide:") as raised:
        engine.submit("bad", prompt, params(engine, guide), Collector())
    assert words in str(raised.value)


def test_a_guide_is_compiled_once_and_the_cache_is_bounded(tiny_model_dir) -> None:
    grammars = Grammars(tiny_model_dir, VOCAB, cache_size=2)
    for _ in range(3):
        grammars.matcher(*schema_guide(PERSON))
    assert grammars.compiled == 1
    grammars.matcher(*schema_guide(PALETTE))
    grammars.matcher("regex", "[0-9]+")
    assert grammars.cached() == 2
    grammars.matcher(*schema_guide(PERSON))  # evicted, least recently used
    assert grammars.compiled == 4


def test_end_ids_are_allowed_only_where_the_grammar_accepts(tiny_model_dir) -> None:
    grammars = Grammars(tiny_model_dir, VOCAB)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    end = tokenizer.eos_ids[0]
    matcher = grammars.matcher("regex", "[0-9]+")
    rows = GuidedRows(VOCAB, 2, grammars.eos_tokens())
    logits = torch.zeros(1, VOCAB)
    rows.apply(logits, [(0, matcher, (end,))])
    allowed = (logits[0] > -float("inf")).nonzero().flatten().tolist()
    assert end not in allowed
    assert all(tokenizer.tokenizer.decode([t]).isdigit() for t in allowed)
    matcher.consume_token(encode(tokenizer, "7")[0])
    logits = torch.zeros(1, VOCAB)
    rows.apply(logits, [(0, matcher, (end,))])
    assert logits[0, end] == 0  # accepting now


def test_masks_of_two_rows_are_each_their_own(tiny_model_dir) -> None:
    grammars = Grammars(tiny_model_dir, VOCAB)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    digits, letters = grammars.matcher("regex", "[0-9]+"), grammars.matcher("regex", "[a-z]+")
    logits = torch.zeros(3, VOCAB)
    GuidedRows(VOCAB, 4, grammars.eos_tokens()).apply(logits, [(0, digits, ()), (2, letters, ())])
    decode = tokenizer.tokenizer.decode
    assert all(decode([t]).isdigit() for t in (logits[0] == 0).nonzero().flatten().tolist())
    assert all(decode([t]).isalpha() for t in (logits[2] == 0).nonzero().flatten().tolist())
    assert bool((logits[1] == 0).all())  # the unguided row between them


def test_top_logprobs_are_sorted_and_agree_with_a_full_softmax() -> None:
    torch.manual_seed(0)
    sampler = Sampler(num_slots=2, vocab_size=50)
    sampler.assign(0, SamplingParams(8, temperature=0.7, num_logprobs=5, seed=1), torch.tensor([1]))
    sampler.assign(1, SamplingParams(8, temperature=0, num_logprobs=20), torch.tensor([1]))
    logits = torch.randn(2, 50)
    sampled = sampler.sample(logits.clone(), 0, 2)
    for row, (k, temperature) in enumerate(((5, 0.7), (20, 1.0))):
        ids, values = sampled.top[row]
        assert len(ids) == len(values) == k
        assert values == sorted(values, reverse=True)
        full = (logits[row] / temperature).log_softmax(-1)
        assert ids == full.argsort(descending=True)[:k].tolist()
        assert values == pytest.approx(full[ids].tolist(), abs=1e-5)
    assert sampled.top[1][0][0] == sampled.tokens[1]  # greedy picks the best


def test_engine_returns_top_logprobs_per_token(engine, prompt) -> None:
    (out,) = submit_all(
        engine, prompt, [params(engine, max_new_tokens=8, num_logprobs=4, ignore_eos=True)]
    )
    assert len(out.tops) == len(out.tokens) == 8
    for token, (ids, values) in zip(out.tokens, out.tops, strict=True):
        assert ids[0] == token and len(ids) == 4
        assert values == sorted(values, reverse=True)


def test_num_logprobs_over_twenty_is_refused(engine, prompt) -> None:
    with pytest.raises(ValueError, match="num_logprobs"):
        engine.submit("many", prompt, params(engine, num_logprobs=21), Collector())


def test_structural_tag_constrains_the_tagged_part(tiny_model_dir) -> None:
    tag = {
        "structures": [{"begin": "<tool>", "schema": PERSON, "end": "</tool>"}],
        "triggers": ["<tool>"],
    }
    grammars = Grammars(tiny_model_dir, VOCAB)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    matcher = grammars.matcher("structural_tag", json.dumps(tag))
    assert matcher.consume_tokens(encode(tokenizer, "Sure. <tool>"))
    assert not matcher.try_consume_tokens(encode(tokenizer, "hello"))  # JSON must follow
    with pytest.raises(ValueError, match=r"^invalid guide: structural_tag"):
        grammars.matcher("structural_tag", '{"structures": []}')


def test_the_gateways_tool_tag_forces_a_listed_name_and_compact_schema_arguments(
    tiny_model_dir,
) -> None:
    from gateway.core.structured import tool_tag

    city = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tag = tool_tag({"get_weather": city, "get_time": city})
    grammars = Grammars(tiny_model_dir, VOCAB)
    tokenizer = load_tokenizer(str(tiny_model_dir))

    def fresh():
        matcher = grammars.matcher("structural_tag", json.dumps(tag))
        assert matcher.consume_tokens(encode(tokenizer, "Let me look. <tool_call>"))
        return matcher

    matcher = fresh()
    call = '\n{"name": "get_weather", "arguments": {"city":"Paris"}}\n</tool_call>'
    assert matcher.consume_tokens(encode(tokenizer, call))
    assert matcher.is_accepting()  # free text may follow, or the end
    wrong_name = encode(tokenizer, '\n{"name": "search"')
    assert fresh().try_consume_tokens(wrong_name) < len(wrong_name)
    spaced = encode(tokenizer, '\n{"name": "get_time", "arguments": { "city"')
    assert fresh().try_consume_tokens(spaced) < len(spaced)  # compact, as json_schema is


def test_a_trigger_that_is_an_added_token_is_matched_as_that_token(tiny_model_dir) -> None:
    # The tiny model writes `<tool_call>` as one added token (as Qwen's tokenizers do), and
    # llguidance treats added tokens as special: text alone would never match it.
    from gateway.core.structured import tool_tag

    city = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    grammars = Grammars(tiny_model_dir, VOCAB)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city":"Paris"}}\n</tool_call>'
    ids = encode(tokenizer, call)
    assert ids[0] == tokenizer.tokenizer.token_to_id("<tool_call>")
    assert ids[-1] == tokenizer.tokenizer.token_to_id("</tool_call>")

    matcher = grammars.matcher("structural_tag", json.dumps(tool_tag({"get_weather": city})))

    assert matcher.consume_tokens(ids) and matcher.is_accepting()


def test_free_text_cannot_start_a_tool_call_where_the_tag_is_a_token(tiny_model_dir) -> None:
    # tool_choice "none" on a tagged template (gateway.core.structured.FREE_TEXT).
    from gateway.core.structured import FREE_TEXT

    grammars = Grammars(tiny_model_dir, VOCAB)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    matcher = grammars.matcher("regex", FREE_TEXT)

    assert matcher.consume_tokens(encode(tokenizer, 'It is sunny.\n{"city": "Paris"} </a>'))
    assert matcher.is_accepting()
    tag = tokenizer.tokenizer.token_to_id("<tool_call>")
    assert matcher.try_consume_tokens([tag]) == 0
