# syntax=docker/dockerfile:1
# Triton on CPU: pytriton's tritonserver, LocalMoE's PyTorch MoE engine and the tiny model, built
# into the image (the chart's default cpu profile).
#   docker build -f docker/triton-cpu.Dockerfile -t ghcr.io/localmoe/triton-cpu:0.1.0 .
# tests/ops/test_chart.py runs this file's `localmoe` lines for real.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LOCALMOE_HOME=/opt/localmoe

# torch first and pinned, from PyTorch's CPU index (PyPI's Linux wheel carries CUDA); the same pin
# as the Makefile's `make install`.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY moe_engine moe_engine
COPY build/moe_build build/moe_build
COPY model_repository model_repository
RUN pip install ".[cpu]" && rm -rf /src

RUN groupadd --gid 10001 localmoe && useradd --uid 10001 --gid 10001 --create-home localmoe \
    && mkdir -p /opt/localmoe && chown 10001:10001 /opt/localmoe
USER 10001:10001
WORKDIR /home/localmoe

# The engine's intra-op threads are written into the repository: match the pod's CPU request
# (the chart's default is 2 CPUs: 1 thread, as docs/triton.md measured).
ARG ENGINE_NUM_THREADS=1
RUN localmoe build tiny --out /opt/localmoe/models/tiny-moe
RUN localmoe build repository --model-dir /opt/localmoe/models/tiny-moe --out /opt/localmoe/repository/cpu --set engine_num_threads=${ENGINE_NUM_THREADS}

EXPOSE 8000 8001 8002
ENTRYPOINT ["localmoe", "triton", "--host", "0.0.0.0", "--model-repository", "/opt/localmoe/repository/cpu"]
