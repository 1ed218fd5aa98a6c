"""The loads of the side-by-side comparison with a peer server (issue 10): what is sent, built
deterministically from the seed and the served model folder's tokenizer, so every server gets the same
prompts.

- ``cold``: fresh prompts of ``cold_prompt_len`` tokens (BOS included), one at a time, each followed by the
  same prompt again (``hit``): TTFT of a cold prefill and of a full prefix-cache hit.
- ``clients``: ``clients`` closed-loop clients, short prompts, long outputs: decode throughput.
- ``shared``: Poisson arrivals of one of ``shared_prefixes`` shared prefixes + a unique suffix, swept in QPS.
- ``rag``: the zipf-rag workload (system prompt + Zipf-popular passages + question), swept in QPS.
- ``chat``: chat sessions (the ``conversation`` workload: shared system prompts, each turn extending the last),
  closed-loop per session, swept in sessions started per second.
- ``agent``: tool-using agent tasks (the ``agent`` workload: long shared system prompts, each step appending an
  action and a tool's result, some forking from an earlier step), closed-loop per task, swept in tasks per second.
  In both, a turn sends back the answer it extends as the server streamed it (:class:`bench.loadgen.Turn`).

Segment ids carry the seed, the load and the point, so each point starts with nothing of its prompts cached
(as a fresh server would); a rerun against the same running server needs another seed to start cold again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from bench.loadgen import LoadRequest, Turn
from bench.workloads.agent import AgentParams, agent_tasks
from bench.workloads.conversation import ConversationParams, conversation_sessions
from bench.workloads.prompts import PromptBuilder
from bench.workloads.request import WorkloadRequest, at_qps
from bench.workloads.zipf_rag import ZipfRagParams, zipf_rag

BOS_TOKENS = 1  # both servers add the tokenizer's BOS to a completions prompt


def rag_params() -> ZipfRagParams:
    """512-token system prompt + 3 passages of 160 + a 48-token question = 1,040 tokens."""
    return ZipfRagParams(system_len=512, passage_len=160, top_k=3, question_len=48, output_len=(16, 64))


def chat_params() -> ConversationParams:
    """The conversation workload's shape, its think times and lengths cut to fit a short run and a 4k context:
    512-token system prompts, 32-192-token user turns, 32-128-token answers, at most 8 turns (2,944 tokens)."""
    return ConversationParams(sessions=60, max_turns=8, gap_median_s=2.0, gap_sigma=0.5, system_len=512,
                              user_len=(32, 192), answer_len=(32, 128))


def agent_params() -> AgentParams:
    """The agent workload's shape, cut to fit a short run and a 4k context: 1,024-token system prompts,
    16-64-token actions, 32-512-token tool results, 5 steps on average, a task ending before 3,600 tokens
    (the answers sent back may tokenize longer than generated, and the context is 4,096)."""
    return AgentParams(tasks=24, mean_steps=5.0, tool_latency_s=1.0, system_len=1024, task_len=(32, 128),
                       action_len=(16, 64), tool_len=(32, 512), max_context=3600)


@dataclass(frozen=True)
class PeerParams:
    seed: int = 0
    warmup_requests: int = 2  # a cold long prompt and a short one, before anything is measured
    cold_prompt_len: int = 2001  # tokens the server sees, BOS included
    cold_repeats: int = 5
    cold_output: int = 4
    clients: int = 32
    client_prompt_len: int = 100
    client_output: int = 128
    client_requests: int = 64
    client_runs: int = 3  # the clients load this many times, fresh prompts each: its tok/s is their median
    shared_prefixes: int = 4
    shared_prefix_len: int = 1500
    shared_unique_len: int = 50
    shared_output: int = 16
    shared_requests: int = 60
    shared_qps: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0)
    rag: ZipfRagParams = field(default_factory=rag_params)
    rag_requests: int = 60
    rag_qps: tuple[float, ...] = (3.0, 6.0, 10.0)
    chat: ConversationParams = field(default_factory=chat_params)
    chat_rates: tuple[float, ...] = (2.0, 8.0, 32.0)  # sessions started per second
    agent: AgentParams = field(default_factory=agent_params)
    agent_rates: tuple[float, ...] = (1.0, 4.0, 16.0)  # tasks started per second


def with_clients(params: PeerParams, clients: int | None = None, prompt_len: int | None = None,
                 output: int | None = None) -> PeerParams:
    """``params`` with the clients load's shape: what is given replaces its setting, and ``clients`` brings
    twice as many requests."""
    shape = {"clients": clients, "client_prompt_len": prompt_len, "client_output": output}
    params = replace(params, **{k: v for k, v in shape.items() if v is not None})
    return params if clients is None else replace(params, client_requests=2 * clients)


QUICK = PeerParams(
    cold_repeats=3, client_requests=32, client_runs=1, shared_requests=30, shared_qps=(2.0, 8.0),
    rag_requests=30, rag_qps=(6.0,), chat_rates=(8.0,), agent_rates=(4.0,),
)


def _tag(requests: list[WorkloadRequest], tag: str) -> list[WorkloadRequest]:
    return [
        replace(r, segments=tuple((f"{tag}/{s}", n) for s, n in r.segments),
                output_segment=r.output_segment and f"{tag}/{r.output_segment}")
        for r in requests
    ]


def _load(builder: PromptBuilder, requests: list[WorkloadRequest]) -> list[LoadRequest]:
    return [
        LoadRequest(r.arrival, builder.prompt(r), r.output_len, r.prompt_len + BOS_TOKENS) for r in requests
    ]


def _turns(builder: PromptBuilder, session: list[WorkloadRequest]) -> list[Turn]:
    """A session's requests as turns: each extends the earlier one whose prompt and output segment (its
    answer) start its own; the segments after them are its suffix."""
    loads, turns = _load(builder, session), []
    for k, req in enumerate(session):
        parent = next((j for j in range(k - 1, -1, -1) if _extends(req, session[j])), None)
        cut = 0 if parent is None else len(session[parent].segments) + 1
        suffix = "".join(builder.segment_text(s, n) for s, n in req.segments[cut:])
        turns.append(Turn(loads[k], parent, suffix))
    return turns


def _extends(req: WorkloadRequest, earlier: WorkloadRequest) -> bool:
    n = len(earlier.segments)
    return len(req.segments) > n and req.segments[n][0] == earlier.output_segment and (
        req.segments[:n] == earlier.segments
    )


class PeerLoads:
    """Every load of one comparison run; the same ``params`` and tokenizer give the same prompts."""

    def __init__(self, params: PeerParams, builder: PromptBuilder) -> None:
        self.params, self.builder = params, builder
        self.tag = f"peer{params.seed}"

    def warmup(self) -> list[LoadRequest]:
        p = self.params
        reqs = [WorkloadRequest(0.0, (("warm-long", p.cold_prompt_len - BOS_TOKENS),), p.cold_output),
                WorkloadRequest(0.0, (("warm-short", 16),), p.cold_output)]
        return _load(self.builder, _tag(reqs, f"{self.tag}/warmup")[: p.warmup_requests])

    def cold_and_hit(self) -> list[LoadRequest]:
        """cold 0, the same prompt again, cold 1, its repeat, ...: to send one at a time."""
        p = self.params
        out = []
        for i in range(p.cold_repeats):
            req = WorkloadRequest(0.0, ((f"cold{i}", p.cold_prompt_len - BOS_TOKENS),), p.cold_output)
            out += _load(self.builder, _tag([req, req], f"{self.tag}/cold"))
        return out

    def clients(self, run: int = 0) -> list[LoadRequest]:
        """The ``run``-th clients load: its own prompts, so no run hits another's cache."""
        p = self.params
        reqs = [WorkloadRequest(0.0, ((f"c{i}", p.client_prompt_len - BOS_TOKENS),), p.client_output)
                for i in range(p.client_requests)]
        return _load(self.builder, _tag(reqs, f"{self.tag}/clients{run or ''}"))

    def shared(self, qps: float) -> list[LoadRequest]:
        p = self.params
        rng = random.Random(f"{p.seed}/shared")
        reqs = [
            WorkloadRequest(0.0, ((f"prefix{rng.randrange(p.shared_prefixes)}", p.shared_prefix_len),
                                  (f"u{i}", p.shared_unique_len)), p.shared_output)
            for i in range(p.shared_requests)
        ]
        return _load(self.builder, _tag(at_qps(reqs, qps, p.seed + 1), f"{self.tag}/shared@{qps:g}"))

    def rag(self, qps: float) -> list[LoadRequest]:
        p = self.params
        reqs = zipf_rag(replace(p.rag, requests=p.rag_requests, seed=p.seed))
        return _load(self.builder, _tag(at_qps(reqs, qps, p.seed + 1), f"{self.tag}/rag@{qps:g}"))

    def chat(self, rate: float) -> list[list[Turn]]:
        """Chat sessions starting at ``rate`` per second: one list of turns per session."""
        p = self.params
        sessions = conversation_sessions(replace(p.chat, session_rate=rate, seed=p.seed))
        return [_turns(self.builder, _tag(s, f"{self.tag}/chat@{rate:g}")) for s in sessions]

    def agent(self, rate: float) -> list[list[Turn]]:
        """Agent tasks starting at ``rate`` per second: one list of steps per task."""
        p = self.params
        tasks = agent_tasks(replace(p.agent, task_rate=rate, seed=p.seed))
        return [_turns(self.builder, _tag(t, f"{self.tag}/agent@{rate:g}")) for t in tasks]


def describe(params: PeerParams) -> list[str]:
    """One line per load: what a table row's short label stands for."""
    p, r, c, a = params, params.rag, params.chat, params.agent
    rag_len = r.system_len + r.top_k * r.passage_len + r.question_len
    return [
        f"cold / hit: {p.cold_repeats} fresh {p.cold_prompt_len:,}-token prompts (BOS included), each sent "
        f"alone and then once more, {p.cold_output} output tokens; after {p.warmup_requests} unmeasured "
        "warm-up requests",
        f"clients: {p.clients} closed-loop clients, {p.client_requests} requests of {p.client_prompt_len} "
        f"prompt tokens and {p.client_output} output tokens (ignore_eos); output tokens/s over a run, "
        f"the median of {p.client_runs} runs with fresh prompts",
        f"shared prefix: {p.shared_requests} Poisson requests per point, one of {p.shared_prefixes} shared "
        f"{p.shared_prefix_len:,}-token prefixes + {p.shared_unique_len} unique tokens, {p.shared_output} "
        "output tokens; every point starts with its prefixes uncached",
        f"RAG: {p.rag_requests} Poisson requests per point, one of {r.system_prompts} {r.system_len}-token "
        f"system prompts + {r.top_k} of {r.corpus:,} {r.passage_len}-token passages by Zipf({r.alpha:g}) "
        f"popularity + a {r.question_len}-token question = {rag_len:,} tokens, "
        f"{r.output_len[0]}-{r.output_len[1]} output tokens",
        f"chat: {c.sessions} sessions per point, one of {c.system_prompts} {c.system_len}-token system prompts, "
        f"{c.user_len[0]}-{c.user_len[1]}-token user turns, {c.answer_len[0]}-{c.answer_len[1]}-token answers "
        f"(output tokens), a second turn with P {c.continue_first:g}, another with P {c.continue_later:g}, "
        f"at most {c.max_turns}; each turn a log-normal think time (median {c.gap_median_s:g} s) after the "
        "last one's answer ends, which it sends back as streamed",
        f"agent: {a.tasks} tasks per point, one of {a.system_prompts} {a.system_len:,}-token system prompts + "
        f"a {a.task_len[0]}-{a.task_len[1]}-token task; each step appends a {a.action_len[0]}-{a.action_len[1]}"
        f"-token action (its output, sent back as streamed) and a {a.tool_len[0]}-{a.tool_len[1]}-token tool "
        f"result (log-uniform) sent an exponential {a.tool_latency_s:g} s (mean) after the step ends; "
        f"{a.mean_steps:g} steps on average, P {a.branch:g} of forking from an earlier step, under "
        f"{a.max_context:,} tokens",
        "TTFT P50/P99 over every request of a point; hit rate = the server's prefix-cache hit / queried "
        "token counters over the point (vLLM counts whole blocks, 128 tokens on CPU)",
    ]
