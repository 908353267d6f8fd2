"""Benchmarks of LocalMoE against the real processes: the gateway, Triton directly, the LiteLLM
proxy, the response cache and the MoE engine (issue 5). Entry point: `bench.cli`."""
