"""Wire a shard from its config: device, dtype, attention backend, model, KV pool, runner, servicer."""

from __future__ import annotations

import logging

import torch

from flash_kernels.api import get_backend
from shard.config import ShardConfig
from shard.kv_cache import KVCache, KVShape, choose_num_blocks
from shard.loader import load_model
from shard.model_runner import ModelRunner
from shard.server import TextGenerationService

log = logging.getLogger(__name__)


def pick_device(config: ShardConfig) -> torch.device:
    if config.device:
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(config: ShardConfig, device: torch.device) -> torch.dtype:
    if config.dtype:
        return getattr(torch, config.dtype)
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def build_runner(config: ShardConfig) -> ModelRunner:
    """Load the model and allocate the KV pool.

    Raises:
        ValueError: unsupported architecture, unavailable backend, bad pool size (messages say which).
    """
    device = pick_device(config)
    if device.type == "cpu":
        # NOTE: default 1: on a small shared CPU, intra-op threads cost more in synchronisation than they gain
        # (measured: tiny-model decode 20x faster with 1 thread than 2 under load; docs/performance.md).
        torch.set_num_threads(config.cpu_threads or 1)
    dtype = pick_dtype(config, device)
    backend = get_backend(config.attention_backend, device.type, config.block_size)
    loaded = load_model(config.model_dir, backend, dtype, device)
    c = loaded.model.config
    shape = KVShape(c.layers, c.kv_heads, c.head_dim, dtype)
    blocks = choose_num_blocks(shape, config.block_size, device, config.num_blocks, config.memory_fraction)
    kv = KVCache(shape, blocks, config.block_size, device)
    log.info(
        "model %s on %s (%s), attention %s, KV pool %d blocks x %d tokens",
        config.model_dir,
        device,
        dtype,
        backend.name,
        blocks,
        config.block_size,
    )
    return ModelRunner(loaded, kv, enforce_eager=config.enforce_eager)


def build_service(config: ShardConfig) -> TextGenerationService:
    return TextGenerationService(build_runner(config), config)
