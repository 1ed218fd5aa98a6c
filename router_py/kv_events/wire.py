"""vLLM's KV event wire format, written with msgpack (no msgspec needed; the bytes are the same).

One ``EventBatch`` per message, always a positional array ``[ts, events, data_parallel_rank]``. Each event is
msgspec's tagged struct: with the "array" encoding ``["BlockStored", field, ...]``, every field in declaration
order (msgspec's ``array_like`` writes defaults too); with "map", ``{"type": "BlockStored", name: value}``, fields
equal to their declared default left out (``omit_defaults``). Field order (vLLM's
``vllm/distributed/kv_events.py``, "= x": declared default):

    BlockStored       block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, lora_name,
                      extra_keys (= None), group_idx (= None), kv_cache_spec_kind (= None),
                      kv_cache_spec_sliding_window (= None)
    BlockRemoved      block_hashes, medium, group_idx (= None)
    AllBlocksCleared  (no fields)

We fill them as vLLM does for a model with one full-attention KV cache group: ``group_idx`` 0,
``kv_cache_spec_kind`` "full_attention", no sliding window. ``medium`` names where the block's copy is: "GPU"
the shard's paged pool (vLLM's ``MEDIUM_GPU``, whatever the device), "CPU" the host tier (what vLLM's CPU
offloading publishes), "DISK" the disk tier (vLLM's core defines no disk medium; SGLang's events declare
"DISK", see docs/kv-events.md).

Block hashes go out as unsigned 64-bit ints (vLLM's int form of ``ExternalBlockHash``): our chained hashes are
Python's signed 64-bit ``hash`` values, mapped one to one by ``h mod 2**64``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from prism_cache.tiers.types import Tier

MEDIUM_GPU = "GPU"  # vLLM's MEDIUM_GPU: the device tier (our shard's paged KV pool)
MEDIUM_CPU = "CPU"  # vLLM's CPU offloading medium: the host tier
MEDIUM_DISK = "DISK"  # the disk tier (SGLang's name; vLLM core has none)
MEDIUMS = {Tier.DEVICE: MEDIUM_GPU, Tier.HOST: MEDIUM_CPU, Tier.DISK: MEDIUM_DISK}
FULL_ATTENTION = "full_attention"  # vLLM's kv_cache_spec_kind of a full-attention group
HASH_MASK = (1 << 64) - 1
REQUIRED = object()  # a field without a declared default: always written

# Raw events as the collector queues them (plain tuples: cheap on the event loop, encoded on the thread).
# ("stored", namespace, parent, hashes, tokens, medium)
Stored = tuple[str, str, int | None, Sequence[int], Sequence[int], str]
# ("removed", hashes, medium); a tier removal's hashes are a list the collector extends while the event is the
# last pending one, never after the batch is handed over
Removed = tuple[str, Sequence[int], str]
Cleared = tuple[str]  # ("cleared",)
RawEvent = Stored | Removed | Cleared


def external_hash(h: int) -> int:
    """Our signed chained hash as vLLM's unsigned 64-bit block hash."""
    return h & HASH_MASK


def extra_keys(namespace: str, parent: int | None, n_blocks: int) -> list[tuple[str] | None]:
    """vLLM's per-block ``extra_keys``: the cache salt sits in the first block of a chain only (vLLM adds
    ``cache_salt`` at token 0); ours is the tenant namespace (``TENANT[\\x00SALT]``), none for the default one."""
    keys: list[tuple[str] | None] = [None] * n_blocks
    if parent is None and namespace and n_blocks:
        keys[0] = (namespace,)
    return keys


def event_fields(event: RawEvent, block_size: int) -> tuple[str, list[tuple[str, Any, Any]]]:
    """(tag, [(field, value, declared default or REQUIRED), ...]) of one raw event, every field vLLM declares."""
    kind = event[0]
    if kind == "stored":
        _, namespace, parent, hashes, tokens, medium = event  # type: ignore[misc]
        return "BlockStored", [
            ("block_hashes", [h & HASH_MASK for h in hashes], REQUIRED),
            ("parent_block_hash", None if parent is None else parent & HASH_MASK, REQUIRED),
            ("token_ids", list(tokens), REQUIRED),
            ("block_size", block_size, REQUIRED),
            ("lora_id", None, REQUIRED),
            ("medium", medium, REQUIRED),
            ("lora_name", None, REQUIRED),
            ("extra_keys", extra_keys(namespace, parent, len(hashes)), None),
            ("group_idx", 0, None),
            ("kv_cache_spec_kind", FULL_ATTENTION, None),
            ("kv_cache_spec_sliding_window", None, None),
        ]
    if kind == "removed":
        _, removed, medium = event  # type: ignore[misc]
        hashes = [h & HASH_MASK for h in removed]
        return "BlockRemoved", [("block_hashes", hashes, REQUIRED), ("medium", medium, REQUIRED),
                                ("group_idx", 0, None)]
    if kind == "cleared":
        return "AllBlocksCleared", []
    raise ValueError(f"unknown raw event {kind!r}")


def encode_event(event: RawEvent, block_size: int, encoding: str = "array") -> list[Any] | dict[str, Any]:
    """One event as msgspec's tagged struct (array or map form), ready for msgpack."""
    tag, items = event_fields(event, block_size)
    if encoding == "map":
        return {"type": tag, **{name: v for name, v, default in items if default is REQUIRED or v != default}}
    return [tag, *(value for _, value, _ in items)]


def encode_batch(
    ts: float, events: Sequence[RawEvent], block_size: int, encoding: str = "array", dp_rank: int = 0
) -> bytes:
    """The msgpack payload of one ``EventBatch``: ``[ts, [event, ...], data_parallel_rank]``."""
    body = [encode_event(e, block_size, encoding) for e in events]
    return msgpack.packb([ts, body, dp_rank], use_bin_type=True)
