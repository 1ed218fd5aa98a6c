"""``KvTiers``: the device pool plus the optional host and disk tiers, and the copies between them.

Copies run in the order they arrive (one worker thread: a Transfer's copies, then a Prefill's, as sent),
each copy in list order. A copy fails (a miss) when its disk read is missing, foreign, truncated or corrupt,
when its disk write is refused (full disk), or when its source is the destination of an earlier failed copy of
the same list; the list goes on. Bad input (a tier this shard lacks, a slot out of range) is refused before
anything is copied.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from shard.kv_cache import KVCache
from shard.kv_tiers.copies import Copy, Tier, check
from shard.kv_tiers.disk_tier import DiskTier
from shard.kv_tiers.host_pool import HostPool

log = logging.getLogger(__name__)
OVERLAP_ENV = "PRISM_KV_LAYER_OVERLAP"


@dataclass
class Outcome:
    """failed: indices of the copies that failed; bad_device: device blocks a failed copy should have filled;
    loads: (CPU block, device block) loads left to the forward to do layer by layer (``defer=True``)."""

    failed: list[int] = field(default_factory=list)
    bad_device: set[int] = field(default_factory=set)
    loads: list[tuple[torch.Tensor, int]] = field(default_factory=list)


@dataclass(frozen=True)
class TierSizes:
    host_blocks: int = 0
    disk_blocks: int = 0
    disk_path: str | None = None


class KvTiers:
    def __init__(self, kv: KVCache, sizes: TierSizes, overlap: bool | None = None) -> None:
        self.kv = kv
        s = kv.shape
        self.block_shape = (s.layers, 2, kv.block_size, s.kv_heads, s.head_dim)
        self.block_bytes = s.bytes_per_token * kv.block_size
        device = kv.layers[0][0].device
        self.cuda = device.type == "cuda"
        self.host = None
        if sizes.host_blocks:
            self.host = HostPool(sizes.host_blocks, self.block_shape, s.dtype, pin=self.cuda)
        self.disk = None
        if sizes.disk_blocks:
            if not sizes.disk_path:
                raise ValueError("--kv-disk-tokens needs --kv-disk-path")
            self.disk = DiskTier(sizes.disk_path, sizes.disk_blocks, self.block_shape, s.dtype)
        self.sizes = {Tier.DEVICE: kv.num_blocks, Tier.HOST: sizes.host_blocks, Tier.DISK: sizes.disk_blocks}
        # NOTE: layer-wise loading pays on CUDA (copies on a side stream); on a CPU it measured no win.
        self.overlap = self.cuda if overlap is None else overlap
        if os.environ.get(OVERLAP_ENV):
            self.overlap = os.environ[OVERLAP_ENV] not in ("0", "false")
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="kv-tiers")  # FIFO over every copy list

    def check(self, copies: list[Copy]) -> None:
        check(copies, self.sizes)

    # ---- running a list ------------------------------------------------------------------------------------

    def run(self, copies: list[Copy], defer: bool = False) -> Outcome:
        """Do ``copies`` in order (call on :attr:`worker`). With ``defer``, copies into the device whose
        slots no later copy touches become ``loads`` for :mod:`shard.kv_tiers.layerwise`."""
        out = Outcome()
        poisoned: set[tuple[Tier, int]] = set()
        last = _last_uses(copies) if defer and self.overlap else {}
        if self.cuda:  # NOTE: device blocks read here were written by forwards on the default stream
            self.stream.wait_stream(torch.cuda.default_stream(self.stream.device))
        with torch.no_grad(), torch.cuda.stream(self.stream) if self.cuda else nullcontext():
            for i, c in enumerate(copies):
                # NOTE: a load may land later only if no later copy reads or writes either of its slots
                deferrable = (c.dst_tier == Tier.DEVICE and last.get((c.src_tier, c.src_slot)) == i
                              and last.get((c.dst_tier, c.dst_slot)) == i)
                ok = (c.src_tier, c.src_slot) not in poisoned and self._copy(c, out if deferrable else None)
                if ok:
                    poisoned.discard((c.dst_tier, c.dst_slot))
                    continue
                out.failed.append(i)
                poisoned.add((c.dst_tier, c.dst_slot))
                if c.dst_tier == Tier.DEVICE:
                    out.bad_device.add(c.dst_slot)
            if self.cuda:
                self.stream.synchronize()
        if out.failed:
            log.info("kv tiers: %d of %d copies failed (misses)", len(out.failed), len(copies))
        return out

    def _copy(self, c: Copy, deferred: Outcome | None) -> bool:
        block = self._read(c.src_tier, c.src_slot, c.block_hash)
        if block is None:
            return False
        if deferred is not None:
            if c.src_tier == Tier.DISK and self.cuda:
                block = block.pin_memory()
            deferred.loads.append((block, c.dst_slot))
            return True
        return self._write(c.dst_tier, c.dst_slot, c.block_hash, block)

    def _read(self, tier: Tier, slot: int, block_hash: int) -> torch.Tensor | None:
        if tier == Tier.DEVICE:
            return torch.stack([torch.stack((k[slot], v[slot])) for k, v in self.kv.layers])
        if tier == Tier.HOST:
            assert self.host is not None
            return self.host.read(slot)
        assert self.disk is not None
        return self.disk.read(slot, block_hash)

    def _write(self, tier: Tier, slot: int, block_hash: int, block: torch.Tensor) -> bool:
        if tier == Tier.DEVICE:
            load_block(self.kv.layers, block, slot)
            return True
        if tier == Tier.HOST:
            assert self.host is not None
            self.host.write(slot, block)
            return True
        assert self.disk is not None
        return self.disk.write(slot, block_hash, block)


def agree(out: Outcome, copies: list[Copy], tp, device: torch.device) -> Outcome:
    """Tensor-parallel ranks each hold a share of every block: a copy that failed on any rank counts as failed
    on all (``tp``: :class:`shard.tensor_parallel.TensorParallel`), so that every rank recomputes the same
    tokens and runs the same collectives. A load of such a copy that still lands is overwritten by the
    recompute. Every rank must call this at the same point (it is a collective)."""
    if not tp.enabled or not copies:
        return out
    flags = torch.zeros(len(copies), dtype=torch.int32, device=device)
    flags[out.failed] = 1
    failed = [i for i, f in enumerate(tp.all_reduce(flags).tolist()) if f]
    bad = {copies[i].dst_slot for i in failed if copies[i].dst_tier == Tier.DEVICE}
    return Outcome(failed, bad, out.loads)


def load_block(layers: list, block: torch.Tensor, slot: int, layer: int | None = None) -> None:
    """Copy ``block`` (layers, 2, bs, kv_heads, head_dim) into device block ``slot`` of the pool's ``layers``
    (``KVCache.layers``): every layer, or one."""
    for i in range(len(layers)) if layer is None else (layer,):
        k, v = layers[i]
        k[slot].copy_(block[i, 0], non_blocking=True)
        v[slot].copy_(block[i, 1], non_blocking=True)


def _last_uses(copies: list[Copy]) -> dict[tuple[Tier, int], int]:
    """Each (tier, slot) the copies read or write -> the index of the last copy that does (one pass)."""
    last: dict[tuple[Tier, int], int] = {}
    for i, c in enumerate(copies):
        last[(c.src_tier, c.src_slot)] = i
        last[(c.dst_tier, c.dst_slot)] = i
    return last
