"""What moving KV between tiers costs the simulator: read bandwidths of the host (PCIe) and the disk (NVMe),
PCR's layer-wise overlap of loading with compute, and its queue-based prefetch on the disk channel.

A prefill that promotes blocks loads them before (or, overlapped, while) it computes:

    load    = host bytes / host_bw + max(disk reads done, prefetches into the read host slots done) - now
    overlap : step = max(compute, load) + min(compute, load) / layers   (layer i+1 loads while layer i runs;
              the first layer's load, or the last layer's compute, stays exposed)
    no      : step = compute + load

The disk is one channel: a read (critical-path promotion or prefetch) starts when the previous one ends.
Writes (device -> host, host -> disk) are asynchronous and cost nothing here (PCR overlaps its offload;
the disk tier's write bandwidth is not modelled). Defaults: PCR's testbed, 25 GB/s PCIe and 3 GB/s NVMe.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from prism_cache.tiers import BlockCopy, Tier


@dataclass(frozen=True)
class TierTiming:
    block_bytes: int  # KV bytes of one block (all layers)
    layers: int
    host_read_bw: float = 25e9  # bytes/s, host -> device
    disk_read_bw: float = 3e9  # bytes/s, disk -> host or device
    overlap: bool = True

    def step(self, compute: float, load: float) -> float:
        if not self.overlap:
            return compute + load
        return max(compute, load) + min(compute, load) / self.layers


@dataclass
class TierClock:
    """The disk channel and the host slots a prefetch is still filling, on the simulator's clock."""

    timing: TierTiming
    disk_free: float = 0.0
    host_ready: dict[int, float] = field(default_factory=dict)  # host slot -> when its prefetch lands
    load_seconds: float = 0.0  # totals, for the report
    late_prefetches: int = 0  # promoted blocks whose prefetch had not landed when their prefill started

    def _disk_read(self, now: float, blocks: int) -> float:
        start = max(now, self.disk_free)
        self.disk_free = start + blocks * self.timing.block_bytes / self.timing.disk_read_bw
        return self.disk_free

    def prefetch(self, now: float, copies: Iterable[BlockCopy]) -> None:
        """Background copies (a prefetch plan, pending demotions): disk reads queue on the disk channel."""
        for c in copies:
            if c.dst_tier == Tier.HOST:
                if c.src_tier == Tier.DISK:
                    self.host_ready[c.dst_slot] = self._disk_read(now, 1)
                else:
                    self.host_ready.pop(c.dst_slot, None)

    def load(self, now: float, copies: Iterable[BlockCopy]) -> float:
        """Seconds from ``now`` until a prefill's promotions are all on the device (before overlap)."""
        self.prefetch(now, (c for c in copies if c.dst_tier != Tier.DEVICE))
        host_blocks, disk_blocks, ready = 0, 0, now
        for c in copies:
            if c.dst_tier != Tier.DEVICE:
                continue
            if c.src_tier == Tier.HOST:
                host_blocks += 1
                landed = self.host_ready.get(c.src_slot, now)
                if landed > now:
                    self.late_prefetches += 1
                    ready = max(ready, landed)
            else:
                disk_blocks += 1
        if disk_blocks:
            ready = max(ready, self._disk_read(now, disk_blocks))
        wait = ready - now
        load = host_blocks * self.timing.block_bytes / self.timing.host_read_bw + wait
        self.load_seconds += load
        return load
