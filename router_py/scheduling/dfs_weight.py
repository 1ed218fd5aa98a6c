"""``dfs-weight`` (SGLang): walk the radix tree depth first, heavier subtrees first, emitting the waiting
requests parked at each node, so requests that share a prefix run back to back. A node's weight is the number
of waiting requests whose match ends in its subtree. Like SGLang's, it never falls back to FCFS (only lpm
does), so a step walks the tree once per waiting request; the :mod:`dedup` step applies to the resulting order.
"""

from __future__ import annotations

from collections.abc import Iterable

from prism_cache import Node
from prism_cache.params import parse_knobs
from router_py.scheduling.queue_scheduler import QueueScheduler
from router_py.scheduling.batch_builder import Limits
from router_py.scheduling.dedup import InBatchDedup, InBatchDedupParams
from router_py.scheduling.waiting import Waiting
from router_py.scheduling.interface import SchedulerConfig


class DfsWeightScheduler(QueueScheduler):
    name = "dfs-weight"

    def __init__(self, config: SchedulerConfig) -> None:
        super().__init__(config)
        self.dedup = InBatchDedup(parse_knobs(InBatchDedupParams, config.params), config.block_size)

    def _order(self, now: float, limits: Limits) -> tuple[Iterable[Waiting], list[Waiting]]:
        if self.allocator is None:
            return iter(self.queue), []
        parked: dict[Node | None, list[Waiting]] = {}
        weight: dict[Node, int] = {}
        for entry in self.queue:
            node = self.allocator.peek_node(entry.request.namespace, entry.tokens) if entry.hashes else None
            parked.setdefault(node, []).append(entry)
            while node is not None and node.parent is not None:
                weight[node] = weight.get(node, 0) + 1
                node = node.parent
        order: list[Waiting] = []
        tops = [n for n in weight if n.parent is not None and n.parent.parent is None]
        self._visit(sorted(tops, key=lambda n: -weight[n]), weight, parked, order)
        order.extend(parked.get(None, []))
        return self.dedup.apply(order, self.cached_prefix), []

    def _visit(
        self,
        nodes: list[Node],
        weight: dict[Node, int],
        parked: dict[Node | None, list[Waiting]],
        out: list[Waiting],
    ) -> None:
        stack = list(reversed(nodes))
        while stack:
            node = stack.pop()
            out.extend(parked.get(node, []))
            children = [c for c in node.children.values() if c in weight]
            stack.extend(sorted(children, key=lambda c: weight[c]))
