"""What LocalMoE's Triton Python-backend models do, as plain Python over a response sender:
the `tensorrt_llm` model's request handling and outbox, the BLS's text streams, tokenisation,
metrics and logging. Each `model_repository/*/1/model.py` only adapts Triton's callbacks to
these; the unit tests drive them with a Triton-like sender."""
