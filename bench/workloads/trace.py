"""``trace:PATH``: replay a logged workload, one JSON object a line, in either format:

- Mooncake: ``{"timestamp": ms, "input_length": n, "output_length": m, "hash_ids": [...]}``; each hash id is a
  512-token block (the last one may be partial) and ids are prefix-chained, so equal ids mean equal blocks.
- Segment trace: ``{"timestamp": seconds, "segments": [[segment_id, n_tokens], ...], "output_length": n}``.

Timestamps are shifted to start at 0 and multiplied by ``time_scale`` (2.0 = half the rate).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.workloads.request import Segment, WorkloadRequest

MOONCAKE_BLOCK = 512


def _mooncake_segments(row: dict[str, Any]) -> tuple[Segment, ...]:
    ids, n = row["hash_ids"], int(row["input_length"])
    if not ids:
        raise ValueError("mooncake row without hash_ids")
    last = n - MOONCAKE_BLOCK * (len(ids) - 1)
    if not 0 < last <= MOONCAKE_BLOCK:
        raise ValueError(f"input_length {n} does not match {len(ids)} hash_ids of {MOONCAKE_BLOCK} tokens")
    # NOTE: a partial last block is a prefix of that id's 512 tokens, so equal ids still share their tokens.
    return tuple((f"h{h}", MOONCAKE_BLOCK) for h in ids[:-1]) + ((f"h{ids[-1]}", last),)


def _parse(row: dict[str, Any]) -> tuple[float, WorkloadRequest]:
    if "hash_ids" in row:
        t, segments = float(row["timestamp"]) / 1000.0, _mooncake_segments(row)
    else:
        t, segments = float(row["timestamp"]), tuple((str(s), int(n)) for s, n in row["segments"])
    return t, WorkloadRequest(0.0, segments, max(1, int(row["output_length"])))


def load_trace(path: str | Path, time_scale: float = 1.0, limit: int | None = None) -> list[WorkloadRequest]:
    """Requests sorted by time, the first at 0, gaps multiplied by ``time_scale``; at most ``limit``."""
    if time_scale <= 0:
        raise ValueError("time_scale must be > 0")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(_parse(json.loads(line)))
            if limit is not None and len(rows) >= limit:
                break
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0] if rows else 0.0
    return [WorkloadRequest((t - t0) * time_scale, r.segments, r.output_len) for t, r in rows]
