"""The workload flags every ``prism-bench`` command that builds a generated workload or a trace shares, and the
:class:`~bench.workloads.WorkloadSpec` they describe."""

from __future__ import annotations

import argparse
from dataclasses import replace

from bench.workloads import WorkloadSpec
from bench.workloads.multi_turn import MultiTurnParams
from bench.workloads.zipf_rag import ZipfRagParams


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def pair(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(",")
    return int(lo), int(hi or lo)


def add_workload_args(p: argparse.ArgumentParser) -> None:
    z, m = ZipfRagParams(), MultiTurnParams()
    g = p.add_argument_group("workload")
    g.add_argument(
        "--workload", default="zipf-rag", help="zipf-rag | multi-turn | conversation | agent | trace:PATH"
    )
    g.add_argument("--requests", type=int, default=None, help="requests per point (a trace: its first N)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--warmup", type=float, default=0.1,
                   help="fraction of the first arrivals left out of TTFT metrics (cold cache); 0 keeps all")
    g.add_argument("--time-scale", type=float, default=1.0, help="trace: multiply gaps (2 = half the rate)")
    g.add_argument("--system-prompts", type=int, default=z.system_prompts, help="zipf-rag S")
    g.add_argument("--corpus", type=int, default=z.corpus, help="zipf-rag P passages")
    g.add_argument("--alpha", type=float, default=z.alpha, help="zipf-rag popularity exponent")
    g.add_argument("--top-k", type=int, default=z.top_k, help="zipf-rag passages per request (paper: 7, 15)")
    g.add_argument("--system-len", type=int, default=z.system_len)
    g.add_argument("--passage-len", type=int, default=z.passage_len)
    g.add_argument("--question-len", type=int, default=z.question_len)
    g.add_argument("--output-len", type=pair, default=z.output_len, help="min,max new tokens (uniform)")
    g.add_argument("--sessions", type=int, default=m.sessions, help="multi-turn sessions")
    g.add_argument("--turns", type=int, default=m.turns, help="multi-turn turns per session")


def workload_spec(args: argparse.Namespace) -> WorkloadSpec:
    zipf = ZipfRagParams(
        system_prompts=args.system_prompts, corpus=args.corpus, alpha=args.alpha, top_k=args.top_k,
        system_len=args.system_len, passage_len=args.passage_len, question_len=args.question_len,
        output_len=args.output_len,
    )
    turns = replace(MultiTurnParams(), sessions=args.sessions, turns=args.turns)
    return WorkloadSpec(args.workload, args.requests, args.seed, args.time_scale, zipf, turns)
