"""Turning checkpoints into servable models; `moe_build.tiny` generates the embedded default."""
