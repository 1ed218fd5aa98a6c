"""Order-free floors of a simulated load: what no scheduler and no cache policy can beat.

    prism-bench floor --workload zipf-rag --qps 20,40,60 [--rows OUT/results.json] [--cost-model ...]

- **Hit ceiling.** A prompt token is served from the cache only if an earlier forward computed the same
  token prefix, so each distinct prefix of the measured requests (those after the warm-up) that no warm-up
  request shares is computed by one of them at least once, whatever the order and however large the cache;
  and each request computes at least its last token (``cache_len <= input_length - 1``). Token-exact, so it
  holds for any block size.
- **TTFT P99 floor.** The simulator's engine (:mod:`bench.simulator`) computes, per forward, prompt chunks of
  at most ``max_batch_prefill_tokens`` and one token of every running request. P99 <= W (the interpolated
  percentile of :func:`bench.metrics.percentile`) needs all but ``e`` measured requests to have their first
  token by ``A + W``, A the last measured arrival. Their compulsory prompt work, and every decode token of
  theirs but those of requests still running at ``A + W`` (at most ``kv capacity / shortest input + output``
  of them), then fits between the first arrival and ``A + W``. The floor is the least W for which it can,
  counting the ``e`` costliest requests (whole prompt and decode) and the running requests' decodes as saved.
  By default the warm-up's requests are served by then too (their work counts: a policy that held them back
  past the last arrival would move their wait out of the statistics, not remove it); ``--warmup-deferrable``
  drops that assumption. A policy's P99 near the floor is throughput-bound: no admission order or retention
  lowers it by more than the difference.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.cost_model import CostModel, chunk_pairs, make_cost_model
from bench.workload_args import add_workload_args, floats, workload_spec
from bench.workloads import WorkloadRequest, build, timed
from bench.workloads.token_ids import prompt_token_ids

_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class Work:
    """Tokens to compute: prompt tokens, their (query, key) pairs, decode tokens and their contexts."""

    prefill: int = 0
    pairs: float = 0.0
    decodes: int = 0
    decode_context: int = 0

    def __add__(self, other: Work) -> Work:
        return Work(self.prefill + other.prefill, self.pairs + other.pairs, self.decodes + other.decodes,
                    self.decode_context + other.decode_context)

    def seconds(self, cost: CostModel, steps: int = 0) -> float:
        return cost.work_floor(self.prefill, self.pairs, self.decodes, self.decode_context, steps)


def _prefix_keys(ids: Sequence[int]) -> list[int]:
    """One key per token position standing for the prefix ending there (a 64-bit rolling hash)."""
    keys, h = [], 0
    for t in ids:
        h = (h * 0x100000001B3 + t + 1) & _MASK
        keys.append(h)
    return keys


def _decode(request: WorkloadRequest) -> Work:
    """The decode tokens after the first one: the j-th over the prompt and j - 1 tokens (the simulator's
    context, :class:`bench.simulator._Running`)."""
    n, length = max(0, request.output_len - 1), request.prompt_len
    return Work(decodes=n, decode_context=n * length + n * (n - 1) // 2)


def compulsory(requests: Sequence[WorkloadRequest]) -> list[Work]:
    """Per request (in the given order), the prompt work no earlier one shares: its prefixes no earlier request
    has, at least its last token. Their sum is order-free."""
    seen: set[int] = set()
    out = []
    for req in requests:
        keys = _prefix_keys(prompt_token_ids(req))
        start = next((p for p, k in enumerate(keys) if k not in seen), len(keys))
        seen.update(keys[start:])
        start = min(start, len(keys) - 1)
        out.append(Work(len(keys) - start, chunk_pairs(len(keys) - start, start)))
    return out


@dataclass(frozen=True)
class Floor:
    qps: float | None
    hit_ceiling: float  # token-weighted, over the measured requests
    ttft_p99_floor: float  # seconds
    min_work_s: float  # compulsory work of the served requests, decodes included


def load_floor(requests: Sequence[WorkloadRequest], cost: CostModel, warmup: float = 0.1,
               max_batch_prefill_tokens: int = 8192, kv_capacity_tokens: int | None = None,
               qps: float | None = None, warmup_served: bool = True) -> Floor:
    """The floors of one timed load (see the module docstring)."""
    ordered = sorted(requests, key=lambda r: r.arrival)
    cut = int(len(ordered) * warmup)
    kept, served = ordered[cut:], ordered if warmup_served else ordered[cut:]
    prompts = compulsory(ordered)  # a measured request misses what no earlier one (warm-up included) computed
    hit = 1 - sum(w.prefill for w in prompts[cut:]) / sum(r.prompt_len for r in kept)
    decodes = [_decode(r) for r in served]
    work = sum(prompts if warmup_served else compulsory(kept), Work()) + sum(decodes, Work())

    def costliest(works: Sequence[Work], n: int) -> list[Work]:
        return sorted(works, key=lambda w: w.seconds(cost), reverse=True)[:n]

    n = len(kept)
    left_out = costliest([Work(r.prompt_len, chunk_pairs(r.prompt_len, 0)) + _decode(r) for r in kept],
                         n - math.floor((n - 1) * 0.99) - 1)  # may stay above the interpolated P99
    capacity = kv_capacity_tokens or cost.kv_capacity_tokens
    running = costliest(decodes, capacity // min(r.prompt_len + r.output_len for r in served))
    steps = math.ceil(max(0, work.prefill - sum(w.prefill for w in left_out)) / max_batch_prefill_tokens)
    need = work.seconds(cost, steps) - sum(w.seconds(cost) for w in left_out + running)
    window = kept[-1].arrival - ordered[0].arrival
    least = work.seconds(cost, math.ceil(work.prefill / max_batch_prefill_tokens))
    return Floor(qps, hit, max(0.0, need - window), least)


# ---- command line ---------------------------------------------------------------------------------------


def _rows(path: Path | None) -> list[dict[str, object]]:
    if path is None:
        return []
    rows = json.loads(path.read_text(encoding="utf-8"))
    return rows["rows"] if isinstance(rows, dict) else rows


def _print(floors: Sequence[Floor], rows: Sequence[dict[str, object]]) -> None:
    configs = sorted({str(r["config"]) for r in rows if r.get("mode", "sim") == "sim"})
    head = "| qps | hit ceiling | least work (s) | P99 floor (s) |"
    print(head + "".join(f" {c}: P99 (s), / floor, hit |" for c in configs))
    print("|" + "---|" * (4 + len(configs)))
    for f in floors:
        load = f"{f.qps:g}" if f.qps is not None else "trace"
        cells = [load, f"{f.hit_ceiling:.2%}", f"{f.min_work_s:.1f}", f"{f.ttft_p99_floor:.2f}"]
        for c in configs:
            row = next((r for r in rows if r["config"] == c and r["qps"] == f.qps), None)
            if row is None:
                cells.append("-")
                continue
            p99, hit = float(row["ttft_p99"]), float(row["hit_rate"])  # type: ignore[arg-type]
            ratio = f"{p99 / f.ttft_p99_floor:.2f}x" if f.ttft_p99_floor > 0 else "-"
            cells.append(f"{p99:.2f}, {ratio}, {hit:.2%}")
        print("| " + " | ".join(cells) + " |")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="prism-bench floor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--qps", type=floats, default=None,
                   help="comma list; a trace without it keeps its times")
    p.add_argument("--rows", type=Path, default=None,
                   help="results.json of a `compare --mode sim` run, its P99s and hit rates set beside")
    p.add_argument("--cost-model", default="qwen3-4b-a800")
    p.add_argument("--kv-capacity-tokens", type=int, default=None)
    p.add_argument("--max-batch-prefill-tokens", type=int, default=8192)
    p.add_argument("--warmup-deferrable", action="store_true",
                   help="the floor of any policy, even one serving the warm-up's requests last")
    add_workload_args(p)
    args = p.parse_args(argv)
    spec, cost = workload_spec(args), make_cost_model(args.cost_model)
    base = build(spec)
    floors = [
        load_floor(timed(spec, base, q), cost, args.warmup, args.max_batch_prefill_tokens,
                   args.kv_capacity_tokens, q, not args.warmup_deferrable)
        for q in (args.qps or [None])
    ]
    _print(floors, _rows(args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
