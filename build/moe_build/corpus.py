"""The tiny model's training text: prose from Python standard-library docstrings, offline."""

from __future__ import annotations

import ast
import functools
import random
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# The model trains on ~0.5M tokens; more text only slows the tokenizer and the corpus walk.
MAX_CORPUS_CHARS = 1_500_000

# Folders whose docstrings are tests, demos or vendored code rather than API prose.
_SKIPPED_DIRS = frozenset(
    {"site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "ensurepip"}
)
_MIN_PARAGRAPH_CHARS = 40
_MAX_ANSWER_CHARS = 400
_PROSE_CHARS = re.compile(r"[A-Za-z ,.'\-]")
_QUESTIONS = (
    "{name}?",
    "What does {name} do?",
    "What is {name}?",
    "Explain {name}.",
    "Tell me about {name}.",
)
_SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass(frozen=True)
class Doc:
    """One documented object: its dotted name and its prose paragraphs (first = summary)."""

    name: str
    paragraphs: tuple[str, ...]


@dataclass(frozen=True)
class Corpus:
    """Plain documents for the tokenizer and ChatML-formatted samples for the language model."""

    tokenizer_texts: list[str]
    training_texts: list[str]


def build_corpus(stdlib: Path | None = None, *, progress: bool = True) -> Corpus:
    """Collect docstring prose and wrap it as plain text and as ChatML question/answer pairs.

    The result depends only on the standard library on disk, never on a seed, so every seed
    shares one tokenizer; the training order is shuffled later by the seeded trainer.
    """
    docs = stdlib_docs(stdlib or Path(sysconfig.get_paths()["stdlib"]), progress=progress)
    tokenizer_texts: list[str] = []
    training_texts: list[str] = []
    # A fixed-seed generator picks question phrasings, so the corpus is identical across builds.
    rng = random.Random(0)
    size = 0
    for doc in docs:
        body = "\n\n".join(doc.paragraphs)
        question = rng.choice(_QUESTIONS).format(name=doc.name)
        answer = _first_sentences(doc.paragraphs[0], _MAX_ANSWER_CHARS)
        system = _SYSTEM_PROMPT if rng.random() < 0.25 else None
        tokenizer_texts += [body, question]
        training_texts += [body + ENDOFTEXT, chatml(question, answer, system=system)]
        size += len(body) + len(question) + len(answer)
        if size >= MAX_CORPUS_CHARS:
            break
    return Corpus(tokenizer_texts=tokenizer_texts, training_texts=training_texts)


def chatml(question: str, answer: str, *, system: str | None = None) -> str:
    """One ChatML conversation exactly as the chat template renders it, plus the answer."""
    turns = [] if system is None else [f"{IM_START}system\n{system}{IM_END}\n"]
    turns.append(f"{IM_START}user\n{question}{IM_END}\n")
    turns.append(f"{IM_START}assistant\n{answer}{IM_END}\n")
    return "".join(turns)


def stdlib_docs(stdlib: Path, *, progress: bool = True) -> list[Doc]:
    """Docstrings of every module, class and function under `stdlib`, in a stable order.

    Identical paragraphs (inherited boilerplate such as "Return self==value.") are kept once.
    """
    return list(_stdlib_docs_cached(stdlib.resolve(), progress))


@functools.cache
def _stdlib_docs_cached(stdlib: Path, progress: bool) -> tuple[Doc, ...]:
    # Cached because the walk parses ~1,800 files and the standard library does not change
    # within a process (the test suite builds several models in one process).
    files = sorted(stdlib.rglob("*.py"))
    files = [p for p in files if not _SKIPPED_DIRS.intersection(p.relative_to(stdlib).parts)]
    seen: set[str] = set()
    docs: list[Doc] = []
    for path in tqdm(files, desc="corpus", unit="file", disable=not progress):
        module = ".".join(path.relative_to(stdlib).with_suffix("").parts).removesuffix(".__init__")
        for name, docstring in _docstrings(path, module):
            paragraphs = []
            for paragraph in _prose_paragraphs(docstring):
                if paragraph not in seen:
                    seen.add(paragraph)
                    paragraphs.append(paragraph)
            if paragraphs:
                docs.append(Doc(name=name, paragraphs=tuple(paragraphs)))
    return tuple(docs)


def _docstrings(path: Path, module: str) -> Iterator[tuple[str, str]]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    yield from _walk(tree, module)


_Documented = ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef


def _walk(node: _Documented, qualname: str) -> Iterator[tuple[str, str]]:
    # Depth-first in source order (not ast.walk's breadth-first) so names read like the source.
    docstring = ast.get_docstring(node, clean=True)
    if docstring:
        yield qualname, docstring
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if child.name.startswith("_") and not child.name.startswith("__"):
                continue
            yield from _walk(child, f"{qualname}.{child.name}")


def _prose_paragraphs(docstring: str) -> Iterator[str]:
    """Paragraphs that read as English sentences; code, tables and signatures are dropped."""
    for block in re.split(r"\n\s*\n", docstring):
        if ">>>" in block or "::" in block or block.lstrip().startswith(("-", "*", ":", "|")):
            continue
        text = " ".join(block.split())  # unwrap hard line breaks into one line
        if len(text) < _MIN_PARAGRAPH_CHARS or not text[0].isupper():
            continue
        if len(_PROSE_CHARS.findall(text)) < 0.9 * len(text):
            continue
        yield text


def _first_sentences(paragraph: str, limit: int) -> str:
    """The paragraph cut after the last sentence end that fits in `limit` characters."""
    if len(paragraph) <= limit:
        return paragraph
    cut = paragraph.rfind(". ", 0, limit)
    return paragraph[: cut + 1] if cut > 0 else paragraph[:limit].rsplit(" ", 1)[0] + "."
