"""``agent``: tool-using agent tasks, timed: each step's prompt is the previous step's prompt, the model's
action (its output) and the tool's result appended; some steps branch.

Tasks start as a Poisson process (``task_rate`` per second). A task opens with one of a few long shared
system prompts (instructions and tool schemas) and a task description, then runs a geometric number of steps
(mean ``mean_steps``). A tool result is log-uniform between ``tool_len`` bounds (a file, a search page, a
command's output), and arrives ``tool_latency_s`` (exponential mean) after the step. With probability
``branch``, a step instead forks from an earlier step of the same task (a retry, or another plan explored from
there): its prompt extends that earlier step's prompt, not the latest one.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import partial

from bench.workloads.request import Segment, WorkloadRequest, poisson_started, poisson_units


@dataclass(frozen=True)
class AgentParams:
    tasks: int = 120
    task_rate: float = 0.5  # tasks started per second
    mean_steps: float = 8.0
    branch: float = 0.15  # P(a step forks from an earlier step)
    tool_latency_s: float = 2.0
    system_prompts: int = 2
    system_len: int = 1536
    task_len: tuple[int, int] = (64, 256)
    action_len: tuple[int, int] = (32, 160)  # also each step's output length
    tool_len: tuple[int, int] = (64, 2048)  # log-uniform
    max_context: int | None = None  # a task ends once its latest prompt and a longest action would not fit
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.tasks, self.system_prompts) < 1 or self.task_rate <= 0 or self.mean_steps < 1:
            raise ValueError("tasks, system_prompts >= 1, task_rate > 0, mean_steps >= 1")


def _tool_len(p: AgentParams, rng: random.Random) -> int:
    lo, hi = p.tool_len
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def _over(p: AgentParams, prompt: tuple[Segment, ...]) -> bool:
    return p.max_context is not None and sum(n for _, n in prompt) + p.action_len[1] > p.max_context


def _task(p: AgentParams, tid: int, start: float, rng: random.Random) -> list[WorkloadRequest]:
    first: tuple[Segment, ...] = (
        (f"agsys{rng.randrange(p.system_prompts)}", p.system_len), (f"t{tid}", rng.randint(*p.task_len)),
    )
    prompts, out, t, step = [first], [], start, 0
    while True:
        base = prompts[-1] if len(prompts) == 1 or rng.random() >= p.branch else rng.choice(prompts[:-1])
        action = rng.randint(*p.action_len)
        out.append(WorkloadRequest(t, base, action, f"t{tid}s{step}a"))
        prompts.append(base + ((f"t{tid}s{step}a", action), (f"t{tid}s{step}r", _tool_len(p, rng))))
        step += 1
        if rng.random() < 1 / p.mean_steps or _over(p, prompts[-1]):
            return out
        t += rng.expovariate(1 / p.tool_latency_s)


def agent(params: AgentParams) -> list[WorkloadRequest]:
    """Timed requests in arrival order (deterministic for a seed)."""
    return poisson_started(params.tasks, params.task_rate, params.seed, partial(_task, params))


def agent_tasks(params: AgentParams) -> list[list[WorkloadRequest]]:
    """The same requests as :func:`agent`, one list per task (its steps in order)."""
    return poisson_units(params.tasks, params.task_rate, params.seed, partial(_task, params))
