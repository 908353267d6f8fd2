"""The GPU profiles of `localmoe build repository`: TensorRT-LLM engines (`trtllm-engine`, the
legacy path pinned to TensorRT-LLM 1.2.1) and NVIDIA's LLM-API model (`trtllm-llmapi`).

`families` says which profile a checkpoint's architecture supports, `parallel` checks the
tensor/expert split, `engine` and `llmapi` write the repository (and the build commands).
Nothing here imports `tensorrt_llm`: the commands run in NVIDIA's container, or are printed.
"""
