"""The `localmoe` command line: build models, run Triton, run the gateway, mint tokens."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.local import paths
from gateway.local.trtllm.families import PROFILES


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `localmoe` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="localmoe", description=__doc__)
    sub = parser.add_subparsers(metavar="COMMAND")

    build = sub.add_parser("build", help="build a servable model")
    build_sub = build.add_subparsers(metavar="WHAT")
    tiny = build_sub.add_parser("tiny", help="generate the embedded tiny MoE checkpoint")
    tiny.add_argument("--out", type=Path, default=paths.default_model_dir())
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--steps", type=int, default=None, help="training steps (default: built-in)")
    tiny.add_argument(
        "--untrained",
        action="store_true",
        help="no training and no evaluation: the tokenizer, configs and initial weights, in "
        "seconds (what a gateway reads when Triton builds the model itself)",
    )
    tiny.add_argument("--force", action="store_true", help="rebuild even if present")
    tiny.set_defaults(func=_cmd_build_tiny)
    repo = build_sub.add_parser(
        "repository",
        help="fill the Triton model repository templates (CPU, TensorRT-LLM engine or LLM API)",
        description="cpu: the CPU MoE engine in pytriton's tritonserver. trtllm-engine: "
        "TensorRT-LLM 1.2.1 engines (convert_checkpoint + trtllm-build, run when tensorrt_llm "
        "is importable, else printed) behind the C++ tensorrtllm backend. trtllm-llmapi: "
        "NVIDIA's llmapi model (LLM API, PyTorch backend) with a model.yaml for the checkpoint.",
    )
    repo.add_argument("--model-dir", type=Path, default=paths.default_model_dir())
    repo.add_argument(
        "--out", type=Path, default=None, help="default: $LOCALMOE_HOME/repository/<profile>"
    )
    repo.add_argument("--profile", choices=list(PROFILES), default="cpu")
    repo.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a template value (repeatable; cpu profile)",
    )
    gpu = repo.add_argument_group("GPU profiles (trtllm-engine, trtllm-llmapi)")
    gpu.add_argument("--tp", type=_positive_int, default=1, help="tensor-parallel size")
    gpu.add_argument("--pp", type=_positive_int, default=1, help="pipeline-parallel size")
    gpu.add_argument(
        "--ep",
        type=_positive_int,
        default=None,
        help="MoE expert-parallel size (default tp/moe-tp)",
    )
    gpu.add_argument(
        "--moe-tp", type=_positive_int, default=None, help="MoE tensor-parallel size (tp/ep)"
    )
    gpu.add_argument(
        "--attention-dp", action="store_true", help="attention data parallelism (llmapi)"
    )
    gpu.add_argument(
        "--gpus", type=_positive_int, default=None, help="GPUs the deployment has (checked)"
    )
    gpu.add_argument("--max-batch-size", type=_positive_int, default=64)
    gpu.add_argument("--max-seq-len", type=_positive_int, default=None)
    gpu.add_argument("--max-num-tokens", type=_positive_int, default=8192)
    gpu.add_argument("--dtype", choices=["bfloat16", "float16"], default=None)
    gpu.add_argument(
        "--kv-cache-fraction", type=float, default=0.9, help="free GPU memory for the KV cache"
    )
    gpu.add_argument("--no-kv-cache-reuse", action="store_true", help="disable KV-cache reuse")
    gpu.add_argument(
        "--max-kv-cache-tokens",
        type=_positive_int,
        default=None,
        help="cap the KV cache at this many tokens (default: the memory fraction decides)",
    )
    gpu.add_argument(
        "--trtllm-src",
        type=Path,
        default=Path("TensorRT-LLM"),
        help="a TensorRT-LLM checkout (v1.2.1 for the engine path): examples/, triton_backend/",
    )
    gpu.add_argument("--engine-dir", type=Path, default=None, help="where the engine goes")
    gpu.add_argument(
        "--max-images",
        type=_positive_int,
        default=1,
        help="images per request a vision engine's prompt table holds (engine profile)",
    )
    gpu.add_argument(
        "--dry-run", action="store_true", help="print what would be written and run; do nothing"
    )
    repo.set_defaults(func=_cmd_build_repository)

    triton = sub.add_parser("triton", help="run a real tritonserver in the foreground")
    triton.add_argument(
        "--model-repository",
        type=Path,
        default=None,
        help="default: the CPU repository filled for the tiny model (as is a template folder)",
    )
    triton.add_argument("--host", default="127.0.0.1")
    triton.add_argument("--http-port", type=int, default=8000)
    triton.add_argument("--grpc-port", type=int, default=8001)
    triton.add_argument("--metrics-port", type=int, default=8002)
    triton.add_argument("--log-verbose", type=int, default=0)
    triton.set_defaults(func=_cmd_triton)

    serve = sub.add_parser("serve", help="run the OpenAI-compatible gateway in front of Triton")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="HTTP port (default 8080)")
    serve.add_argument(
        "--triton-url",
        action="append",
        default=None,
        metavar="HOST:GRPC_PORT",
        help="a Triton gRPC endpoint (repeatable: round robin; default 127.0.0.1:8001)",
    )
    serve.add_argument("--config", type=Path, default=None, help="YAML settings file")
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="worker processes (default 1); limits and cache are shared only with redis_url",
    )
    serve.set_defaults(func=_cmd_serve)

    up = sub.add_parser("up", help="build the tiny model if needed, start Triton and the gateway")
    up.add_argument("--host", default=None, help="gateway bind address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=None, help="gateway HTTP port (default 8080)")
    up.add_argument("--config", type=Path, default=None, help="YAML settings file")
    up.set_defaults(func=_cmd_up)

    token = sub.add_parser(
        "token",
        help="print a signed JWT for the gateway (last line of output)",
        description="Sign a token with the gateway's configured key (the development secret "
        "when none is configured). Claims: sub, tenant, models, rpm, tpm, exp.",
    )
    token.add_argument("--sub", required=True, help="subject: who calls (limits count per subject)")
    token.add_argument("--tenant", default=None, help="tenant: shared limits, private cache")
    token.add_argument(
        "--models", default=None, metavar="A,B", help="allowed model ids or patterns (default: all)"
    )
    token.add_argument("--rpm", type=_positive_int, default=None, help="requests per minute")
    token.add_argument("--tpm", type=_positive_int, default=None, help="tokens per minute")
    token.add_argument(
        "--ttl", default="1h", help="lifetime: 3600, 90s, 15m, 1h, 7d, 1h30m (default 1h)"
    )
    token.add_argument("--config", type=Path, default=None, help="YAML settings file")
    token.set_defaults(func=_cmd_token)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _cmd_build_tiny(args: argparse.Namespace) -> int:
    from moe_build.tiny import build_tiny_model

    if args.out.exists() and not args.force:
        print(f"model already present at {args.out} (use --force to rebuild)")
        return 0
    # SIGTERM (a pod or a service manager stopping it) cleans up as Ctrl-C does: no half-built
    # staging directory is left behind.
    signal.signal(signal.SIGTERM, _interrupt)
    if args.untrained:
        build_tiny_model(
            args.out, seed=args.seed, steps=0, vision_steps=0, tool_steps=0, evaluate=False
        )
    else:
        build_tiny_model(args.out, seed=args.seed, steps=args.steps)
    print(f"tiny MoE model written to {args.out}")
    return 0


def _cmd_build_repository(args: argparse.Namespace) -> int:
    from gateway.local.repository import TemplateError, fill_repository
    from gateway.local.trtllm.build import Request, build
    from gateway.local.trtllm.engine import BuildError

    out = args.out or (
        paths.default_repository_dir()
        if args.profile == "cpu"
        else paths.home() / "repository" / args.profile
    )
    if args.profile == "cpu":
        gpu_only = [f"--{n}" for n in ("tp", "pp") if getattr(args, n) != 1]
        gpu_only += [f"--{n.replace('_', '-')}" for n in ("ep", "moe_tp") if getattr(args, n)]
        if gpu_only or args.dry_run or args.attention_dp:
            print(
                f"error: {', '.join(gpu_only) or '--dry-run'}: GPU profiles only", file=sys.stderr
            )
            return 2
        overrides = dict(item.split("=", 1) for item in args.set)
        try:
            out = fill_repository(out, model_dir=args.model_dir, profile="cpu", overrides=overrides)
        except TemplateError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"model repository written to {out}")
        return 0
    if args.set:
        print("error: --set applies to the cpu profile", file=sys.stderr)
        return 2
    request = Request(
        profile=args.profile,
        model_dir=args.model_dir,
        out_dir=out,
        tp=args.tp,
        pp=args.pp,
        ep=args.ep,
        moe_tp=args.moe_tp,
        attention_dp=args.attention_dp,
        gpus=args.gpus,
        max_batch_size=args.max_batch_size,
        max_seq_len=args.max_seq_len,
        max_num_tokens=args.max_num_tokens,
        dtype=args.dtype,
        kv_cache_fraction=args.kv_cache_fraction,
        kv_cache_reuse=not args.no_kv_cache_reuse,
        max_kv_cache_tokens=args.max_kv_cache_tokens,
        trtllm_src=args.trtllm_src,
        engine_dir=args.engine_dir,
        max_images=args.max_images,
        dry_run=args.dry_run,
    )
    try:
        build(request, log=lambda line: print(line, flush=True))
    except (ValueError, BuildError) as exc:  # UnsupportedModel, ParallelError, TemplateError
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_triton(args: argparse.Namespace) -> int:
    from gateway.local.repository import TemplateError, ensure_default_repository, holds_templates
    from gateway.local.triton import TritonProcess, TritonStartError

    repository = args.model_repository
    try:
        if repository is None:
            repository = ensure_default_repository()
        elif holds_templates(repository):
            # Triton cannot parse `${…}`; the only thing such a folder can mean is "serve these".
            repository = ensure_default_repository(templates=repository)
            print(
                f"{args.model_repository} holds templates: serving them filled for the tiny "
                f"model from {repository} (`localmoe build repository` fills them for others)",
                flush=True,
            )
    except TemplateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    server = TritonProcess(
        repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_verbose=args.log_verbose,
        log_to_console=True,
    )
    # SIGTERM while Triton loads stops it like Ctrl-C would; `wait()` then forwards it instead.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.start()
        print(
            f"triton ready: grpc {server.grpc_url}  http {server.http_url}  "
            f"metrics {server.metrics_url}",
            flush=True,
        )
        return server.wait()
    except TritonStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        server.stop()
        return 130


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _cmd_serve(args: argparse.Namespace) -> int:
    from gateway.server import serve
    from gateway.settings import load_settings

    settings = load_settings(
        args.config, host=args.host, port=args.port, triton_urls=args.triton_url
    )
    return serve(settings, workers=args.workers)


def _cmd_up(args: argparse.Namespace) -> int:
    from gateway.server import up
    from gateway.settings import load_settings

    return up(load_settings(args.config, host=args.host, port=args.port))


def _cmd_token(args: argparse.Namespace) -> int:
    from gateway.policy import keys
    from gateway.policy.tokens import parse_ttl
    from gateway.settings import load_settings

    try:
        ttl = parse_ttl(args.ttl)
    except ValueError as exc:
        print(f"error: --ttl: {exc}", file=sys.stderr)
        return 2
    settings = load_settings(args.config)
    models = None
    if args.models is not None:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        token = keys.mint(
            settings,
            sub=args.sub,
            tenant=args.tenant,
            models=models,
            rpm=args.rpm,
            tpm=args.tpm,
            ttl_seconds=ttl,
        )
    except keys.KeyConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"# signed with the {keys.describe_key(settings)}; expires in {ttl}s", file=sys.stderr)
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
