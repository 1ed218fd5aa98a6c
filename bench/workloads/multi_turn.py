"""``multi-turn``: chat sessions whose every turn's prompt is the previous turn's prompt, the previous answer
and a new user message, so each turn extends the one before (the agent / chat reuse pattern).

Sessions interleave: ``concurrent`` sessions are open at a time and each next request is the next turn of a
random open one, so turns of one session stay in order while sessions overlap.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from bench.workloads.request import Segment, WorkloadRequest


@dataclass(frozen=True)
class MultiTurnParams:
    sessions: int = 200
    turns: int = 5
    concurrent: int = 16
    system_prompts: int = 2
    system_len: int = 256
    user_len: tuple[int, int] = (32, 160)
    answer_len: tuple[int, int] = (32, 96)  # also each turn's output length
    seed: int = 0


def _session(params: MultiTurnParams, sid: int, rng: random.Random) -> list[WorkloadRequest]:
    prompt: list[Segment] = [(f"sys{rng.randrange(params.system_prompts)}", params.system_len)]
    turns = []
    for t in range(params.turns):
        prompt.append((f"s{sid}u{t}", rng.randint(*params.user_len)))
        answer = rng.randint(*params.answer_len)
        turns.append(WorkloadRequest(0.0, tuple(prompt), answer))
        prompt.append((f"s{sid}a{t}", answer))
    return turns


def multi_turn(params: MultiTurnParams) -> list[WorkloadRequest]:
    """Untimed requests in arrival order (arrival 0); time them with ``at_qps``."""
    rng = random.Random(params.seed)
    pending = [_session(params, s, rng) for s in range(params.sessions)]
    open_, out = [], []
    while pending or open_:
        while pending and len(open_) < params.concurrent:
            open_.append(pending.pop(0))
        session = rng.choice(open_)
        out.append(session.pop(0))
        if not session:
            open_.remove(session)
    return out
