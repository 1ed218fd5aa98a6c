"""The conversation and agent generators (bench.workloads.conversation, .agent), their replay beside the
Belady bound (bench.replay_workload) and the sweep's summary (bench.sweep)."""

from __future__ import annotations

import pytest

from bench.replay_workload import replay_point, replay_requests, working_set_tokens
from bench.sweep import summarize
from bench.workloads import WorkloadSpec, build, timed
from bench.workloads.agent import AgentParams, agent, agent_tasks
from bench.workloads.conversation import ConversationParams, conversation, conversation_sessions
from bench.workloads.request import offered_qps


def _sessions(reqs, marker: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in reqs:
        out.setdefault(r.segments[1][0].split(marker)[0], []).append(r)
    return out


def test_conversation_is_seeded_timed_and_each_turn_extends_the_previous() -> None:
    p = ConversationParams(sessions=80, seed=3)
    reqs = conversation(p)
    assert reqs == conversation(p) and reqs != conversation(ConversationParams(sessions=80, seed=4))
    assert [r.arrival for r in reqs] == sorted(r.arrival for r in reqs)
    sessions = _sessions(reqs, "u")
    assert len(sessions) == 80 and len(reqs) > 80
    lengths = [len(turns) for turns in sessions.values()]
    assert 1 in lengths and max(lengths) <= p.max_turns
    for turns in sessions.values():
        for prev, nxt in zip(turns, turns[1:]):
            n = len(prev.segments)
            assert nxt.segments[:n] == prev.segments and len(nxt.segments) == n + 2
            assert nxt.segments[n] == (prev.segments[-1][0].replace("u", "a"), prev.output_len)
            assert nxt.arrival > prev.arrival
    one_turn = sum(n == 1 for n in lengths) / len(lengths)
    assert one_turn == pytest.approx(1 - p.continue_first, abs=0.15)


def test_agent_steps_append_action_and_tool_output_and_some_branch() -> None:
    p = AgentParams(tasks=30, branch=0.3, seed=1)
    reqs = agent(p)
    assert reqs == agent(p)
    tasks = _sessions(reqs, "s")
    assert len(tasks) == 30
    branched = 0
    for steps in tasks.values():
        assert steps[0].segments[0][1] == p.system_len and len(steps[0].segments) == 2
        for prev, nxt in zip(steps, steps[1:]):
            if nxt.segments[: len(prev.segments)] != prev.segments:
                branched += 1  # forks from an earlier step: still extends the task's first prompt
            assert nxt.segments[:2] == steps[0].segments
            lo, hi = p.tool_len
            assert all(lo <= n <= hi + 1 for s, n in nxt.segments if s.endswith("r"))
    assert branched > 0
    assert not any(
        a.segments[: len(b.segments)] != b.segments
        for steps in _sessions(agent(AgentParams(tasks=10, branch=0.0)), "s").values()
        for b, a in zip(steps, steps[1:])
    )


def test_sessions_are_the_same_requests_one_list_per_session_and_tasks_stay_under_max_context() -> None:
    c, a = ConversationParams(sessions=40, seed=2), AgentParams(tasks=20, seed=2)
    chats, tasks = conversation_sessions(c), agent_tasks(a)
    assert len(chats) == 40 and len(tasks) == 20
    assert sorted((r for s in chats for r in s), key=lambda r: r.arrival) == conversation(c)
    assert sorted((r for t in tasks for r in t), key=lambda r: r.arrival) == agent(a)
    for turns in chats:  # one session each: its turns extend each other, in order
        assert all(n.segments[: len(p.segments)] == p.segments and n.arrival > p.arrival
                   for p, n in zip(turns, turns[1:]))
    capped = AgentParams(tasks=20, seed=2, max_context=2500)
    longest = max(r.prompt_len for r in agent(a))
    assert longest + a.action_len[1] > 2500  # so the cap has something to cut
    assert all(r.prompt_len + capped.action_len[1] <= 2500 for r in agent(capped))


def test_self_timed_workloads_scale_to_an_offered_load_keeping_their_shape() -> None:
    spec = WorkloadSpec("conversation", conversation=ConversationParams(sessions=60))
    base = build(spec)
    assert timed(spec, base, None) == base
    fast = timed(spec, base, 20.0)
    assert offered_qps(fast) == pytest.approx(20.0)
    assert [r.segments for r in fast] == [r.segments for r in base]
    ratio = fast[-1].arrival / base[-1].arrival
    assert all(f.arrival == pytest.approx(b.arrival * ratio) for f, b in zip(fast, base))
    assert len(build(WorkloadSpec("agent", requests=25, agent=AgentParams(tasks=10)))) == 25


def test_replay_of_a_generated_workload_stays_under_its_belady_bound() -> None:
    reqs = replay_requests(build(WorkloadSpec("conversation", conversation=ConversationParams(sessions=40))))
    working = working_set_tokens(reqs, 16)
    assert 0 < working <= sum(len(r.prompt) for r in reqs)
    small = replay_point(reqs, "qas+dart", working // 4, window=16, utilization=0.8)
    assert 0 < small["hit_rate"] <= small["belady_hit_rate"] + 1e-9
    lru = replay_point(reqs, "fcfs+lru", 4 * working, window=16, utilization=0.8)
    assert lru["hit_rate"] >= small["hit_rate"]
    assert lru["hit_rate"] == pytest.approx(lru["belady_hit_rate"], abs=0.02)


def test_sweep_summary_counts_wins_ties_and_losses_against_the_best_baseline() -> None:
    rows = [
        {"point": p, "capacity_x": 1.0, "config": c, "hit_rate": h}
        for p, c, h in [
            ("a", "qas+dart", 0.50), ("a", "fcfs+lru", 0.40), ("a", "lpm+lru", 0.45),
            ("b", "qas+dart", 0.50), ("b", "fcfs+lru", 0.503),
            ("c", "qas+dart", 0.30), ("c", "lpm+hotprefix", 0.32),
        ]
    ]
    s = summarize(rows)
    assert (s["wins"], s["ties"], s["losses"]) == (1, 1, 1)
    assert s["worst"] == ("c", 1.0, pytest.approx(-2.0))
    assert s["mean_delta_points"] == pytest.approx((5.0 - 0.3 - 2.0) / 3)
