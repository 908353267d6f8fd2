"""Question/answer pairs from the standard library's docstrings: "What does the json module do?"

The answer is the summary of the module's or function's own docstring (its first sentence),
so the model's first words are about the thing asked. Every top-level public module, and the
first few public functions of a handful of everyday modules: a set small enough (about 200
pairs) for a three-minute run to see each pair a dozen times.
"""

from __future__ import annotations

import ast
import functools
import random
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from moe_build.chat import ChatSample, encode_chat, render_prompt

_SKIPPED = frozenset({"test", "tests", "idlelib", "lib2to3", "turtledemo", "ensurepip", "this"})
# Where the public name differs from the file (os.path is posixpath on this platform).
_ALIASES = {"posixpath": "os.path"}
_FUNCTIONS_PER_MODULE = 4
# Modules people ask about; os.path's functions live in posixpath's source.
_FUNCTION_MODULES = frozenset(
    {"json", "os", "posixpath", "re", "shutil", "subprocess", "textwrap", "glob", "fnmatch"}
    | {"tempfile", "base64", "copy", "heapq", "bisect", "functools"}
)
_MAX_SUMMARY_CHARS = 160
_MODULE_QUESTIONS = (
    "What does the {name} module do?",
    "What is the {name} module?",
    "What is {name} for?",
    "Tell me about the {name} module.",
)
_FUNCTION_QUESTIONS = (
    "What does {name} do?",
    "What is {name}?",
    "Explain {name}.",
    "What does the function {name} do?",
)


@dataclass(frozen=True)
class DocAnswer:
    """A documented name, whether it is a module, and its summary sentence."""

    name: str
    is_module: bool
    summary: str

    def question(self, rng: random.Random) -> str:
        phrasings = _MODULE_QUESTIONS if self.is_module else _FUNCTION_QUESTIONS
        return rng.choice(phrasings).format(name=self.name)


def doc_answers(stdlib: Path | None = None) -> list[DocAnswer]:
    """Every top-level public module with a docstring, then a few everyday modules' functions."""
    return list(_doc_answers_cached((stdlib or Path(sysconfig.get_paths()["stdlib"])).resolve()))


def doc_samples(
    tokenizer: Tokenizer, answers: list[DocAnswer], *, copies: int, seed: int
) -> list[ChatSample]:
    """`copies` samples per answer, each with a random phrasing of the question."""
    rng = random.Random(seed)
    return [
        encode_chat(tokenizer, render_prompt([doc.question(rng)]), doc.summary)
        for _ in range(copies)
        for doc in answers
    ]


def first_words(text: str, count: int = 3) -> tuple[str, ...]:
    """The first `count` words, lower-cased and without punctuation: the match criterion."""
    return tuple(re.findall(r"[a-z0-9]+", text.lower())[:count])


def summary(docstring: str) -> str | None:
    """The first sentence of the first paragraph, unwrapped; None when it is not prose."""
    paragraph = " ".join(re.split(r"\n\s*\n", docstring.strip())[0].split())
    if len(paragraph) < 12 or not paragraph[0].isupper() or ">>>" in paragraph:
        return None
    match = re.search(r"(?<=[a-z0-9)\]])\.(\s|$)", paragraph)
    sentence = paragraph[: match.start() + 1] if match else paragraph
    if len(sentence) > _MAX_SUMMARY_CHARS:
        sentence = sentence[:_MAX_SUMMARY_CHARS].rsplit(" ", 1)[0] + "..."
    return sentence


@functools.cache
def _doc_answers_cached(stdlib: Path) -> tuple[DocAnswer, ...]:
    modules: list[DocAnswer] = []
    functions: list[DocAnswer] = []
    for name, path in _top_level_modules(stdlib):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        public = _ALIASES.get(name, name)
        text = ast.get_docstring(tree)
        if text and (line := summary(text)):
            modules.append(DocAnswer(public, True, line))
        picked = 0 if name in _FUNCTION_MODULES else _FUNCTIONS_PER_MODULE
        for node in tree.body:
            if picked == _FUNCTIONS_PER_MODULE:
                break
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            text = ast.get_docstring(node)
            if text and (line := summary(text)):
                functions.append(DocAnswer(f"{public}.{node.name}", False, line))
                picked += 1
    return tuple(modules + functions)


def _top_level_modules(stdlib: Path) -> list[tuple[str, Path]]:
    out = []
    for path in sorted(stdlib.iterdir()):
        if path.name.startswith("_") or path.name in _SKIPPED or path.stem in _SKIPPED:
            continue
        if path.suffix == ".py":
            out.append((path.stem, path))
        elif path.is_dir() and (path / "__init__.py").is_file() and path.name.isidentifier():
            out.append((path.name, path / "__init__.py"))
    return out
