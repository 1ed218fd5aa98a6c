"""Wire a shard from its config: device, dtype, attention backend, model, KV pool, runner, servicer."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import torch

from flash_kernels.api import get_backend
from shard import step_thread
from shard.config import ShardConfig
from shard.cpu_affinity import pin_cpus
from shard.cpu_features import native_bf16
from shard.kv_cache import KVCache, KVShape, choose_num_blocks
from shard.kv_tiers.tiers import KvTiers, TierSizes
from shard.loader import decoder_config, load_model
from shard.models.llama import DecoderConfig
from shard.model_runner import CpuThreads, ModelRunner
from shard.server import TextGenerationService
from shard.tensor_parallel import check_divisible, init_tensor_parallel

log = logging.getLogger(__name__)
THREADS_ENV = "PRISM_SHARD_THREADS"


def pick_device(config: ShardConfig) -> torch.device:
    """``--device``, else cuda when available, else cpu; given plain cuda, a rank with LOCAL_RANK takes
    cuda:LOCAL_RANK (the launcher's --data-parallel groups: group g's rank r is g * ranks + r), else a
    tensor-parallel rank takes cuda:RANK (one device per rank, as TGI's shards). Raises ValueError when that
    device does not exist."""
    name = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    index = host_slot(config)
    if name != "cuda" or index is None:
        return torch.device(name)
    if index >= torch.cuda.device_count():
        raise ValueError(f"this shard needs cuda:{index} (one device per rank and replica: --num-shard x "
                         f"--data-parallel), but {torch.cuda.device_count()} CUDA device(s) are visible")
    return torch.device(f"cuda:{index}")


def pick_dtype(config: ShardConfig, device: torch.device) -> tuple[torch.dtype, str]:
    """Weights and KV dtype, and why: ``--dtype``; else bf16 on CUDA and on CPUs with native bf16
    (AVX512-BF16 / AMX), fp32 on other CPUs (emulated bf16 matmuls are slower than fp32 there)."""
    if config.dtype:
        return getattr(torch, config.dtype), "--dtype"
    if device.type == "cuda":
        return torch.bfloat16, "default on CUDA"
    flag = native_bf16()
    if flag is not None:
        return torch.bfloat16, f"CPU has {flag}"
    return torch.float32, "CPU without native bf16 (no avx512_bf16 / amx_bf16)"


# NOTE: on up to STREAMED_MAX_CORES cores, a model with more weight than this runs every step on every core:
# its decode steps stream the weights from memory, and another core's bandwidth and tiles gain more than the
# router loses. Live at 32 clients on 2 cores, all cores against one left to the router: a 7 MB model -8% output
# tokens/s, 46 MB +24%, 190 MB +43% (docs/performance.md). On more cores one more thread adds at most a third,
# and the router's core is kept (not measured there).
STREAMED_WEIGHT_BYTES = 32 * 2**20
STREAMED_MAX_CORES = 4


def weight_bytes(c: DecoderConfig, dtype: torch.dtype) -> int:
    """Bytes of a decoder's weights in ``dtype`` (embeddings, projections, MLP, output head; not the norms)."""
    q, kv = c.heads * c.head_dim, c.kv_heads * c.head_dim
    layer = c.hidden * (2 * q + 2 * kv) + 3 * c.hidden * c.intermediate
    heads = 1 if c.tie_embeddings else 2
    return (c.layers * layer + heads * c.vocab_size * c.hidden) * torch.finfo(dtype).bits // 8


def pick_cpu_threads(config: ShardConfig, weights: int = 0) -> tuple[CpuThreads, str]:
    """torch intra-op threads for a CPU shard of ``weights`` bytes of weight, and why: ``--cpu-threads N`` or
    ``PRISM_SHARD_THREADS=N`` for every step; else every core for steps of at least
    ``PREFILL_THREADS_MIN_TOKENS`` tokens (a big prefill, while the router waits for it) and every core but one
    for the others (decode steps, during which the router streams tokens to the clients on the core left to
    it), or every core for every step when the weights exceed ``STREAMED_WEIGHT_BYTES`` on up to
    ``STREAMED_MAX_CORES`` cores; there a decode step whose weights and KV read reach that many bytes takes
    every core too."""
    if config.cpu_threads:
        return CpuThreads(config.cpu_threads, config.cpu_threads), "--cpu-threads"
    env = os.environ.get(THREADS_ENV)
    if env:
        return CpuThreads(max(1, int(env)), max(1, int(env))), THREADS_ENV
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if config.world_size > 1:
        share = max(1, cores // config.world_size)
        return CpuThreads(share, share), f"{cores} cores shared by {config.world_size} tensor-parallel ranks"
    if weights > STREAMED_WEIGHT_BYTES and cores <= STREAMED_MAX_CORES:
        return CpuThreads(cores, cores), f"{cores} cores: {weights >> 20} MiB of weights, streamed every step"
    if cores == 1 or cores > STREAMED_MAX_CORES:
        return CpuThreads(max(1, cores - 1), cores), f"{cores} cores, one left to the router during decode"
    # NOTE: a decode step streams its rows' KV as well as the weights: from STREAMED_WEIGHT_BYTES of both it
    # takes every core (long contexts), as a model of that much weight does at every step
    return (CpuThreads(cores - 1, cores, decode_kv_min=max(1, STREAMED_WEIGHT_BYTES - weights)),
            f"{cores} cores, one left to the router during decode steps streaming under "
            f"{STREAMED_WEIGHT_BYTES >> 20} MiB of weights and KV")


def host_slot(config: ShardConfig) -> int | None:
    """This shard's index among the launcher's shards on the host: its LOCAL_RANK (``--data-parallel``
    replicas), else its tensor-parallel rank; None for a lone shard. Its CUDA device, or its run of CPUs."""
    if config.local_rank is not None:
        return config.local_rank
    return config.rank if config.world_size > 1 else None


def with_pinning(threads: CpuThreads, config: ShardConfig) -> tuple[CpuThreads, str]:
    """``threads`` with the CPUs its largest team is pinned to (:mod:`shard.cpu_affinity`), and why, by this
    shard's :func:`host_slot`."""
    cpus, why = pin_cpus(threads.large, host_slot(config))
    return replace(threads, cpus=cpus), why


def build_runner(config: ShardConfig) -> ModelRunner:
    """Load the model and allocate the KV pool.

    Raises:
        ValueError: unsupported architecture, unavailable backend, bad pool size, a model that does not split
            over WORLD_SIZE ranks (messages say which).
    """
    decoder = decoder_config(Path(config.model_dir), config.rope_factor)
    if config.world_size > 1:  # NOTE: before joining the group: a bad --num-shard fails at once on each rank
        check_divisible(decoder.heads, decoder.kv_heads, decoder.intermediate, config.world_size)
    device = pick_device(config)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    tp = init_tensor_parallel(config.rank, config.world_size, device)
    dtype, dtype_why = pick_dtype(config, device)
    threads, cpu_threads = "", None
    if device.type == "cpu":
        cpu_threads, why = pick_cpu_threads(config, weight_bytes(decoder, dtype) // tp.world)
        cpu_threads, pinned = with_pinning(cpu_threads, config)
        torch.set_num_threads(cpu_threads.small)
        threads = f", CPU threads {cpu_threads} ({why}; {pinned})"
    backend = get_backend(config.attention_backend, device.type, config.block_size)
    dummy = config.load_format == "dummy"
    loaded = load_model(config.model_dir, backend, dtype, device, tp, dummy=dummy, rope_factor=config.rope_factor)
    c = loaded.model.config
    shape = KVShape(c.layers, c.kv_heads // tp.world, c.head_dim, dtype)  # this rank's share of the KV heads
    blocks = choose_num_blocks(
        shape, config.block_size, device, config.num_blocks, config.memory_fraction, config.pool_floor
    )
    blocks = tp.min_int(blocks, device)  # NOTE: one block space for the router: equal on every rank
    kv = KVCache(shape, blocks, config.block_size, device)
    log.info(
        "model %s on %s%s, dtype %s (%s)%s, attention %s, KV pool %d blocks x %d tokens",
        config.model_dir,
        device,
        f" (tensor parallel rank {tp.rank} of {tp.world})" if tp.enabled else "",
        dtype,
        dtype_why,
        threads,
        backend.name,
        blocks,
        config.block_size,
    )
    # NOTE: CUDA graphs are not captured across ranks (collectives in a captured graph are untested here).
    eager = config.enforce_eager or tp.enabled
    return ModelRunner(loaded, kv, enforce_eager=eager, cpu_threads=cpu_threads, graph_sizes=config.cuda_graphs)


def build_service(config: ShardConfig) -> TextGenerationService:
    """The servicer, its runner built on the step thread (:mod:`shard.step_thread`), which runs every step:
    loading runs parallel regions, and a thread that runs one keeps a libgomp team for good; with a second team
    beside the step thread's, every team's workers sleep between regions (a wake-up per region; the 100m demo
    model's decode steps took twice as long). For the same reason this thread is left with one intra-op
    thread."""
    runner = step_thread.EXECUTOR.submit(build_runner, config).result()
    device = runner.loaded.device
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # NOTE: the current device is per thread, as it was set here before
    if runner.cpu_threads is not None:
        torch.set_num_threads(1)
    return TextGenerationService(runner, config, tiers=build_tiers(config, runner.kv))


def build_tiers(config: ShardConfig, kv: KVCache) -> KvTiers | None:
    """The host and disk KV tiers the flags ask for, or None. A size that is not a multiple of the block size
    is rounded down to whole blocks, with a log line (ShardConfig refuses one below a block). Each
    tensor-parallel rank keeps its share of every block, on disk under ``rank-R``."""
    host, disk = config.kv_host_blocks, config.kv_disk_blocks
    sizes = (
        ("--kv-host-tokens", config.kv_host_tokens, host),
        ("--kv-disk-tokens", config.kv_disk_tokens, disk),
    )
    for flag, tokens, blocks in sizes:
        if tokens % config.block_size:
            why = "%s %d is not a multiple of the block size %d: the tier holds %d blocks (%d tokens)"
            log.info(why, flag, tokens, config.block_size, blocks, blocks * config.block_size)
    if not host and not disk:
        return None
    path = config.kv_disk_path
    if path and config.world_size > 1:
        path = str(Path(path) / f"rank-{config.rank}")
    tiers = KvTiers(kv, TierSizes(host, disk, path))
    log.info("KV tiers: host %d blocks, disk %d blocks%s, %d bytes per block, layer-wise loads %s", host, disk,
             f" under {path}" if disk else "", tiers.block_bytes, "on" if tiers.overlap else "off")
    return tiers
