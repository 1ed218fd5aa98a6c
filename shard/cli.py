"""Command lines.

prism-shard serve MODEL_DIR --uds-path PATH [--dtype float32|float16|bfloat16]
    [--attention-backend reference|sdpa|triton|flash-attn|auto] [--num-blocks N | --memory-fraction F]
    [--block-size 16] [--device cpu|cuda] [--json-output] [--logger-level INFO] [--enforce-eager]
    [--cuda-graphs 1,2,4,...|0] [--load-format safetensors|dummy]
    [--otlp-endpoint URL] [--otlp-service-name NAME] [--cpu-threads N]
    [--kv-host-tokens N] [--kv-disk-tokens N --kv-disk-path DIR]
        (env KV_HOST_TOKENS, KV_DISK_TOKENS, KV_DISK_PATH)
prism-shard bench [--model tiny,100m] [--arch llama] [--workdir DIR] [--cpu-threads N] [--model-dir DIR]
    [--dtype D] [--vs-transformers] [--device cpu|cuda] [--load-format safetensors|dummy]
text-generation-server serve MODEL_ID [TGI's flags]      (so TGI's launcher can start this shard)
text-generation-server download-weights MODEL_ID         (no-op for a local folder)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from pathlib import Path

from shard.config import DTYPES, LOAD_FORMATS, ShardConfig

SWITCH_INTERVAL_S = 0.0005

TGI_QUANTIZE = (
    "bitsandbytes",
    "bitsandbytes-nf4",
    "bitsandbytes-fp4",
    "gptq",
    "awq",
    "compressed-tensors",
    "eetq",
    "exl2",
    "fp8",
    "marlin",
)


def _common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--uds-path", default="/tmp/text-generation-server")
    p.add_argument("--dtype", choices=DTYPES)
    p.add_argument("--logger-level", default="INFO")
    p.add_argument("--json-output", action="store_true")
    p.add_argument("--otlp-endpoint")
    p.add_argument("--otlp-service-name", help="default: OTEL_SERVICE_NAME, else text-generation-inference.server")


def graph_sizes(text: str) -> tuple[int, ...]:
    """TGI's --cuda-graphs value: a comma list of batch sizes; "0" (or empty) captures none."""
    sizes = tuple(int(x) for x in text.split(",") if x.strip())
    if any(s < 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 0, got {text!r}")
    return tuple(sorted({s for s in sizes if s > 0}))


def _load_format_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--load-format", choices=LOAD_FORMATS, default="safetensors",
                   help="dummy: random weights from the config alone, no checkpoint read (benchmarks, as vLLM)")


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a local HF model folder over generate.v3 gRPC")
    p.add_argument("model_dir")
    _common_flags(p)
    p.add_argument(
        "--attention-backend", default="auto", choices=["reference", "sdpa", "triton", "flash-attn", "auto"]
    )
    sizing = p.add_mutually_exclusive_group()
    sizing.add_argument("--num-blocks", type=int)
    sizing.add_argument("--memory-fraction", type=float)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--device", help="cpu or cuda[:i]; default cuda when available")
    p.add_argument("--enforce-eager", action="store_true", help="never capture CUDA graphs")
    p.add_argument("--cuda-graphs", type=graph_sizes, default=None, metavar="N,N,...",
                   help="decode batch sizes to capture as CUDA graphs (TGI's flag); 0: none, as --enforce-eager")
    _load_format_flag(p)
    p.add_argument(
        "--cpu-threads",
        type=int,
        help="torch intra-op threads on CPU (default: $PRISM_SHARD_THREADS, else every core for prompts of 256+ "
        "tokens and cores - 1 for smaller steps, or every core for every step past 32 MiB of weights on up to 4 "
        "cores)",
    )
    env = os.environ.get  # NOTE: argparse converts a string default with ``type``: a bad value is a usage error
    p.add_argument("--kv-host-tokens", type=int, default=env("KV_HOST_TOKENS") or "0",
                   help="host-memory KV tier, in tokens (pinned on CUDA); 0: none [env: KV_HOST_TOKENS]")
    p.add_argument("--kv-disk-tokens", type=int, default=env("KV_DISK_TOKENS") or "0",
                   help="disk KV tier, in tokens, under --kv-disk-path; 0: none [env: KV_DISK_TOKENS]")
    p.add_argument("--kv-disk-path", default=env("KV_DISK_PATH") or None,
                   help="directory of the disk KV tier's files [env: KV_DISK_PATH]")
    p.add_argument("--rope-factor", type=float,
                   help="linear RoPE scaling by this factor, replacing config.json's rope_scaling (TGI's flag)")


def _serve_config(args: argparse.Namespace) -> ShardConfig:
    """The serve command's settings, from its flags and the environment. Raises ValueError on a bad value."""
    from shard.tracing import otlp_endpoint, service_name

    rank, world = ShardConfig.env_rank()
    return ShardConfig(
        prefix_caching=ShardConfig.env_prefix_caching(),
        pool_floor=ShardConfig.env_pool_floor(),
        model_dir=args.model_dir,
        uds_path=args.uds_path,
        dtype=args.dtype,
        device=getattr(args, "device", None),
        attention_backend=getattr(args, "attention_backend", "auto"),
        num_blocks=getattr(args, "num_blocks", None),
        memory_fraction=getattr(args, "memory_fraction", None),
        block_size=getattr(args, "block_size", 16),
        enforce_eager=getattr(args, "enforce_eager", False) or getattr(args, "cuda_graphs", None) == (),
        cuda_graphs=getattr(args, "cuda_graphs", None) or None,
        load_format=getattr(args, "load_format", "safetensors"),
        cpu_threads=getattr(args, "cpu_threads", None),
        kv_host_tokens=getattr(args, "kv_host_tokens", 0),
        kv_disk_tokens=getattr(args, "kv_disk_tokens", 0),
        kv_disk_path=getattr(args, "kv_disk_path", None),
        rope_factor=getattr(args, "rope_factor", None),
        rank=rank,
        world_size=world,
        local_rank=ShardConfig.env_local_rank(),
        otlp_endpoint=otlp_endpoint(args.otlp_endpoint),
        otlp_service_name=service_name(args.otlp_service_name),
    )


def _run_serve(args: argparse.Namespace) -> None:
    from shard.logs import setup_logging

    setup_logging(args.logger_level, args.json_output)
    try:
        config = _serve_config(args)  # NOTE: a bad flag is one error line, not a traceback
    except ValueError as err:
        sys.exit(f"error: {err}")
    from shard.factory import build_service
    from shard.server import serve, serving_socket

    if serving_socket(config.socket_path):  # NOTE: before loading: its stale-file removal would cut that one off
        sys.exit(f"error: a running server already listens on {config.socket_path}; pass another --uds-path")
    try:
        service = build_service(config)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    # NOTE: the step's worker thread and the gRPC event loop share the GIL; a step waiting for it gets it after
    # 0.5 ms instead of Python's 5 (docs/performance.md, "The GIL's switch interval")
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    # NOTE: the ~180k objects of the loaded model and libraries leave the collector's generations: a full
    # collection scanned them all (58-82 ms measured) with the GIL held, the whole shard stalled
    # (docs/performance.md)
    gc.collect()
    gc.freeze()
    asyncio.run(serve(service, config))


def main(argv: list[str] | None = None) -> None:
    """``prism-shard``."""
    parser = argparse.ArgumentParser(prog="prism-shard", description="prism-serve model shard")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    b = sub.add_parser("bench", help="prefill/decode throughput and cached-prefill ratio on this machine")
    b.add_argument("--model", default="tiny,100m", help="comma-separated demo sizes")
    b.add_argument("--arch", default="llama", choices=["llama", "qwen3"])
    b.add_argument("--workdir", help="where demo models are built (default: a temp dir)")
    b.add_argument("--cpu-threads", type=int, help="torch intra-op threads (default: as the shard)")
    b.add_argument("--model-dir", help="bench this model folder instead of demo models")
    b.add_argument("--dtype", choices=DTYPES, help="default: as the shard picks it")
    b.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    _load_format_flag(b)
    b.add_argument(
        "--vs-transformers", action="store_true", help="also time a 2,001-token forward against transformers'"
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        _run_serve(args)
    else:
        from shard.bench import run_bench

        run_bench(
            args.model.split(","),
            args.arch,
            args.workdir,
            args.cpu_threads,
            args.model_dir,
            args.dtype,
            args.vs_transformers,
            args.device,
            args.load_format,
        )


def tgi_main(argv: list[str] | None = None) -> None:
    """``text-generation-server``: TGI's CLI surface; flags without meaning here are accepted and ignored."""
    parser = argparse.ArgumentParser(prog="text-generation-server")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("model_dir", metavar="MODEL_ID")
    _common_flags(s)
    s.add_argument("--revision")
    s.add_argument("--sharded", action="store_true")
    s.add_argument("--quantize", choices=TGI_QUANTIZE)
    s.add_argument("--speculate", type=int)
    s.add_argument("--kv-cache-dtype")
    s.add_argument("--trust-remote-code", action="store_true")
    s.add_argument("--max-input-tokens", type=int)
    d = sub.add_parser("download-weights")
    d.add_argument("model_dir", metavar="MODEL_ID")
    d.add_argument("--revision")
    d.add_argument("--extension")
    d.add_argument("--auto-convert", action="store_true")
    d.add_argument("--logger-level", default="INFO")
    d.add_argument("--json-output", action="store_true")
    d.add_argument("--trust-remote-code", action="store_true")
    d.add_argument("--merge-lora", action="store_true")
    args, _unknown = parser.parse_known_args(argv)
    if args.command == "download-weights":
        if not (Path(args.model_dir) / "config.json").is_file():
            sys.exit(f"error: {args.model_dir} is not a local model folder (this shard cannot download)")
        return
    if args.quantize:
        sys.exit(f"error: --quantize {args.quantize} is not supported by this shard")
    if args.speculate:
        sys.exit("error: --speculate is not supported by this shard")
    _run_serve(args)


if __name__ == "__main__":
    main()
