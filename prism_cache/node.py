"""The radix tree's node: one edge of whole blocks, with the counters retention policies rank it by."""

from __future__ import annotations

Tokens = tuple[int, ...]


class Node:
    """One edge of the tree. ``lock`` counts live requests whose matched path runs through the node (the
    node's active demand); ``hits`` counts matches that reused it; ``last_access`` is the tick of the last
    match or insert through it; ``heat`` is its decayed use count in log form (:mod:`prism_cache.decay`);
    ``valid_from``: eviction-index entries of the node with a lower sequence number are void. ``tokens`` may
    run past the node's blocks: an eviction cut leaves the tail instead of copying the kept part, and the tree
    drops it when it next compares the node."""

    __slots__ = (
        "blocks", "children", "edge", "hashes", "heat", "hits", "last_access", "lock", "parent", "tokens",
        "valid_from",
    )

    def __init__(
        self, edge: Tokens, tokens: Tokens, blocks: list[int], hashes: list[int], parent: Node | None
    ):
        self.edge = edge
        self.tokens = tokens
        self.blocks = blocks
        self.hashes = hashes
        self.parent = parent
        self.children: dict[Tokens, Node] = {}
        self.lock = 0
        self.last_access = 0
        self.hits = 0
        self.heat = 0.0
        self.valid_from = 0


class Root(Node):
    """A namespace's root: no blocks, never locked or evicted; the tree keeps it only while it has children (a
    namespace whose last node was evicted holds nothing), so ``namespace`` names the root to hang new nodes
    from when a holder of a dropped one (an allocation's miss, a tier's anchor) inserts under it."""

    __slots__ = ("namespace",)

    def __init__(self, namespace: str) -> None:
        super().__init__((), (), [], [], None)
        self.namespace = namespace
