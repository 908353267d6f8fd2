"""The CPU profile's `llmapi` model: NVIDIA's LLM-API tensors over the CPU MoE engine, so that the
gateway's llmapi protocol is tested against a real Triton without a GPU."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.local import paths
from gateway.local.trtllm import fill

LLMAPI_CPU_VALUES = {
    "llmapi_model_name": "llmapi",
    "llmapi_engine_model": "tensorrt_llm",
    "llmapi_multimodal": "false",
}


def add_llmapi_model(repository: Path, templates: Path | None = None) -> Path:
    """Write the `llmapi` model into a filled CPU repository (beside its `tensorrt_llm`)."""
    templates = (templates or paths.templates_dir()).resolve()
    marker = json.loads((repository / ".localmoe.json").read_text())
    values = {**marker["values"], **LLMAPI_CPU_VALUES}
    return fill.write_model(repository, templates / "llmapi", values, name="llmapi")
