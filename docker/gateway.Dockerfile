# syntax=docker/dockerfile:1
# The LocalMoE gateway: the `localmoe` CLI and the FastAPI app, nothing of torch or Triton.
#   docker build -f docker/gateway.Dockerfile -t ghcr.io/localmoe/gateway:0.1.0 .
# tests/ops/test_chart.py runs this file's install and command lines' equivalents for real.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY moe_engine moe_engine
COPY build/moe_build build/moe_build
COPY model_repository model_repository
# The project's own dependencies only (pyproject.toml `dependencies`): no extra.
RUN pip install . && rm -rf /src

RUN groupadd --gid 10001 localmoe && useradd --uid 10001 --gid 10001 --create-home localmoe
USER 10001:10001
WORKDIR /home/localmoe

EXPOSE 8080
# The chart runs `localmoe serve --config /etc/localmoe/config.yaml --workers N` instead.
CMD ["localmoe", "serve", "--host", "0.0.0.0", "--port", "8080"]
