"""Session return (prism_cache.session_return) and where DART ranks it: below queued demand, above history."""

from __future__ import annotations

import math
import random

import pytest

from prism_cache import RadixAllocator, sweep
from prism_cache.hashing import block_hashes
from prism_cache.session_return import TURN_BUCKETS, SessionReturn
from prism_cache.tail_reach import SPAN, TailReach

BS = 2
SYS = (1, 1, 1, 1, 1, 1)  # a system prompt shared by every session: 3 blocks


def _sessions(capacity: int = 100, kept: frozenset[int] = frozenset()) -> SessionReturn:
    return SessionReturn(capacity, 3.0, lambda: kept)


def _observe(s: SessionReturn, prompt: tuple[int, ...], name: str | None = None) -> list[int]:
    hashes = block_hashes("", prompt, BS)
    s.observe(hashes, name)
    return hashes


def _turns(s: SessionReturn, hashes: list[int]) -> int:
    session = s.record_of(hashes[-1])
    assert session is not None
    return session.turns


def test_a_prompt_extending_an_earlier_one_continues_its_session_a_shared_system_prompt_does_not() -> None:
    s = _sessions()
    first = _observe(s, SYS + (2, 2))
    second = _observe(s, SYS + (2, 2, 3, 3, 4, 4))  # the previous turn, an answer and a new message
    assert _turns(s, second) == 2 and s.record_of(first[-1]) is s.record_of(second[-1])
    other = _observe(s, SYS + (7, 7, 8, 8, 9, 9))  # shares only the system prompt
    assert _turns(s, other) == 1 and all(h in s.shared for h in other[:3]) and other[3] not in s.shared
    # an edited turn (the end of the previous prompt rewritten) is a branch: another session, its own turns
    edited = _observe(s, SYS + (2, 2, 3, 3, 4, 5, 6, 6))
    branch = s.record_of(edited[-1])
    assert branch is not None and branch.branch and branch.turns == 1 and _turns(s, second) == 2
    assert second[3] not in s.shared  # the common prefix stays private to the two
    assert s.starts[TURN_BUCKETS] == 1 and s.returns == [1, 0, 0, 0] + [0] * TURN_BUCKETS


def test_two_chats_on_a_long_system_prompt_stay_two_sessions() -> None:
    # a system prompt of 8 blocks, then one block of message: the second chat covers 8 of the first's 9 blocks
    system = tuple(v for i in range(8) for v in (50 + i, 50 + i))
    s = _sessions()
    a = _observe(s, system + (1, 1))
    b = _observe(s, system + (2, 2))
    first, second = s.record_of(a[-1]), s.record_of(b[-1])
    assert first is not None and second is not None and first is not second  # never merged
    assert _turns(s, b) == 1 and second.branch and not first.branch
    assert s.returns == [0] * 2 * TURN_BUCKETS  # nobody came back: a branch is no return of its parent
    c = _observe(s, system + (2, 2, 3, 3))  # b's next turn
    assert _turns(s, c) == 2 and s.record_of(c[-1]) is second and s.returns[TURN_BUCKETS] == 1
    assert first.turns == 1 and s.value(a[-1]) == first.value  # a's tail keeps a's own value
    # where reuses stop: b stopped 1 block short of a's end, c reached b's
    assert s.tails.unreached[:2] == [1, 1]


def test_observe_leaves_the_requests_positions_to_the_queued_table_and_notifies_what_it_prunes() -> None:
    kept: set[int] = set()
    s = SessionReturn(2, 1.0, lambda: kept)
    changed: set[int] = set()
    s.watch(changed)
    first = _observe(s, (3, 3, 4, 4))
    assert s.value(first[-1]) is not None and not changed  # the allocator's queued table tells of them
    kept.add(first[0])
    for i in range(3 * s._bound):  # two prunes: the second drops what the first saw written
        _observe(s, (60 + i, 60 + i))
    assert first[1] in changed and s.value(first[1]) is None  # pruned: neither cached, waiting nor recent
    assert first[0] not in changed and s.value(first[0]) is not None  # kept


def test_a_named_session_is_one_session_whatever_its_prompts() -> None:
    s = _sessions()
    a = _observe(s, (5, 5), "user-1")
    b = _observe(s, (6, 6), "user-1")
    assert s.record_of(a[-1]) is s.record_of(b[-1]) and _turns(s, b) == 2
    c = _observe(s, (5, 5, 6, 6), "user-2")
    assert _turns(s, c) == 1  # the name decides, not the prompt chain


def test_return_probability_is_learned_per_turn_from_sessions_that_come_back() -> None:
    s = _sessions()
    assert s.return_probability(1) == s.return_probability(2) == 0.5  # no data yet
    for i in range(40):  # first turns that never come back; each third session comes back twice
        base = (100 + i, 100 + i)
        _observe(s, base)
        if i % 3 == 0:
            _observe(s, base + (7, 7))
            _observe(s, base + (7, 7, 8, 8))
    assert s.return_probability(1) < 0.45 < s.return_probability(2)
    assert s.starts[0] == 40 and s.returns[0] == 14 and sum(s.starts[TURN_BUCKETS:]) == 0


def test_late_returns_count_as_a_new_turn_but_not_as_a_return() -> None:
    s = SessionReturn(2, 1.0, lambda: frozenset())  # a horizon of 2 observed blocks
    base = _observe(s, (3, 3))
    for i in range(4):
        _observe(s, (50 + i, 50 + i))
    late = _observe(s, (3, 3, 4, 4))
    assert _turns(s, late) == 2 and s.returns[0] == 0 and base[0] in late


def test_a_returning_turn_raises_the_value_of_its_positions() -> None:
    s = _sessions()
    first = _observe(s, (3, 3, 4, 4))
    before = s.value(first[-1])
    _observe(s, (9, 9))
    _observe(s, (3, 3, 4, 4, 5, 5))
    after = s.value(first[-1])
    assert before is not None and after is not None and after > before


def test_records_stay_bounded_and_keep_what_is_cached_or_waiting() -> None:
    kept = frozenset(block_hashes("", (1, 1, 2, 2), BS))
    s = _sessions(capacity=8, kept=kept)
    _observe(s, (1, 1, 2, 2))
    for i in range(5000):
        _observe(s, (10 + i, 10 + i, 20000 + i, 20000 + i), f"n{i % 7}")
    assert len(s) < 3 * s._bound and len(s._named) <= 7
    assert all(s.value(h) is not None for h in kept)


def test_a_prune_sweeps_a_slice_per_observed_request_and_records_stay_prefix_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sweep, "SLICE", 3)
    monkeypatch.setattr(sweep, "PER_BLOCK", 1)
    kept = set(block_hashes("", SYS, BS))
    s = _sessions(capacity=8, kept=frozenset(kept))
    s._bound = s._limit = 60
    changed: set[int] = set()
    s.watch(changed)
    prompts = []
    for i in range(600):  # chats on the system prompt, each coming back a few times
        base = SYS + (10 + i // 4, 10 + i // 4)
        prompt = base + tuple(t for j in range(i % 4) for t in (50 + j, 50 + j))
        idle, recorded = s._sweep is None, set(s._owner)
        changed.clear()
        _observe(s, prompt)
        prompts.append(block_hashes("", prompt, BS))
        lost = recorded - set(s._owner)
        assert len(lost) <= 3 + len(prompts[-1]) and lost <= changed  # one slice, every drop notified
        if not idle or s._sweep is not None:
            for hashes in prompts[-40:]:  # a prompt's records are a prefix of it, mid-sweep too
                have = [h in s._owner for h in hashes]
                assert have == sorted(have, reverse=True)
    assert s._pruned_at > 0 and all(s.value(h) is not None for h in kept)


@pytest.mark.parametrize("seed", range(3))
def test_a_prune_in_slices_decides_as_a_whole_sweep(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Chats coming back, forking and starting, some named: what is learned, where reuses stop and which
    positions are shared come out the same as when each prune swept the whole table at once."""
    rng = random.Random(seed)
    kept = frozenset(block_hashes("", SYS, BS))
    whole, sliced = _sessions(capacity=8, kept=kept), _sessions(capacity=8, kept=kept)
    for table in (whole, sliced):
        table._bound = table._limit = 80
    chats: list[tuple[int, ...]] = []
    running = 0  # calls after which the sliced prune still runs
    for i in range(1500):
        op = rng.random()
        if chats and op < 0.5:  # a chat's next turn repeats its prompt
            j = rng.randrange(len(chats))
            chats[j] += (1000 + i, 1000 + i)
        else:
            j = len(chats)
            if chats and op < 0.65:  # a fork of most of a chat
                old = rng.choice(chats)
                chats.append(old[: len(old) - len(old) // 8 // 2 * 2] + (2000 + i, 2000 + i))
            else:
                chats.append(SYS + (3000 + i, 3000 + i))
        name = f"user-{j % 5}" if j % 7 == 0 else None
        for table, n in ((whole, 10**9), (sliced, 2)):  # the sliced prune: 2 keys + 4 per observed block
            monkeypatch.setattr(sweep, "SLICE", n)
            _observe(table, chats[j], name)
        assert (whole.starts, whole.returns, whole.first_starts, whole.first_returns) == (
            sliced.starts, sliced.returns, sliced.first_starts, sliced.first_returns
        )
        assert whole.tails.unreached == sliced.tails.unreached
        running += sliced._sweep is not None
        if sliced._sweep is None:
            assert whole._owner.keys() == sliced._owner.keys() and whole._shared == sliced._shared
            assert (whole._limit, whole._pruned_at) == (sliced._limit, sliced._pruned_at)
    assert running > 100 and sliced.returns[0] > 0


# ---------------------------------------------------- DART: active > planned > queued > predicted > history


def _dart(**params: float) -> RadixAllocator:
    return RadixAllocator(64, BS, "dart", params=params)


def _serve(a: RadixAllocator, prompt: tuple[int, ...]) -> None:
    """A request enters the queue, runs and is cached."""
    hashes = a.hashes("", prompt)
    a.enqueue("", prompt, hashes)
    a.dequeue(hashes)
    got = a.allocate(len(prompt) + 1, "", prompt)
    assert got is not None
    a.release(got, prompt)


def _train(a: RadixAllocator) -> None:
    """Sessions whose second turns come back and whose first turns mostly do not."""
    for i in range(12):
        base = (100 + i, 100 + i)
        _serve(a, base)
        if i % 4 == 0:
            for t in range(3):
                base += (200 + t, 200 + t)
                _serve(a, base)
    a._tree.evict(a.sizes().cached, a._policy)  # an empty cache, what was learned kept


def test_dart_keeps_a_returning_sessions_tail_before_a_newer_first_turn() -> None:
    a = _dart()
    _train(a)
    chat = (10, 10, 11, 11)
    _serve(a, chat)
    _serve(a, chat + (12, 12))  # a second turn: likely to come back
    _serve(a, (20, 20, 21, 21))  # a newer first turn: likely not
    assert a._tree.evict(2, a._policy) == 2
    assert a._tree.peek("", chat + (12, 12))[1] == 3 and a._tree.peek("", (20, 20, 21, 21))[1] == 0
    a.check_integrity()


def test_queued_demand_outranks_any_predicted_return_and_active_is_never_evicted() -> None:
    a = _dart()
    _train(a)
    chat = (10, 10, 11, 11)
    _serve(a, chat)
    _serve(a, chat + (12, 12))
    single = (20, 20, 21, 21)
    _serve(a, single)
    a.enqueue("", single, a.hashes("", single))  # a first turn with a waiting request beats the session
    running = a.allocate(5, "", (30, 30, 31, 31))  # active: never a candidate
    assert running is not None
    assert a._tree.evict(a.sizes().cached - 2, a._policy) == 3
    assert a._tree.peek("", single)[1] == 2 and a._tree.peek("", chat)[1] == 0
    a.rollback(running)
    a.check_integrity()


def test_session_weight_zero_observes_nothing() -> None:
    a = _dart(dart_session_weight=0.0)
    _serve(a, (1, 1))
    assert a._demand.sessions is None


def test_a_sessions_own_blocks_count_its_last_turn_not_its_turns() -> None:
    # a chat's prefix, used by 3 turns, and its tail, used by 1: by heat the prefix ranks higher; with session
    # return both are reused only if the session comes back, so both count one use at its last turn
    a1 = (10, 10, 11, 11)
    a3 = a1 + (12, 12, 13, 13)
    for weight in (0.0, 4.0):
        alloc = _dart(dart_session_weight=weight)
        alloc._policy._tail_of = {}.get  # tail reach apart (tested below)
        _serve(alloc, SYS + a1)
        _serve(alloc, SYS + a1 + (12, 12))
        _serve(alloc, SYS + a3)
        _serve(alloc, SYS + (30, 30))  # another session: the system prompt is shared, its heat stays
        tree, policy = alloc._tree, alloc._policy
        prefix, tail = tree.peek("", SYS + a1)[0], tree.peek("", SYS + a3)[0]
        system = tree.peek("", SYS)[0]
        assert prefix is not None and tail is not None and system is not None and prefix is not tail
        history = [policy.key(n, len(n.blocks), tree.tick)[1] for n in (prefix, tail, system)]
        if weight:
            assert history[0] == history[1] < history[2]
        else:
            assert history[0] > history[1]


def test_a_first_turns_own_blocks_keep_the_popularity_of_their_contents() -> None:
    # RAG: a first turn's private tail ranks higher when its passage is one other prompts retrieve (elsewhere
    # in theirs) than when nobody else asked for it; until a session comes back, its blocks' uses and
    # contents' popularity count no turn of it twice
    x, y = (50, 50), (51, 51)
    history = []
    for popular in (True, False):
        a = _dart()
        a._policy._tail_of = {}.get  # tail reach apart (tested below)
        for i in range(4):
            _serve(a, x + (60 + i,) * BS)  # x at the front: shared by these sessions
            _serve(a, (70 + i,) * BS + (y if popular else (80 + i,) * BS))
        _serve(a, x + y)
        sessions, tree = a._demand.sessions, a._tree
        node = tree.peek("", x + y)[0]
        assert sessions is not None and node is not None and len(node.blocks) == 1
        assert _turns(sessions, a.hashes("", x + y)) == 1 and node.hashes[0] not in sessions.shared
        history.append(a._policy.key(node, 1, tree.tick)[1])
        a.check_integrity()
    assert history[0] > history[1] + math.log(4)


# ---------------------------------------------------- tail reach: admission control of tails


def test_tail_reach_learns_where_reuses_stop_and_records_only_the_latest_tails() -> None:
    t = TailReach()
    assert t.reach(0) == 0.5  # no data yet
    for _ in range(20):
        t.reused(depth=10, lo=8)  # reuses stop 2 blocks before the end
    t.reused(depth=200, lo=1)  # shares a system prompt only: says nothing about tails
    assert t.reach(0) < 0.1 and t.reach(1) < 0.1 and t.reach(4) > 0.9
    for d in (1, 5, 12, 40):
        t.reused(depth=100, lo=100 - d)
    first = list(range(100, 150))  # 50 positions: e = 49 .. 0, every bucket a different value
    t.record(first)
    assert len({t.value_of(h) for h in first}) == 7
    assert [t.value_of(h) for h in first] == pytest.approx([math.log(t.reach(49 - i)) for i in range(50)])
    t.record(first + list(range(200, 200 + SPAN)))  # a longer prompt covers the first in its body
    assert all(t.value_of(h) is None for h in first) and len(t) == SPAN
    short = list(range(500, 510))  # a prompt shorter than the span
    t.record(short)
    assert [t.value_of(h) for h in short] == pytest.approx([math.log(t.reach(9 - i)) for i in range(10)])
    assert len(t) == SPAN + 10


def test_dart_evicts_tails_that_reuses_never_reach_before_older_bodies() -> None:
    # documents asked twice with different 2-block questions: reuses stop 2 blocks before a prompt's end
    for tails in (True, False):
        a = _dart()
        if not tails:
            a._policy._tail_of = {}.get
        for i in range(12):
            doc = tuple(v for j in range(4) for v in (300 + 10 * i + j,) * BS)
            _serve(a, doc + (1, 1, 2, 2))
            _serve(a, doc + (3, 3, 4, 4))
        a._tree.evict(a.sizes().cached, a._policy)
        old, new = (5, 5, 6, 6, 7, 7, 8, 8), (15, 15, 16, 16, 17, 17, 18, 18)
        _serve(a, old + (1, 1, 2, 2))
        _serve(a, new + (1, 1, 2, 2))
        assert a._tree.evict(4, a._policy) == 4
        if tails:  # both questions go; both documents stay
            assert a._tree.peek("", old + (1, 1))[1] == 4 and a._tree.peek("", new + (1, 1))[1] == 4
        else:  # the older prompt goes first, past its question
            assert a._tree.peek("", old)[1] == 2 and a._tree.peek("", new + (1, 1, 2, 2))[1] == 6
        a.check_integrity()


def test_a_first_turn_learns_its_return_from_first_turns_of_its_length() -> None:
    s = _sessions(capacity=1000)
    for i in range(30):  # one-block questions never come back; 20-block documents always do
        _observe(s, (200 + i, 200 + i))
        doc = tuple(v for b in range(20) for v in (1000 * (i + 1) + b,) * BS)
        _observe(s, doc)
        _observe(s, doc + (9, 9))
    assert s.return_probability(1, depth=1) < 0.1 < 0.9 < s.return_probability(1, depth=20)
    assert s.return_probability(1, depth=20) > s.return_probability(1)  # the turn's own: both kinds mixed
    doc = _observe(s, tuple(v for b in range(20) for v in (7000 + b,) * BS))
    question = _observe(s, (300, 300))  # observed later, so it would rank higher on turn count alone
    long_value, short_value = s.value(doc[-1]), s.value(question[-1])
    assert long_value is not None and short_value is not None and long_value > short_value


def test_a_first_turn_also_learns_from_first_turns_asking_for_as_many_tokens() -> None:
    s = _sessions(capacity=1000)
    for i in range(30):  # same length; short answers come back, long ones never do
        short = block_hashes("", (100 + i,) * 4, BS)
        s.observe(short, max_new=4)
        s.observe(short + block_hashes("", (100 + i,) * 4 + (9, 9), BS)[2:], max_new=4)
        s.observe(block_hashes("", (500 + i,) * 4, BS), max_new=1000)
    first = s.return_probability(1, depth=2)  # output buckets (log4 of max_new): 4 -> 1, 1000 -> 5
    short, long = s.return_probability(1, depth=2, out=1), s.return_probability(1, depth=2, out=5)
    assert short > 0.8 > first > 0.2 > long
    assert s.return_probability(1, depth=2, out=3) == pytest.approx(first)  # an output bucket never seen
    # the length's evidence still counts: a length whose first turns never came back stays low
    for i in range(30):
        s.observe(block_hashes("", (900 + i,) * 40, BS), max_new=4)
    assert s.return_probability(1, depth=20, out=1) < s.return_probability(1, depth=2, out=1)
