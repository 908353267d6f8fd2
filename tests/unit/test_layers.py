"""The layers import downwards only: api → core → (policy, triton) → (errors, settings), with
`local` (running things on this machine) beside them, and `moe_engine` (what runs inside
Triton) knowing nothing of the gateway. docs/architecture.md draws the same map."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE = {"gateway.errors", "gateway.settings"}

# Each package (or module) and the project modules it may import, by prefix.
ALLOWED: dict[str, set[str]] = {
    "gateway": set(),
    "gateway.errors": set(),
    "gateway.settings": set(),
    "gateway.logs": BASE,
    "gateway.policy": BASE | {"gateway.policy"},
    "gateway.triton": BASE | {"gateway.triton", "gateway.core.backend"},
    "gateway.core": BASE | {"gateway.core", "gateway.policy", "gateway.images"},
    # Image guards, decoding and the SSRF-safe fetch: Pillow, httpx and the standard library only,
    # so the Triton preprocessing model can use the same guards as the gateway.
    "gateway.images": {"gateway.images"},
    "gateway.api": BASE | {"gateway.api", "gateway.core", "gateway.policy", "gateway.triton"},
    "gateway.local": BASE | {"gateway.local", "moe_build"},
    "gateway.server": BASE | {"gateway.api", "gateway.local", "gateway.logs", "gateway.policy"},
    "gateway.cli": BASE | {"gateway.local", "gateway.policy", "gateway.server", "moe_build"},
    "moe_engine": {"moe_engine"},
    # The one exception: the same image guards as the gateway (a leaf module, Pillow only).
    "moe_engine.python_backend": {"moe_engine", "gateway.images.decode"},
    # The engine knows nothing of Triton; the Python-backend logic builds on the engine.
    "moe_engine.engine": {
        "moe_engine.config",
        "moe_engine.model",
        "moe_engine.sampler",
        "moe_engine.weights",
        "moe_engine.kv_cache",
    },
    "moe_build": {"moe_build", "moe_engine"},
}
PROJECT = ("gateway", "moe_engine", "moe_build", "bench", "tests")


def _modules() -> list[tuple[str, Path]]:
    found = []
    for package, folder in (("gateway", "gateway"), ("moe_engine", "moe_engine")):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "model_repository" in path.parts:
                continue
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found.append((name, path))
    for path in sorted((ROOT / "build" / "moe_build").rglob("*.py")):
        found.append((f"moe_build.{path.stem}".removesuffix(".__init__"), path))
    return found


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in PROJECT}


def _rule(module: str) -> set[str]:
    best = max((key for key in ALLOWED if module == key or module.startswith(key + ".")), key=len)
    return ALLOWED[best]


def _allowed(name: str, rule: set[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in rule) or any(
        prefix.startswith(name + ".")
        for prefix in rule  # `from gateway.core import backend`
    )


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_module_imports_only_from_its_own_or_lower_layers(module: str, path: Path) -> None:
    rule = _rule(module)
    wrong = sorted(name for name in _imports(path) if not _allowed(name, rule))
    assert not wrong, f"{module} imports {wrong}"
