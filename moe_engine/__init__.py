"""CPU inference engine for Mixture-of-Experts LLMs with a KV cache and in-flight batching.

A plain library (no Triton imports): the Triton Python-backend model wraps `Engine`.
"""

from .config import EngineConfig, ModelConfig
from .engine import Engine, EngineStats, StepOutput
from .sampler import SamplingParams

__all__ = ["Engine", "EngineConfig", "EngineStats", "ModelConfig", "SamplingParams", "StepOutput"]
