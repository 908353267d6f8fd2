"""Turning checkpoints into servable models; `build.tiny` generates the embedded default."""
