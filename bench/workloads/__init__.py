"""Workloads by name: ``zipf-rag``, ``multi-turn``, ``conversation``, ``agent``, ``trace:PATH``. Each yields
untimed or timed :class:`WorkloadRequest` lists; :func:`timed` gives the arrivals of one offered load."""

from __future__ import annotations

from dataclasses import dataclass, replace

from bench.workloads.agent import AgentParams, agent
from bench.workloads.conversation import ConversationParams, conversation
from bench.workloads.multi_turn import MultiTurnParams, multi_turn
from bench.workloads.request import WorkloadRequest, at_qps, offered_qps
from bench.workloads.trace import load_trace
from bench.workloads.zipf_rag import ZipfRagParams, zipf_rag

__all__ = ["WorkloadRequest", "WorkloadSpec", "build", "timed"]

SELF_TIMED = ("conversation", "agent")


@dataclass(frozen=True)
class WorkloadSpec:
    name: str  # zipf-rag | multi-turn | conversation | agent | trace:PATH
    requests: int | None = None  # None: the generator's default (a trace: all rows)
    seed: int = 0
    time_scale: float = 1.0  # traces only
    zipf: ZipfRagParams = ZipfRagParams()
    turns: MultiTurnParams = MultiTurnParams()
    conversation: ConversationParams = ConversationParams()
    agent: AgentParams = AgentParams()

    @property
    def self_timed(self) -> bool:
        """The workload has its own arrival times (their shape is part of it: think times, tool latency)."""
        return self.name in SELF_TIMED or self.name.startswith("trace:")


def build(spec: WorkloadSpec) -> list[WorkloadRequest]:
    """The workload's requests in arrival order (a trace keeps its timestamps, the others are untimed)."""
    if spec.name == "zipf-rag":
        n = spec.requests or spec.zipf.requests
        return zipf_rag(replace(spec.zipf, requests=n, seed=spec.seed))
    if spec.name == "multi-turn":
        reqs = multi_turn(replace(spec.turns, seed=spec.seed))
        return reqs[: spec.requests] if spec.requests else reqs
    if spec.name == "conversation":
        reqs = conversation(replace(spec.conversation, seed=spec.seed))
        return reqs[: spec.requests] if spec.requests else reqs
    if spec.name == "agent":
        reqs = agent(replace(spec.agent, seed=spec.seed))
        return reqs[: spec.requests] if spec.requests else reqs
    if spec.name.startswith("trace:"):
        return load_trace(spec.name[len("trace:") :], spec.time_scale, spec.requests)
    raise ValueError(
        f"unknown workload {spec.name!r} (zipf-rag, multi-turn, conversation, agent, trace:PATH)"
    )


def timed(spec: WorkloadSpec, requests: list[WorkloadRequest], qps: float | None) -> list[WorkloadRequest]:
    """Arrivals for one offered load: Poisson at ``qps`` for untimed workloads; a trace keeps its (scaled)
    timestamps unless ``qps`` is given, which re-times it as Poisson at that rate; ``conversation`` and
    ``agent`` keep their own times, scaled to a mean rate of ``qps`` if given (think times scale with it)."""
    if spec.self_timed and qps is None:
        return requests
    if spec.name in SELF_TIMED and qps is not None:
        scale = offered_qps(requests) / qps
        return [replace(r, arrival=r.arrival * scale) for r in requests]
    if qps is None:
        raise ValueError(f"workload {spec.name} needs a qps")
    return at_qps(requests, qps, spec.seed + 1)
