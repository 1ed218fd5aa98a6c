"""``prism-bench calibrate``: measure our live shard through the router's HTTP API and fit the step-time model
of :class:`bench.cost_model.MeasuredCost`, written as JSON for ``--cost-model measured:PATH``.

Measurements, one request at a time unless said (so each is one forward or one decode stream):
- prefill: unique prompts of n tokens with ``max_new_tokens=1``; TTFT ~ one prefill forward of (n, 0);
- prefill on cached context: a prompt of c tokens, then the same prompt extended by n tokens; the second
  TTFT ~ a forward of (n, c) (block-aligned by the cache);
- decode: b concurrent streams of 32 tokens; the mean inter-token latency ~ one decode forward of b requests.
Then a least-squares fit of the linear model, coefficients clamped at 0; KV capacity from ``/info``.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.cost_model import MeasuredCost, chunk_pairs
from bench.loadgen import Endpoint, LoadRequest, parse_counters, run_load
from bench.workloads.prompts import PromptBuilder
from bench.workloads.request import WorkloadRequest


@dataclass(frozen=True)
class Sample:
    prefill: tuple[tuple[int, int], ...]  # (new, context) chunks of the forward
    decode_contexts: tuple[int, ...]
    seconds: float


def _features(s: Sample) -> list[float]:
    new = sum(n for n, _ in s.prefill)
    pairs = sum(chunk_pairs(n, c) for n, c in s.prefill)
    return [1.0, float(new), float(pairs), float(len(s.decode_contexts)), float(sum(s.decode_contexts))]


def fit(samples: Sequence[Sample], kv_capacity_tokens: int, name: str = "measured") -> MeasuredCost:
    """Least-squares coefficients of MeasuredCost's linear form (negative ones clamped to 0)."""
    a = np.array([_features(s) for s in samples])
    y = np.array([s.seconds for s in samples])
    scale = np.maximum(np.abs(a).max(axis=0), 1e-12)  # NOTE: columns differ by 1e8 in magnitude
    coef, *_ = np.linalg.lstsq(a / scale, y, rcond=None)
    c = np.maximum(coef / scale, 0.0)
    return MeasuredCost(name, *(float(x) for x in c), kv_capacity_tokens=kv_capacity_tokens)


def _one(url: str, builder: PromptBuilder, segments: tuple[tuple[str, int], ...], new: int) -> float:
    req = WorkloadRequest(0.0, segments, new)
    load = [LoadRequest(0.0, builder.prompt(req), new, req.prompt_len)]
    record = asyncio.run(run_load(Endpoint(url), load, "calibrate")).records[0]
    if record.ttft is None:
        raise RuntimeError(f"calibration request failed: {record.error}")
    return record.ttft


def prefill_samples(url: str, builder: PromptBuilder, lengths: Sequence[int], tag: str) -> list[Sample]:
    out = []
    for n in lengths:
        out.append(Sample(((n, 0),), (), _one(url, builder, ((f"{tag}cold{n}", n),), 1)))
        base = ((f"{tag}ctx{n}", n),)
        _one(url, builder, base, 1)
        ext = _one(url, builder, base + ((f"{tag}ext{n}", 64),), 1)
        out.append(Sample(((64, n),), (), ext))
    return out


def decode_samples(
    url: str, builder: PromptBuilder, batches: Sequence[int], prompt_len: int, tag: str
) -> list[Sample]:
    out = []
    for b in batches:
        reqs = [WorkloadRequest(0.0, ((f"{tag}dec{b}-{i}", prompt_len),), 32) for i in range(b)]
        load = [LoadRequest(0.0, builder.prompt(r), 32, r.prompt_len) for r in reqs]
        result = asyncio.run(run_load(Endpoint(url), load, f"decode x{b}"))
        itls = [x for r in result.records for x in r.itl]
        if itls:
            out.append(Sample((), tuple([prompt_len + 16] * b), sum(itls) / len(itls)))
    return out


def server_capacity(url: str) -> int:
    """KV tokens of the server: ``/info``'s ``max_batch_total_tokens`` (older TGI), else the
    ``tgi_batch_max_total_tokens`` gauge of ``/metrics``; raises RuntimeError when neither says."""
    with urllib.request.urlopen(url + "/info", timeout=10) as resp:
        tokens = int(json.load(resp).get("max_batch_total_tokens") or 0)
    if not tokens:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
            tokens = int(parse_counters(resp.read().decode()).get("tgi_batch_max_total_tokens", 0))
    if tokens <= 0:
        raise RuntimeError(f"{url} reports no KV capacity (max_batch_total_tokens)")
    return tokens
