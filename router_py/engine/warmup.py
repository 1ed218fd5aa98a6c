"""The startup handshake with the shards (tgi-compat 1.5 steps 2-3): ClearCache(all), Info, Warmup, then the
limits settled and checked as TGI's v3 router does, with clear errors when they cannot work."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace

from router_py.engine.backend_config import BackendConfig
from router_py.backend_api import BackendInfo, ChooserParams
from router_py.shard_client.client import ShardClient
from router_py.shard_client.messages import RequestBatch, ShardInfo, ShardRequest, WarmupResult

log = logging.getLogger(__name__)

WARMUP_SAMPLING = ChooserParams(
    temperature=0.9, top_k=10, top_p=0.9, typical_p=0.9, do_sample=False, seed=0,
    repetition_penalty=1.2, frequency_penalty=0.1, watermark=True,
)


class StartupError(Exception):
    """The shards and the router's limits do not fit together; the message says which flag to change."""


async def handshake(client: ShardClient, config: BackendConfig) -> tuple[BackendInfo, ShardInfo]:
    """Clear every cached batch (the router may have restarted), read Info, run Warmup and settle the limits.
    Raises StartupError (or ShardError when an RPC fails)."""
    await client.clear_cache(None)
    shard = await client.info()
    if shard.block_size <= 0 and not shard.requires_padding:
        raise StartupError(f"the shard reported an invalid block_size {shard.block_size}")
    config = fit_prefill_budget(config, shard)
    result = await client.warmup(
        warmup_batch(config), config.max_input_tokens, config.max_batch_prefill_tokens, config.max_total_tokens
    )
    return settle(config, shard, result), shard


async def handshake_all(
    clients: Sequence[ShardClient], config: BackendConfig
) -> list[tuple[BackendInfo, ShardInfo]]:
    """Every replica's :func:`handshake` at once (data parallelism: each Warmup runs on its own shards, so N
    replicas start in the time of the slowest, not of all in turn); results in ``clients``' order. Raises the
    first failure, as :func:`handshake`."""
    return list(await asyncio.gather(*(handshake(client, config) for client in clients)))


def fit_prefill_budget(config: BackendConfig, shard: ShardInfo) -> BackendConfig:
    """``config`` with the prefill budget Warmup runs with, logged with why.

    A budget the user set is kept: a pool that cannot hold it is refused at Warmup, naming the flag. The
    default (TGI's 4,096) is lowered to :func:`warmup_capacity` when the shard reports its KV pool in Info
    (ours does; TGI's shards size theirs at Warmup and report 0, and keep the default): TGI's launcher
    likewise fits its default to the memory there is, and a small ``--num-blocks`` pool then starts instead
    of failing Warmup.
    """
    budget = config.max_batch_prefill_tokens
    if config.max_batch_prefill_tokens_set:
        log.info("max_batch_prefill_tokens %d (as set)", budget)
        return config
    fits = warmup_capacity(shard, config.max_input_tokens)
    if fits is None or fits >= budget:
        why = "the KV pool holds it" if fits is not None else "the shard reports no KV pool before Warmup"
        log.info("max_batch_prefill_tokens %d (not set; %s)", budget, why)
        return config
    blocks = shard.kv_capacity_tokens // shard.block_size
    log.info(
        "max_batch_prefill_tokens %d (not set: %d lowered to what the KV pool holds, %d blocks of %d tokens "
        "with block 0 reserved%s; --max-batch-prefill-tokens sets it)",
        fits, budget, blocks, shard.block_size,
        f", warmup prompts of max_input_tokens {config.max_input_tokens}" if config.max_input_tokens else "",
    )
    return replace(config, max_batch_prefill_tokens=fits)


def warmup_capacity(shard: ShardInfo, max_input: int | None) -> int | None:
    """The largest prefill budget whose warmup batch (:func:`warmup_batch`: prompts of at most ``max_input``
    tokens, each in whole blocks of its own) fits in the shard's KV pool but block 0; None when the shard does
    not report its pool (TGI's shards, padded ones)."""
    if shard.requires_padding or shard.kv_capacity_tokens <= 0 or shard.block_size <= 0:
        return None
    size = shard.block_size
    usable = max(shard.kv_capacity_tokens // size - 1, 0)
    if max_input is None:
        return usable * size  # NOTE: one prompt, which the shard cuts to its max_input_tokens at most
    per_prompt = -(-max_input // size)
    full, left = divmod(usable, per_prompt)
    return full * max_input + left * size


def warmup_batch(config: BackendConfig) -> RequestBatch:
    """TGI's warmup batch: ``"_test " * truncate`` prompts whose truncations add up to the prefill budget, each
    at most ``max_input_tokens``, generating up to ``max_total_tokens`` (ignoring EOS) with every sampling
    feature on. Blocks and slots stay empty: the shard allocates for warmup itself.

    NOTE: TGI adds a tiny JPEG chunk to the first request for vision models; text-only shards drop it, so it
    is left out here.
    """
    budget = config.max_batch_prefill_tokens
    requests: list[ShardRequest] = []
    n_tokens = 0
    while n_tokens < budget:
        truncate = budget - n_tokens
        if config.max_input_tokens is not None:
            truncate = min(truncate, config.max_input_tokens)
        max_new = config.max_total_tokens - truncate if config.max_total_tokens is not None else 1
        requests.append(
            ShardRequest(
                id=len(requests), inputs="_test " * truncate, truncate=truncate, sampling=WARMUP_SAMPLING,
                max_new_tokens=max(max_new, 1), ignore_eos_token=True, prefill_logprobs=True, top_n_tokens=20,
            )
        )
        n_tokens += truncate
    return RequestBatch(id=0, requests=tuple(requests), max_tokens=config.max_input_tokens or 0, max_blocks=0)


def settle(config: BackendConfig, shard: ShardInfo, result: WarmupResult) -> BackendInfo:
    """The limits after Warmup: the shard's answer where the router left a value open, the KV capacity as
    ``max_batch_total_tokens`` on paged shards. Raises StartupError on any inconsistency."""
    _check_echo("max_input_tokens", config.max_input_tokens, result.max_input_tokens)
    _check_echo("max_total_tokens", config.max_total_tokens, result.max_total_tokens)
    batch_total = _batch_total_tokens(config, result)
    max_input, max_total = _fit_pool(config, shard, result, batch_total)
    info = BackendInfo(
        max_input_tokens=max_input,
        max_total_tokens=max_total,
        max_batch_total_tokens=batch_total,
        block_size=shard.block_size,
        requires_padding=shard.requires_padding,
        dtype=shard.dtype,
        device_type=shard.device_type,
        support_chunking=shard.support_chunking,
        use_prefix_caching=shard.use_prefix_caching,
        speculate=shard.speculate,
        kv_host_blocks=result.kv_host_blocks,
        kv_disk_blocks=result.kv_disk_blocks,
        kv_block_bytes=result.kv_block_bytes,
        max_batch_prefill_tokens=config.max_batch_prefill_tokens,
    )
    _validate(config, info)
    return info


def request_capacity(batch_total: int, block_size: int, speculate: int, requires_padding: bool) -> int | None:
    """The largest ``input + max_new_tokens`` one request can ever be admitted with on a paged shard of
    ``batch_total`` tokens: it reserves ``input + max_new + speculate - 1`` slots, and block 0 is reserved for
    the health probe. None on padded shards (no block pool)."""
    if requires_padding or block_size <= 0:
        return None
    usable = (batch_total // block_size - 1) * block_size
    return usable - speculate + 1


def _fit_pool(
    config: BackendConfig, shard: ShardInfo, result: WarmupResult, batch_total: int
) -> tuple[int, int]:
    """(max_input, max_total) such that every request that passes validation can be admitted. A limit the
    shard chose (TGI's shard counts block 0 in its capacity) is lowered with a warning; one the user set is a
    StartupError, since requests within it could wait at the head of the queue forever."""
    max_input, max_total = result.max_input_tokens, result.max_total_tokens
    fits = request_capacity(batch_total, shard.block_size, shard.speculate, shard.requires_padding)
    if fits is None or max_total <= fits:
        return max_input, max_total
    if config.max_total_tokens is not None:
        raise StartupError(
            f"`max_total_tokens` {max_total} cannot fit the KV pool: {batch_total // shard.block_size} blocks "
            f"of {shard.block_size} with block 0 reserved hold at most {fits} tokens per request; lower "
            "--max-total-tokens or give the shard more blocks"
        )
    log.warning(
        "the shard chose max_total_tokens %d, but one request can hold at most %d tokens of the KV pool "
        "(block 0 reserved): using %d", max_total, fits, fits,
    )
    if config.max_input_tokens is None:
        max_input = min(max_input, fits - 1)
    return max_input, fits


def _check_echo(name: str, asked: int | None, got: int) -> None:
    if asked is not None and asked != got:
        raise StartupError(f"the shard settled `{name}` to {got} but the router asked for {asked}")


def _batch_total_tokens(config: BackendConfig, result: WarmupResult) -> int:
    supported = result.max_supported_total_tokens
    if supported is None:
        return config.max_batch_total_tokens or max(
            16000, result.max_total_tokens, config.max_batch_prefill_tokens
        )
    if config.max_batch_total_tokens is not None and config.max_batch_total_tokens != supported:
        log.warning(
            "`--max-batch-total-tokens` is deprecated for paged shards and ignored: the shard's KV capacity "
            "(%d tokens) is used instead", supported,
        )
    if result.max_total_tokens > supported:
        raise StartupError(
            f"`max_total_tokens` must be <= `max_batch_total_tokens` (the shard's KV capacity). Given: "
            f"{result.max_total_tokens} and {supported}; lower --max-total-tokens or give the shard more blocks"
        )
    return supported


def _validate(config: BackendConfig, info: BackendInfo) -> None:
    prefill = config.max_batch_prefill_tokens
    if info.max_input_tokens >= info.max_total_tokens:
        raise StartupError(
            f"`max_input_tokens` must be < `max_total_tokens`. Given: {info.max_input_tokens} and "
            f"{info.max_total_tokens} (padded shards need both passed explicitly: --max-input-tokens, "
            "--max-total-tokens)"
        )
    if not info.support_chunking and prefill < info.max_input_tokens:
        raise StartupError(
            f"`max_batch_prefill_tokens` must be >= `max_input_tokens`. Given: {prefill} and "
            f"{info.max_input_tokens}"
        )
    if prefill > info.max_batch_total_tokens:
        raise StartupError(
            f"`max_batch_prefill_tokens` must be <= `max_batch_total_tokens`. Given: {prefill} and "
            f"{info.max_batch_total_tokens}"
        )
    if info.max_total_tokens > info.max_batch_total_tokens:
        raise StartupError(
            f"`max_total_tokens` must be <= `max_batch_total_tokens`. Given: {info.max_total_tokens} and "
            f"{info.max_batch_total_tokens}"
        )
