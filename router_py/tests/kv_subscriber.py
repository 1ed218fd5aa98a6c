"""A KV-event consumer for tests, written from vLLM's published format (not from our encoder): a ZMQ SUB
socket, msgpack decoding of both event forms (tagged arrays and tagged maps), and the set of cached block
hashes per medium ("GPU"; "CPU" and "DISK" for the tiers' copies) rebuilt from BlockStored / BlockRemoved /
AllBlocksCleared, with the checks a router would trip on."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq

# vLLM's declaration order after the tag (vllm/distributed/kv_events.py)
STORED_FIELDS = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium", "lora_name",
                 "extra_keys", "group_idx", "kv_cache_spec_kind", "kv_cache_spec_sliding_window")
REMOVED_FIELDS = ("block_hashes", "medium", "group_idx")
TIER_MEDIUMS = ("CPU", "DISK")


def as_fields(event: Any) -> tuple[str, dict[str, Any]]:
    """(tag, {field: value}) of one decoded event, array or map form."""
    if isinstance(event, dict):
        return event["type"], {k: v for k, v in event.items() if k != "type"}
    tag, values = event[0], event[1:]
    names = {"BlockStored": STORED_FIELDS, "BlockRemoved": REMOVED_FIELDS, "AllBlocksCleared": ()}[tag]
    assert len(values) <= len(names), f"{tag} has {len(values)} fields"
    return tag, dict(zip(names, values))


Block = tuple[int | None, tuple[int, ...], Any]  # (parent hash, token ids, extra keys)


@dataclass
class BlockView:
    """What a consumer knows of the cache: per medium, block hash -> (parent hash, token ids, extra keys);
    ``blocks`` is the device's ("GPU"), ``tiers`` the host's ("CPU") and the disk's ("DISK"). ``log``: every
    event as (tag, medium, hashes). A hash names one block: every medium's copy must carry the parent and
    tokens it was first stored with."""

    blocks: dict[int, Block] = field(default_factory=dict)
    tiers: dict[str, dict[int, Block]] = field(default_factory=lambda: {m: {} for m in TIER_MEDIUMS})
    seen: dict[int, tuple[int | None, tuple[int, ...]]] = field(default_factory=dict)  # first (parent, tokens)
    log: list[tuple[str, str | None, list[int]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # orphan parents, unknown removals, bad fields
    batches: int = 0
    clears: int = 0

    def medium(self, name: str) -> dict[int, Block] | None:
        return self.blocks if name == "GPU" else self.tiers.get(name)

    def apply(self, payload: bytes) -> None:
        batch = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        assert isinstance(batch, list) and len(batch) in (2, 3), "EventBatch is [ts, events, dp_rank]"
        assert isinstance(batch[0], float)
        self.batches += 1
        for event in batch[1]:
            tag, f = as_fields(event)
            self.log.append((tag, f.get("medium"), list(f.get("block_hashes", []))))
            if tag == "BlockStored":
                self._stored(f)
            elif tag == "BlockRemoved":
                self._removed(f)
            elif tag == "AllBlocksCleared":
                self.blocks.clear()
                for view in self.tiers.values():
                    view.clear()
                self.clears += 1
            else:
                self.errors.append(f"unknown event {tag!r}")

    def _removed(self, f: dict[str, Any]) -> None:
        view = self.medium(f["medium"])
        if view is None:
            self.errors.append(f"removed medium {f['medium']!r}")
            return
        for h in f["block_hashes"]:
            if view.pop(h, None) is None:
                self.errors.append(f"removed unknown block {h} from {f['medium']}")

    def _stored(self, f: dict[str, Any]) -> None:
        hashes, parent, tokens, bs = f["block_hashes"], f["parent_block_hash"], f["token_ids"], f["block_size"]
        view = self.medium(f["medium"])
        if view is None or len(tokens) != len(hashes) * bs:
            self.errors.append(f"bad BlockStored: medium {f['medium']!r}, {len(tokens)} tokens")
            return
        # NOTE: a device block's parent is on the device (the tree's invariant); a tier copy's parent may have
        # left every medium since, but it must have been announced once
        if parent is not None and parent not in (self.blocks if view is self.blocks else self.seen):
            self.errors.append(f"stored under unknown parent {parent} ({f['medium']})")
        extra = f.get("extra_keys") or [None] * len(hashes)
        for i, h in enumerate(hashes):
            if not 0 <= h < 1 << 64:
                self.errors.append(f"hash {h} is not an unsigned 64-bit int")
            if h in view:
                self.errors.append(f"stored twice in {f['medium']}: {h}")
            block = (parent, tuple(tokens[i * bs : (i + 1) * bs]))
            if self.seen.setdefault(h, block) != block:
                self.errors.append(f"{h} stored in {f['medium']} as another block: {block} != {self.seen[h]}")
            view[h] = (*block, extra[i])
            parent = h


class Subscriber:
    """SUB socket on ``endpoint`` (unbounded receive queue), checking that sequence numbers run without gaps.
    ``bind``: bind instead of connecting (for a publisher whose endpoint has no wildcard: vLLM's rule makes it
    connect)."""

    def __init__(self, endpoint: str, topic: str = "", bind: bool = False) -> None:
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt_string(zmq.SUBSCRIBE, topic)
        (self.sock.bind if bind else self.sock.connect)(endpoint)
        self.topic = topic
        self.view = BlockView()
        self.last_seq: int | None = None
        self.gaps = 0

    def receive(self, timeout_s: float) -> bool:
        """Apply one message if one arrives within ``timeout_s``; False otherwise."""
        if not self.sock.poll(int(timeout_s * 1000)):
            return False
        topic, seq_bytes, payload = self.sock.recv_multipart()
        assert topic == self.topic.encode() and len(seq_bytes) == 8
        seq = int.from_bytes(seq_bytes, "big")
        if self.last_seq is not None and seq != self.last_seq + 1:
            self.gaps += 1
        self.last_seq = seq
        self.view.apply(payload)
        return True

    def drain(self, quiet_s: float = 0.5, limit_s: float = 30.0) -> None:
        """Receive until nothing arrives for ``quiet_s`` (or ``limit_s`` passed)."""
        end = time.monotonic() + limit_s
        while time.monotonic() < end and self.receive(quiet_s):
            pass

    def close(self) -> None:
        self.sock.close(linger=0)
