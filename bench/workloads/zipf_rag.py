"""``zipf-rag``: one of S system prompts, k passages drawn from a corpus of P by Zipf(alpha) popularity, and a
unique question, as in PRISM's RAG top-k workload.

NOTE: the k passages are ordered by popularity rank (most popular first), as a retriever's relevance order
correlates with popularity for hot topics; that is what makes passage *prefixes* recur (exact-prefix caching
only reuses a passage when everything before it is equal too). ``sort_passages=False`` keeps the draw order
instead.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass

from bench.workloads.request import WorkloadRequest


@dataclass(frozen=True)
class ZipfRagParams:
    requests: int = 2000
    system_prompts: int = 4  # S
    corpus: int = 2000  # P passages
    alpha: float = 1.1  # Zipf exponent of passage popularity (rank r has weight r^-alpha)
    top_k: int = 7  # k passages per request (7 and 15 in the paper)
    system_len: int = 512
    passage_len: int = 160
    question_len: int = 48
    output_len: tuple[int, int] = (16, 64)  # uniform, inclusive
    sort_passages: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.top_k > self.corpus:
            raise ValueError("top_k must be <= corpus")
        if min(self.system_prompts, self.corpus, self.top_k, self.requests) <= 0:
            raise ValueError("counts must be > 0")


def _zipf_cdf(n: int, alpha: float) -> list[float]:
    return list(itertools.accumulate(r**-alpha for r in range(1, n + 1)))


def _draw_passages(rng: random.Random, cdf: list[float], k: int) -> list[int]:
    chosen: list[int] = []
    while len(chosen) < k:
        p = min(bisect.bisect_left(cdf, rng.random() * cdf[-1]), len(cdf) - 1)
        if p not in chosen:
            chosen.append(p)
    return chosen


def zipf_rag(params: ZipfRagParams) -> list[WorkloadRequest]:
    """Untimed requests (arrival 0); time them with :func:`bench.workloads.request.at_qps`."""
    rng = random.Random(params.seed)
    cdf = _zipf_cdf(params.corpus, params.alpha)
    out = []
    for i in range(params.requests):
        passages = _draw_passages(rng, cdf, params.top_k)
        if params.sort_passages:
            passages.sort()
        segments = (
            (f"sys{rng.randrange(params.system_prompts)}", params.system_len),
            *((f"doc{p}", params.passage_len) for p in passages),
            (f"q{i}", params.question_len),
        )
        out.append(WorkloadRequest(0.0, segments, rng.randint(*params.output_len)))
    return out
