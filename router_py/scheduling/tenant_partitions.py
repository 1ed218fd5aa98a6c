"""Per-tenant capacity shares: one inner scheduler per partition of the KV pool, so a tenant with a share
keeps its own blocks (nobody else's traffic evicts its cache) and its own queue order (nobody else's cache
hits reorder it).

    global block ids   | 0 .. n_A-1 (tenant A) | n_A .. n_A+n_B-1 (tenant B) | ... | the rest (tenants without a share)
    each partition is a whole scheduler (its own radix tree, policy and ranking) over ``n`` blocks of which its
    block 0 is reserved, as in any pool; its block b and slot s are global ``b + offset``, ``s + offset * bs``.

Across partitions the batch is filled in rotation: each ``next_batch`` starts at the partition after the one
that started the previous batch (skipping empty ones) and offers each partition what is left of the budgets.
A tenant's turn therefore depends on whether the others have requests waiting, never on their cache hits;
when the batch budgets bind, what an earlier partition left can still let a request in sooner (see
docs/multi-tenancy.md). ``min_size`` is checked against the total number waiting only.

Pure Python, no I/O; implements :class:`router_py.scheduling.interface.Scheduler`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from router_py.scheduling.interface import Admission, BatchPlan, SchedRequest, Scheduler, SchedulerConfig
from router_py.tenancy import tenant_of

REST = ""  # the partition of tenants without a share


@dataclasses.dataclass
class _Partition:
    name: str
    offset: int  # global id of its block 0
    scheduler: Scheduler


class TenantPartitionedScheduler:
    """``shares``: tenant -> fraction of ``config.num_blocks`` (0 < share, sum <= 1). ``make`` builds each inner
    scheduler from a copy of ``config`` with its partition's ``num_blocks``. ``min_blocks``: the blocks every
    partition must hold (the router passes what one request of ``max_total_tokens`` needs, plus the reserved
    block, so that no valid request can wait for ever in a partition too small for it). ``others``: whether
    requests may come from tenants without a share (the keys file has some, or ``--api-key`` is also given):
    they need the blocks left over, however few, else they would land in a shared tenant's partition; without
    them a leftover too small for a request is left unused. Raises ValueError when the shard pads (no blocks
    to partition) or a partition that is needed would hold fewer than ``min_blocks`` (at least 2)."""

    def __init__(
        self,
        config: SchedulerConfig,
        shares: Mapping[str, float],
        make: Callable[[SchedulerConfig], Scheduler],
        min_blocks: int = 2,
        others: bool = True,
    ) -> None:
        if config.num_blocks is None:
            raise ValueError("tenant capacity shares need a paged shard (it reported requires_padding)")
        if config.tiers is not None and config.tiers.enabled:
            # NOTE: each partition would hand out the same host/disk slots; partitioning the tiers is not built
            raise ValueError("KV tiers (--kv-host-tokens, --kv-disk-tokens) do not work with tenant shares")
        self.block_size = config.block_size
        self.min_blocks = max(min_blocks, 2)
        self.partitions: list[_Partition] = []
        offset = 0
        for name, share in sorted(shares.items()):
            offset = self._add(name, int(share * config.num_blocks), offset, config, make)
        if others or config.num_blocks - offset >= self.min_blocks:
            self._add(REST, config.num_blocks - offset, offset, config, make)
        self._by_name = {p.name: p for p in self.partitions}
        self._where: dict[int, _Partition] = {}  # waiting or running request id -> its partition
        self._next = 0  # rotation: index of the partition that starts the next batch

    def _add(self, name: str, n: int, offset: int, config: SchedulerConfig,
             make: Callable[[SchedulerConfig], Scheduler]) -> int:
        if n < self.min_blocks:
            fix = "raise the share" if name else (
                "lower the shares (tenants without one, and --api-key, use the blocks they leave)")
            raise ValueError(f"tenant {name or '(others)'!r}: its share of {config.num_blocks} blocks is {n}, "
                             f"fewer than the {self.min_blocks} one request of max_total_tokens needs; {fix} "
                             "or lower --max-total-tokens")
        inner = make(dataclasses.replace(config, num_blocks=n))
        self.partitions.append(_Partition(name, offset, inner))
        return offset + n

    def partition_of(self, namespace: str) -> _Partition:
        """A tenant's partition; the shared one for the others (without ``others``, none comes: the last)."""
        return self._by_name.get(tenant_of(namespace)) or self._by_name.get(REST) or self.partitions[-1]

    # ---- Scheduler protocol ----------------------------------------------------------------------------------

    def enqueue(self, request: SchedRequest, now: float) -> None:
        part = self.partition_of(request.namespace)
        part.scheduler.enqueue(request, now)
        self._where[request.id] = part

    def cancel(self, request_id: int) -> bool:
        part = self._where.get(request_id)
        if part is None or not part.scheduler.cancel(request_id):
            return False
        del self._where[request_id]
        return True

    def next_batch(
        self, now: float, prefill_budget: int, token_budget: int, max_size: int | None = None, min_size: int = 0
    ) -> BatchPlan | None:
        if self.waiting_count() < max(min_size, 1):
            return None
        admissions: list[Admission] = []
        prefill = max_tokens = max_blocks = 0
        n = len(self.partitions)
        first = None
        for i in range(n):
            part = self.partitions[(self._next + i) % n]
            left = None if max_size is None else max_size - len(admissions)
            if part.scheduler.waiting_count() == 0 or prefill >= prefill_budget or max_tokens >= token_budget:
                continue
            if left is not None and left <= 0:
                break
            plan = part.scheduler.next_batch(now, prefill_budget - prefill, token_budget - max_tokens, left, 0)
            if plan is None:
                continue
            first = (self._next + i) % n if first is None else first
            admissions += [self._global(part, a) for a in plan.admissions]
            prefill += plan.prefill_tokens
            max_tokens += plan.max_tokens
            max_blocks = max(max_blocks, plan.max_blocks)
        if first is None:
            return None
        self._next = (first + 1) % n
        return BatchPlan(admissions, prefill, max_tokens, max_blocks)

    def _global(self, part: _Partition, adm: Admission) -> Admission:
        shift = part.offset * self.block_size
        return dataclasses.replace(
            adm, blocks=tuple(b + part.offset for b in adm.blocks), slots=tuple(s + shift for s in adm.slots)
        )

    def prefill_done(self, request_id: int) -> None:
        part = self._where.get(request_id)
        if part is not None:
            part.scheduler.prefill_done(request_id)

    def release(
        self, request_id: int, computed: bool = True, computed_prefix: int = 0, generated: Sequence[int] = ()
    ) -> None:
        part = self._where.pop(request_id, None)
        if part is not None:
            part.scheduler.release(request_id, computed, computed_prefix, generated)

    def peek_prefix(self, namespace: str, hashes: Sequence[int]) -> int:
        return self.partition_of(namespace).scheduler.peek_prefix(namespace, hashes)

    def waiting_count(self) -> int:
        return sum(p.scheduler.waiting_count() for p in self.partitions)

    def cache_stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for p in self.partitions:
            for key, value in p.scheduler.cache_stats().items():
                total[key] = total.get(key, 0) + value
        return total

    def tenant_stats(self, tenant: str) -> dict[str, int]:
        """The cache counters of ``tenant``'s partition (the shared one for a tenant without a share)."""
        return self.partition_of(tenant).scheduler.cache_stats()
