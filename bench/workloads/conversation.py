"""``conversation``: chat sessions with realistic inter-turn gaps and session lengths, timed.

Sessions start as a Poisson process (``session_rate`` per second). Each opens with one of a few shared system
prompts and a user message; every next turn's prompt is the previous prompt, the previous answer and a new
user message (so it extends the previous turn). After turn t a session continues with probability
``continue_first`` after its first turn and ``continue_later`` after the others (many chats are one question;
a chat that got a follow-up tends to go on), up to ``max_turns``. The next turn comes a log-normal think time
after the previous one (median ``gap_median_s``, log-sd ``gap_sigma``: reading and typing, heavy-tailed).
Requests are returned in arrival order with their times; :func:`bench.workloads.timed` rescales them to an
offered load, keeping the shape.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import partial

from bench.workloads.request import Segment, WorkloadRequest, poisson_started, poisson_units


@dataclass(frozen=True)
class ConversationParams:
    sessions: int = 400
    session_rate: float = 1.0  # sessions started per second
    continue_first: float = 0.3  # P(a second turn)
    continue_later: float = 0.8  # P(another turn) after the second and later turns
    max_turns: int = 12
    gap_median_s: float = 30.0  # think time between turns
    gap_sigma: float = 1.0  # log-sd of the think time
    system_prompts: int = 4
    system_len: int = 512
    user_len: tuple[int, int] = (32, 256)  # uniform, inclusive
    answer_len: tuple[int, int] = (64, 384)  # also each turn's output length
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.sessions, self.max_turns, self.system_prompts) < 1 or self.session_rate <= 0:
            raise ValueError("sessions, max_turns, system_prompts must be >= 1 and session_rate > 0")
        if not (0 <= self.continue_first <= 1 and 0 <= self.continue_later <= 1):
            raise ValueError("continue probabilities must be in [0, 1]")


def _session(p: ConversationParams, sid: int, start: float, rng: random.Random) -> list[WorkloadRequest]:
    prompt: list[Segment] = [(f"sys{rng.randrange(p.system_prompts)}", p.system_len)]
    out, t = [], start
    for turn in range(p.max_turns):
        prompt.append((f"c{sid}u{turn}", rng.randint(*p.user_len)))
        answer = rng.randint(*p.answer_len)
        out.append(WorkloadRequest(t, tuple(prompt), answer, f"c{sid}a{turn}"))
        prompt.append((f"c{sid}a{turn}", answer))
        if rng.random() >= (p.continue_first if turn == 0 else p.continue_later):
            break
        t += p.gap_median_s * math.exp(p.gap_sigma * rng.gauss(0.0, 1.0))
    return out


def conversation(params: ConversationParams) -> list[WorkloadRequest]:
    """Timed requests in arrival order (deterministic for a seed)."""
    return poisson_started(params.sessions, params.session_rate, params.seed, partial(_session, params))


def conversation_sessions(params: ConversationParams) -> list[list[WorkloadRequest]]:
    """The same requests as :func:`conversation`, one list per session (its turns in order)."""
    return poisson_units(params.sessions, params.session_rate, params.seed, partial(_session, params))
