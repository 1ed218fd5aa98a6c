"""``prism-launcher`` / ``text-generation-launcher``: one command that serves a model (tgi-compat 6).

It resolves the model (a local folder, a hub id downloaded when a network is there, or the built-in demo
model built once into a cache folder), starts ``NUM_SHARD`` shards (``prism-shard serve``, env ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``: the ranks of one tensor-parallel group, each on its
socket ``{uds}-{rank}``), waits for their socket files, then starts the router on them. With
``--data-parallel N`` it starts N such groups (replicas; sockets ``{uds}-dp{g}-{rank}``, port
``MASTER_PORT + g``, ``LOCAL_RANK = g * NUM_SHARD + rank``) and one router in front of them all. The shards
also get ``MAX_BATCH_PREFILL_TOKENS`` / ``MAX_TOTAL_TOKENS`` when given (a pool sized from memory must hold
them). A child that exits is restarted in place (not a tensor-parallel shard: with ``--num-shard`` > 1 a
shard that exits stops all) (up to
``--max-restarts`` times in a row, after 1, 2, 4... s, at most 30 s; the router then warms the new shard up
and serves its queue again); past that, or with ``--max-restarts 0`` (TGI's behaviour), the others are stopped
and the launcher exits non-zero. SIGTERM/SIGINT stop everything cleanly (router first, then the shards).
Every flag also reads its UPPER_SNAKE environment variable.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence

from prism_cache.tiers.types import TIER_POLICIES
from router_py import env
from router_py.cli import CACHE_POLICIES, SCHEDULERS, setup_logging
from router_py.kv_events.config import kv_events_arg
from router_py.launch.env_args import EnvArgs, parse_bool
from router_py.launch.model_source import ModelSourceError, resolve_model
from router_py.launch.process_group import GRACE_S, ProcessGroup, RestartPolicy, executable
from router_py.launch.runtime_env import describe, version_line
from router_py.tracing import service_name

# TGI's --quantize values (launcher and shard), accepted so that a TGI command line parses, then refused.
TGI_QUANTIZE = ("awq", "compressed-tensors", "eetq", "exl2", "gptq", "marlin", "bitsandbytes", "bitsandbytes-nf4",
                "bitsandbytes-fp4", "fp8")

log = logging.getLogger("router_py.launch.launcher")

# Launcher flags forwarded verbatim to the router when given (value flags, then boolean ones).
ROUTER_VALUE_FLAGS = (
    "max_input_tokens", "max_total_tokens", "max_batch_prefill_tokens", "max_batch_total_tokens",
    "max_concurrent_requests", "max_best_of", "max_stop_sequences", "max_top_n_tokens", "max_client_batch_size",
    "validation_workers",
    "waiting_served_ratio", "max_waiting_tokens", "max_batch_size", "api_key", "payload_limit",
    "otlp_endpoint", "otlp_service_name", "tenant_header", "scheduler", "cache_policy",
    "shard_recovery_timeout", "api_keys_file", "kv_events_config", "kv_tier_policy",
)
ROUTER_BOOL_FLAGS = ("json_output", "no_prefix_cache", "disable_grammar_support")
# Router budgets the shards also read (TGI's variable names), to size a KV pool from memory.
SHARD_BUDGET_FLAGS = ("max_batch_prefill_tokens", "max_total_tokens")
# TGI launcher options this stack does not have: as flags argparse refuses them ("unrecognized arguments"),
# and as variables check_args refuses them too, rather than serve without what the deployment asked for.
UNSUPPORTED_TGI_VARIABLES = ("SPECULATE", "KV_CACHE_DTYPE", "LORA_ADAPTERS",
                             "WATERMARK_GAMMA", "WATERMARK_DELTA", "TOKENIZER_CONFIG_PATH",
                             "WEIGHTS_CACHE_OVERRIDE", "NGROK")


def build_parser() -> argparse.ArgumentParser:
    p = EnvArgs(argparse.ArgumentParser(prog="prism-launcher", description=__doc__.split("\n\n")[0]))
    p.parser.add_argument("-V", "--version", action="version", version=version_line())
    p.parser.add_argument("-e", "--env", action="store_true",
                          help="log the runtime environment (versions, platform, CPUs, GPUs) at start "
                               "(TGI's flag)")
    p.add("--model-id", default=None, help="local folder or hub id; default: the built-in demo model")
    p.add("--revision", default=None)
    p.add("--huggingface-hub-cache", default=None,
          help="the Hugging Face cache a hub id is found in or downloaded to")
    p.add("--num-shard", type=int, default=1,
          help="tensor-parallel ranks of the model, each on its own device (docs/tensor-parallel.md)")
    p.add("--sharded", type=parse_bool, default=None, metavar="BOOL",
          help="TGI's flag: true needs --num-shard > 1 (devices are not counted for it), false needs 1")
    p.add("--data-parallel", type=int, default=1,
          help="replicas (shard groups of --num-shard ranks each) behind one cache-aware router "
               "(docs/data-parallel.md); alias --data-parallel-size (vLLM's name)")
    p.parser.add_argument("--data-parallel-size", dest="data_parallel", type=int, help=argparse.SUPPRESS)
    p.add("--port", "-p", type=int, default=3000)
    p.add("--hostname", default="0.0.0.0")
    p.add("--shard-uds-path", default="/tmp/text-generation-server")
    p.add("--master-addr", default="localhost")
    p.add("--master-port", type=int, default=29500)
    # ---- shard ----
    p.add("--num-blocks", type=int, default=None, help="KV blocks per shard (default: sized from memory)")
    p.add("--block-size", type=int, default=None)
    p.add("--dtype", default=None)
    p.add("--attention-backend", default=None)
    p.add("--cuda-graphs", default=None, metavar="N,N,...",
          help="decode batch sizes the shard captures as CUDA graphs (TGI's flag); 0: none")
    p.add("--enforce-eager", action="store_true", help="never capture CUDA graphs (vLLM's flag)")
    p.add("--rope-scaling", choices=("linear", "dynamic"), default=None,
          help="RoPE scaling replacing config.json's, by --rope-factor (default 1; TGI's flag); dynamic is refused")
    p.add("--rope-factor", type=float, default=None, help="alone: linear RoPE scaling by this factor (TGI's flag)")
    p.add("--load-format", choices=("safetensors", "dummy"), default=None,
          help="dummy: random weights from config.json alone, no checkpoint read (benchmarks; vLLM's flag)")
    p.add("--logger-level", default=shard_log_level(),
          help="the shards' log level; default: LOG_LEVEL's (TGI)")
    p.add("--startup-timeout", type=float, default=600.0, help="seconds to wait for the shards' sockets")
    p.add("--max-restarts", type=int, default=5,
          help="restarts in a row of a dead shard or router before giving up (0: stop everything, as TGI)")
    p.add("--shard-recovery-timeout", type=float, default=None,
          help="seconds queued requests wait for a restarted shard before the router refuses them")
    # ---- router (forwarded) ----
    for flag, kind in (
        ("--max-input-tokens", int), ("--max-total-tokens", int), ("--max-batch-prefill-tokens", int),
        ("--max-batch-total-tokens", int), ("--max-concurrent-requests", int), ("--max-best-of", int),
        ("--max-stop-sequences", int), ("--max-top-n-tokens", int), ("--max-client-batch-size", int),
        ("--max-waiting-tokens", int), ("--max-batch-size", int), ("--payload-limit", int),
        ("--validation-workers", int),
    ):
        p.add(flag, type=kind, default=None)
    p.add("--waiting-served-ratio", type=float, default=0.3)
    p.add("--api-key", default=None)
    p.add("--otlp-endpoint", default=None)
    p.add("--otlp-service-name", default=None,
          help="given to the router and the shards; default: OTEL_SERVICE_NAME, else TGI's router name")
    p.add("--cors-allow-origin", action="append", default=None)
    p.add("--tenant-header", default=None)
    p.add("--api-keys-file", default=None, help="TENANT KEY [SHARE] per line (see the router's flag)")
    p.add("--json-output", action="store_true")
    p.add("--disable-grammar-support", action="store_true")
    p.add("--scheduler", choices=SCHEDULERS, default=None)
    p.add("--cache-policy", choices=CACHE_POLICIES, default=None)
    p.add("--no-prefix-cache", action="store_true")
    p.add("--prefix-caching", type=parse_bool, default=None, metavar="BOOL",
          help="TGI's PREFIX_CACHING: 0/false turns the prefix cache off (as --no-prefix-cache)")
    p.add("--cuda-memory-fraction", type=float, default=None,
          help="fraction of the device's free memory (after the weights) the shard's KV pool takes")
    p.add("--quantize", choices=TGI_QUANTIZE, default=None,
          help="accepted for TGI compatibility; this shard has no quantized kernels, so any value is refused")
    # ---- TGI flags taken as TGI takes them, or with nothing for them to do here ----
    p.add("--max-input-length", type=int, default=None, help="TGI's former name of --max-input-tokens")
    p.add("--graceful-termination-timeout", type=float, default=GRACE_S,
          help="seconds each child gets to stop after SIGTERM before SIGKILL")
    p.add("--disable-custom-kernels", action="store_true",
          help="shards run torch's own ops: no compiled CPU kernels (PRISM_CPU_DECODE_KERNEL=0) and the sdpa "
               "attention backend unless --attention-backend names one")
    p.add("--enable-prefill-logprobs", action="store_true",
          help="accepted for TGI compatibility; no effect: prompt log-probabilities (decoder_input_details) are "
               "always served")
    p.add("--trust-remote-code", action="store_true",
          help="accepted for TGI compatibility; no effect: the shard's loaders run no code from the model folder")
    p.add("--usage-stats", choices=("on", "off", "no-stack"), default="on",
          help="accepted for TGI compatibility; no effect: prism-serve collects and sends no usage statistics")
    p.add("--prometheus-port", type=int, default=9000,
          help="accepted for TGI compatibility; /metrics is served on --port (TGI's separate listener serves "
               "nothing either)")
    p.add("--scheduler-param", action="append", default=None, metavar="KEY=VALUE")
    p.add("--kv-events-config", type=kv_events_arg, default=None, metavar="JSON",
          help="vLLM's flag, passed to the router: publish KV cache events over ZMQ (docs/kv-events.md)")
    # ---- KV tiers (docs/kv-tiers-wire.md) ----
    p.add("--kv-host-tokens", type=int, default=None, help="host-memory KV tier per shard, in tokens")
    p.add("--kv-disk-tokens", type=int, default=None, help="disk KV tier per shard, in tokens")
    p.add("--kv-disk-path", default=None, help="directory of the disk KV tier")
    p.add("--kv-tier-policy", choices=TIER_POLICIES, default=None, help="dart (default), hotprefix or lru-offload")
    return p.parser


def shard_log_level() -> str:
    """``LOG_LEVEL`` as a plain level name (TGI's launcher starts its shards at the level it logs at), else
    INFO."""
    level = env.log_level()
    return level if level in ("DEBUG", "INFO", "WARN", "WARNING", "ERROR") else "INFO"


def check_args(args: argparse.Namespace) -> str | None:
    """The launcher's own argument rules (TGI's launcher refuses these before starting anything); the error
    message, or None."""
    if args.data_parallel < 1 or args.num_shard < 1:
        return f"`--data-parallel` and `--num-shard` must be >= 1. Given: {args.data_parallel} and {args.num_shard}"
    if args.sharded is not None and args.sharded != (args.num_shard > 1):
        sharded = str(args.sharded).lower()
        return (f"`--sharded {sharded}` (SHARDED) does not match `--num-shard {args.num_shard}`: sharded needs "
                "--num-shard > 1 (this launcher does not count the devices for it), unsharded 1")
    if args.max_input_tokens is not None and args.max_input_length is not None:
        return ("give `--max-input-tokens` (MAX_INPUT_TOKENS) or its former name `--max-input-length` "
                f"(MAX_INPUT_LENGTH), not both. Given: {args.max_input_tokens} and {args.max_input_length}")
    max_input = args.max_input_tokens if args.max_input_tokens is not None else args.max_input_length
    if max_input is not None and args.max_total_tokens is not None and max_input >= args.max_total_tokens:
        return f"`max_input_tokens`({max_input}) must be < `max_total_tokens`({args.max_total_tokens})"
    unsupported = [name for name in UNSUPPORTED_TGI_VARIABLES if env.flag_value(name)]
    if unsupported:
        flags = ", ".join(f"{n}={env.flag_value(n)!r} (--{n.lower().replace('_', '-')})" for n in unsupported)
        return f"not supported by this launcher: {flags}; unset it to serve without it"
    if args.rope_scaling == "dynamic":
        return ("`--rope-scaling dynamic` (ROPE_SCALING) is not supported: dynamic NTK rescales every position by "
                "the batch's longest sequence, so a cached prefix would stop matching; use linear (--rope-factor)")
    if args.rope_factor is not None and not args.rope_factor > 0:
        return f"`--rope-factor` must be positive. Given: {args.rope_factor}"
    if args.quantize is not None:
        return (f"`--quantize {args.quantize}` (QUANTIZE) is not supported: this shard has no quantized kernels; "
                "serve an unquantized checkpoint (--dtype float16/bfloat16) instead")
    if args.cuda_memory_fraction is not None:
        if not 0 < args.cuda_memory_fraction <= 1:
            return f"`--cuda-memory-fraction` must be in (0, 1]. Given: {args.cuda_memory_fraction}"
        if args.num_blocks is not None:
            return "give --num-blocks or --cuda-memory-fraction (CUDA_MEMORY_FRACTION), not both"
    total, batch_total = args.max_total_tokens, args.max_batch_total_tokens
    if batch_total is not None and total is not None and total > batch_total:
        return f"`max_total_tokens` must be <= `max_batch_total_tokens`. Given: {total} and {batch_total}"
    return None


def group_uds_path(args: argparse.Namespace, group: int) -> str:
    """The socket path prefix of replica ``group``'s ranks: ``--shard-uds-path`` itself with one replica (TGI's
    names), else ``{uds}-dp{group}``; rank r listens on ``{prefix}-{r}``."""
    return args.shard_uds_path if args.data_parallel == 1 else f"{args.shard_uds_path}-dp{group}"


def shard_command(args: argparse.Namespace, model_dir: str, group: int = 0) -> list[str]:
    cmd = [executable("prism-shard"), "serve", model_dir, "--uds-path", group_uds_path(args, group),
           "--logger-level", args.logger_level, "--otlp-service-name", service_name(args.otlp_service_name)]
    for name in ("num_blocks", "block_size", "dtype", "attention_backend", "load_format", "cuda_graphs",
                 "otlp_endpoint", "kv_host_tokens", "kv_disk_tokens", "kv_disk_path"):
        value = getattr(args, name)
        if name == "attention_backend" and value is None and args.disable_custom_kernels:
            value = "sdpa"
        if name == "kv_disk_path" and value is not None and args.data_parallel > 1:
            value = f"{value}/dp{group}"  # NOTE: a replica's disk tier clears and reuses its own files only
        if value is not None:
            cmd += [f"--{name.replace('_', '-')}", str(value)]
    if args.cuda_memory_fraction is not None:
        cmd += ["--memory-fraction", str(args.cuda_memory_fraction)]
    cmd += ["--enforce-eager"] if args.enforce_eager else []
    if args.rope_scaling is not None or args.rope_factor is not None:  # TGI: either alone means linear
        cmd += ["--rope-factor", str(args.rope_factor if args.rope_factor is not None else 1.0)]
    return cmd + (["--json-output"] if args.json_output else [])


THP_ALLOC = "THP_MEM_ALLOC_ENABLE"  # read by torch once, at its first allocation: only a process env works
CPU_KERNELS = "PRISM_CPU_DECODE_KERNEL"  # flash_kernels.backends.cpu_decode.ENV: 0 builds no CPU kernel


def shard_env(args: argparse.Namespace, rank: int, group: int = 0) -> dict[str, str]:
    """A rank's environment; replica ``group`` gets its own torch.distributed port (``--master-port`` + group)
    and, with several replicas, LOCAL_RANK ``group * num_shard + rank``: its device index on CUDA."""
    child = {
        **env.inherited(), "RANK": str(rank), "WORLD_SIZE": str(args.num_shard),
        "MASTER_ADDR": args.master_addr, "MASTER_PORT": str(args.master_port + group),
    }
    # torch's CPU allocator then backs tensors of 2 MB and more (the KV pool) with transparent huge pages: a
    # 16-token block of the peer model is one 4 KB page, and a decode step walks thousands of them.
    child.setdefault(THP_ALLOC, "1")
    if args.disable_custom_kernels:
        child[CPU_KERNELS] = "0"
    if args.data_parallel > 1:
        child["LOCAL_RANK"] = str(group * args.num_shard + rank)
    else:
        child.pop("LOCAL_RANK", None)  # NOTE: not a parent's (torchrun, SLURM): TGI's rank-only device choice
    # NOTE: set either way, so that --prefix-caching on the command line wins over an inherited
    # PREFIX_CACHING; with 0 the shard reports use_prefix_caching=false in Info (TGI)
    child["PREFIX_CACHING"] = "1" if prefix_caching(args) else "0"
    for name in SHARD_BUDGET_FLAGS:  # NOTE: a pool sized from memory must hold what these need, no more
        if getattr(args, name) is not None:
            child[name.upper()] = str(getattr(args, name))
    split = replica_threads(args)
    if split is not None:
        child[env.SHARD_THREADS] = str(split[0])
    return child


def replica_threads(args: argparse.Namespace) -> tuple[int, str] | None:
    """With several replicas, each CPU shard's torch threads and why: the cores but one (the router's, as
    with one replica) split evenly among the ``--data-parallel`` x ``--num-shard`` shards, so the replicas
    do not oversubscribe the CPU (each would take every core). None with one replica (the shard's own rule)
    or when ``PRISM_SHARD_THREADS`` is set (it wins). CUDA shards ignore it."""
    shards = args.data_parallel * args.num_shard
    if args.data_parallel == 1 or env.shard_threads() is not None:
        return None
    cores = env.cpu_cores()
    share = max(1, (cores - 1) // shards)
    return share, f"{cores} cores, one left to the router, the rest split among {shards} shards"


def prefix_caching(args: argparse.Namespace) -> bool:
    return not args.no_prefix_cache and args.prefix_caching is not False


def router_command(args: argparse.Namespace, model_dir: str, model_id: str) -> list[str]:
    if args.data_parallel == 1:
        shards = ["--master-shard-uds-path", f"{args.shard_uds_path}-0"]
    else:
        shards = [a for g in range(args.data_parallel)
                  for a in ("--replica-shard-uds-path", f"{group_uds_path(args, g)}-0")]
    cmd = [sys.executable, "-m", "router_py.cli", *shards, "--tokenizer-name", model_dir,
           "--served-model-name", model_id, "--hostname", args.hostname, "--port", str(args.port)]
    for name in ROUTER_VALUE_FLAGS:
        value = service_name(args.otlp_service_name) if name == "otlp_service_name" else getattr(args, name)
        if name == "max_input_tokens" and value is None:
            value = args.max_input_length
        if value is not None:
            cmd += [f"--{name.replace('_', '-')}", str(value)]
    cmd += [f"--{n.replace('_', '-')}" for n in ROUTER_BOOL_FLAGS if getattr(args, n)]
    if not prefix_caching(args) and not args.no_prefix_cache:
        cmd.append("--no-prefix-cache")
    for origin in args.cors_allow_origin or []:
        cmd += ["--cors-allow-origin", origin]
    for param in args.scheduler_param or []:
        cmd += ["--scheduler-param", param]
    return cmd


def socket_paths(args: argparse.Namespace) -> list[str]:
    return [f"{group_uds_path(args, g)}-{rank}" for g in range(args.data_parallel) for rank in range(args.num_shard)]


def serving_socket(path: str) -> bool:
    """Whether a process accepts connections on the Unix socket ``path``: a live shard, not a stale file."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def wait_for_sockets(group: ProcessGroup, paths: Sequence[str], timeout_s: float) -> None:
    """Block until every shard's socket file exists (TGI's readiness rule). Raises RuntimeError when a shard
    dies first, when the launcher is asked to stop, or on timeout."""
    deadline = time.monotonic() + timeout_s
    while not all(os.path.exists(p) for p in paths):
        if group.stopping:
            raise RuntimeError("stopped while waiting for the shards")
        dead = group.first_exited()
        if dead is not None:
            raise RuntimeError(f"{dead.name} exited with code {dead.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"shards not ready after {timeout_s:.0f} s: no socket at {', '.join(paths)}")
        time.sleep(0.1)


def run(args: argparse.Namespace) -> int:
    error = check_args(args)
    if error is not None:
        log.error("%s", error)
        return 1
    if args.env:
        log.info("runtime environment:\n%s", describe())
    if args.trust_remote_code:
        log.info("--trust-remote-code has no effect: the shard's loaders run no code from the model folder")
    try:
        model_dir, model_id = resolve_model(args.model_id, args.revision, args.huggingface_hub_cache)
    except ModelSourceError as e:
        log.error("%s", e)
        return 1
    paths = socket_paths(args)
    # NOTE: TGI's launcher deletes the file even then; the other server's router would then reach our shard
    busy = [path for path in paths if os.path.exists(path) and serving_socket(path)]
    if busy:
        log.error("a running shard already serves %s (another launcher?); give this one its own --shard-uds-path",
                  ", ".join(busy))
        return 1
    group = ProcessGroup(args.graceful_termination_timeout)
    previous = {sig: signal.signal(sig, lambda signum, frame: group.request_stop(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    for path in paths:
        if os.path.exists(path):
            os.unlink(path)  # NOTE: a stale socket would look ready
    split = replica_threads(args)
    if split is not None:
        log.info("data parallel: %d CPU threads per shard (%s; %s=N sets it)", split[0], split[1],
                 env.SHARD_THREADS)
    try:
        for g in range(args.data_parallel):
            for rank in range(args.num_shard):
                name = f"shard-{rank}" if args.data_parallel == 1 else f"shard-dp{g}-{rank}"
                log.info("starting %s", name)
                # NOTE: tensor-parallel ranks share a process group that a restarted rank cannot rejoin
                group.spawn(name, shard_command(args, model_dir, g), shard_env(args, rank, g),
                            restartable=args.num_shard == 1)
        wait_for_sockets(group, paths, args.startup_timeout)
        log.info("shards ready; starting the router on %s:%d", args.hostname, args.port)
        group.spawn("router", router_command(args, model_dir, model_id), env.inherited())
        return group.supervise(RestartPolicy(max_restarts=max(args.max_restarts, 0)))
    except RuntimeError as e:
        if not group.stopping:
            log.error("%s", e)
        return 0 if group.stopping else 1
    finally:
        group.shutdown()
        remove_sockets(paths)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def remove_sockets(paths: Sequence[str]) -> None:
    """Delete the socket files our stopped shards leave (a shard dies on SIGTERM without unlinking its
    socket); one that something still serves is left alone."""
    for path in paths:
        if os.path.exists(path) and not serving_socket(path):
            os.unlink(path)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.json_output)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
