"""ReplicaChooser: prefix affinity from each replica's tree and from prompts in flight, a conversation's home
when no tree holds its history, the imbalance bound under random churn (checked at every choice), and load
bookkeeping that returns to zero."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from prism_cache import block_hashes
from router_py.scheduling.replica_choice import HomeMemory, ReplicaChoiceParams, ReplicaChooser

BS = 4


class FakeTrees:
    """Per replica, the set of cached block hashes; peek counts the leading cached blocks (as the tree does)."""

    def __init__(self, n: int) -> None:
        self.cached: list[set[int]] = [set() for _ in range(n)]

    def peek(self, replica: int):
        def peek(namespace: str, hashes: Sequence[int]) -> int:
            n = 0
            for h in hashes:
                if h not in self.cached[replica]:
                    break
                n += 1
            return n * BS

        return peek

    def chooser(self, params: ReplicaChoiceParams = ReplicaChoiceParams()) -> ReplicaChooser:
        return ReplicaChooser([self.peek(r) for r in range(len(self.cached))], BS, params)

    def cache(self, replica: int, prompt: Sequence[int]) -> None:
        self.cached[replica].update(block_hashes("", prompt, BS))


def prompt(prefix: int, length: int, tail: int = 0) -> list[int]:
    """``length`` tokens: a shared head named by ``prefix``, the last 4 tokens varied by ``tail``."""
    return [prefix * 1000 + i for i in range(length - 4)] + [tail, tail + 1, tail + 2, tail + 3]


def test_goes_to_the_replica_that_caches_the_prefix() -> None:
    trees = FakeTrees(4)
    trees.cache(2, prompt(7, 64))
    chooser = trees.chooser()
    assert chooser.choose(0, "", prompt(7, 64, tail=99)) == 2


def test_a_replica_marked_down_gets_no_new_request_while_another_is_up() -> None:
    """Replica 2 caches the prompt but its shard is lost: the request goes to a live replica (it would wait for
    the restart, or be refused after --shard-recovery-timeout, while the others idle). All down: as usual."""
    trees = FakeTrees(3)
    trees.cache(2, prompt(7, 64))
    chooser = trees.chooser()
    assert chooser.choose(0, "", prompt(7, 64, tail=1), down=[False, False, True]) in (0, 1)
    assert chooser.choose(1, "", prompt(7, 64, tail=2), down=[True, True, True]) == 2
    chooser.loads[1].prefill_tokens = 10**7  # NOTE: the bound must be taken over the live replicas only
    assert chooser.choose(2, "", prompt(8, 64), down=[True, False, True]) == 1


def test_a_burst_of_one_new_prefix_goes_to_one_replica() -> None:
    trees = FakeTrees(4)
    chooser = trees.chooser()
    chosen = {chooser.choose(i, "", prompt(3, 400, tail=i)) for i in range(6)}
    assert len(chosen) == 1  # NOTE: nothing cached anywhere; the first one's prefix is in flight


def test_new_prefixes_go_where_the_least_was_written() -> None:
    chooser = FakeTrees(2).chooser(ReplicaChoiceParams(decode_tokens=0))
    assert chooser.choose(0, "", prompt(1, 500)) == 0
    chooser.finished(0)
    assert chooser.choose(1, "", prompt(2, 40)) == 1
    chooser.finished(1)
    assert chooser.choose(2, "", prompt(3, 40)) == 1  # replica 0 took 500 uncached tokens, replica 1 only 40


def test_an_evicted_conversation_goes_back_to_its_home() -> None:
    chooser = FakeTrees(3).chooser(ReplicaChoiceParams(decode_tokens=0, home_stride_tokens=BS))
    first = prompt(1, 400)
    home = chooser.choose(0, "", first)
    chooser.finished(0)  # NOTE: never cached anywhere (as if evicted): only the routing is remembered
    # the home took the most uncached tokens, so without the home rule this turn would go elsewhere
    assert chooser.choose(1, "", first + list(range(50))) == home
    chooser.finished(1)
    # a prompt sharing less than half with what was routed there goes where the least was written
    assert chooser.choose(2, "", first[:100] + list(range(5000, 5400))) != home


def test_a_cached_prefix_outranks_the_home() -> None:
    trees = FakeTrees(2)
    chooser = trees.chooser(ReplicaChoiceParams(home_stride_tokens=BS))
    first = prompt(1, 400)
    assert chooser.choose(0, "", first) == 0
    chooser.finished(0)
    trees.cache(1, first[:40])  # NOTE: replica 1 really holds 40 tokens of it, replica 0 (the home) none
    assert chooser.choose(1, "", first + [1, 2, 3, 4]) == 1


def test_home_memory_forgets_the_least_recently_routed_and_counts_the_live_window() -> None:
    memory = HomeMemory(stride=1, entries=3, replicas=3, window=2)
    memory.routed([1, 2], 0)
    assert memory.live == [2, 0, 0]
    memory.routed([3], 1)
    memory.routed([1], 2)  # NOTE: prefix 1 routed again (to replica 2): now the most recent
    assert memory.live == [0, 1, 1]  # the window holds the last 2 routed: 3 (replica 1) and 1 (replica 2)
    memory.routed([4], 1)  # a 4th entry: 2, the least recently routed, is forgotten
    assert memory.home([1], 0) == 2 and memory.home([3], 0) == 1 and memory.home([4], 0) == 1
    assert memory.home([1, 2], 1) is None  # only 1 block remembered, not more than 1
    assert memory.home([9, 1], 0) is None  # NOTE: prefixes are matched from the first block
    assert memory.live == [0, 1, 1]


def _after_a_big_live_conversation(capacity_tokens: list[int]) -> int:
    """Replica 0 holds a 800-token conversation that keeps coming back (cached: it writes almost nothing);
    replica 1 just took a new 40-token prompt. Where does the next new prompt go?"""
    trees = FakeTrees(2)
    params = ReplicaChoiceParams(decode_tokens=0, written_half_life=1, home_stride_tokens=BS)
    chooser = ReplicaChooser([trees.peek(0), trees.peek(1)], BS, params, capacity_tokens)
    big = prompt(1, 800)
    assert chooser.choose(0, "", big) == 0
    trees.cache(0, big)
    for i in range(1, 6):
        assert chooser.choose(i, "", big[:-4] + [i] * 4) == 0
    assert chooser.choose(6, "", prompt(6, 40)) == 1
    return chooser.choose(7, "", prompt(7, 40))


def test_a_new_prefix_goes_where_the_live_working_set_and_writes_are_least() -> None:
    assert _after_a_big_live_conversation([10_000, 10_000]) == 1  # replica 0's 800 live tokens count
    assert _after_a_big_live_conversation([]) == 0  # NOTE: capacity unknown: by written alone, replica 0


def test_unrelated_prompts_on_idle_replicas_rotate() -> None:
    chooser = FakeTrees(3).chooser()
    picks = []
    for i in range(6):
        picks.append(chooser.choose(i, "", prompt(i, 40)))
        chooser.finished(i)
    assert picks == [0, 1, 2, 0, 1, 2]


def test_no_cache_request_goes_by_load_only() -> None:
    trees = FakeTrees(2)
    trees.cache(0, prompt(5, 64))
    chooser = trees.chooser()
    assert chooser.choose(0, "", prompt(9, 20)) == 0  # idle tie: the rotation starts at 0
    assert chooser.choose(1, "", prompt(5, 64, tail=1)) == 0  # the cache wins over a lighter replica
    assert chooser.choose(2, "", prompt(5, 64, tail=2), hashes=[]) == 1  # cache ignored: least loaded


def test_the_bound_overrides_affinity() -> None:
    trees = FakeTrees(2)
    trees.cache(0, prompt(1, 800))
    chooser = trees.chooser(ReplicaChoiceParams(max_imbalance_tokens=1000, decode_tokens=0))
    chooser.choose(0, "", prompt(2, 1200))  # replica 0 gets 1,200 tokens of prefill load
    assert chooser.load(0) == 1200 and chooser.load(1) == 0
    assert chooser.choose(1, "", prompt(1, 800, tail=5)) == 1  # cached on 0, but 0 is 1,200 ahead


@pytest.mark.parametrize("seed", range(3))
def test_imbalance_bound_holds_and_loads_return_to_zero_under_churn(seed: int) -> None:
    rng = random.Random(seed)
    n, params = 4, ReplicaChoiceParams(max_imbalance_tokens=2000, decode_tokens=50)
    trees = FakeTrees(n)
    chooser = trees.chooser(params)
    live: dict[int, tuple[list[int], bool]] = {}  # id -> (prompt, prefilled)
    for i in range(3000):
        if live and rng.random() < 0.45:
            rid = rng.choice(list(live))
            p, prefilled = live[rid]
            replica = chooser.replica_of(rid)
            assert replica is not None
            if not prefilled:
                chooser.first_token(rid)
                trees.cache(replica, p)
                live[rid] = (p, True)
            else:
                chooser.finished(rid)
                del live[rid]
            continue
        head = 0 if rng.random() < 0.7 else rng.randrange(1, 4)  # NOTE: skewed, so affinity alone would pile up
        p = prompt(head, rng.choice((16, 200, 900)), tail=rng.randrange(1000))
        before = [chooser.load(r) for r in range(n)]
        replica = chooser.choose(i, "", p)
        added = chooser.load(replica) - before[replica] - params.decode_tokens
        assert before[replica] == min(before) or before[replica] + added <= min(before) + 2000
        live[i] = (p, False)
    for rid in list(live):
        chooser.finished(rid)
    assert all(chooser.load(r) == 0 for r in range(n))
    assert all(not load.inflight and load.running == 0 for load in chooser.loads)


def test_repeated_or_unknown_notifications_are_ignored() -> None:
    chooser = FakeTrees(2).chooser()
    chooser.choose(0, "", prompt(1, 40))
    chooser.first_token(0)
    chooser.first_token(0)
    chooser.finished(0)
    chooser.finished(0)
    chooser.finished(42)
    assert chooser.load(0) == chooser.load(1) == 0
    with pytest.raises(ValueError, match="already routed"):
        chooser.choose(1, "", prompt(1, 40))
        chooser.choose(1, "", prompt(1, 40))
