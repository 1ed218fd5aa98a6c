"""fcfs + lru must behave like TGI's queue and radix allocator (tgi-compat 2.2-2.4)."""

from __future__ import annotations

from router_py.scheduling.registry import make_scheduler
from router_py.scheduling.interface import SchedRequest, Scheduler, SchedulerConfig


def _sched(
    num_blocks: int | None = 64, block_size: int = 4, speculate: int = 0, support_chunking: bool = True
) -> Scheduler:
    return make_scheduler(
        SchedulerConfig(
            "fcfs",
            "lru",
            True,
            num_blocks,
            block_size,
            speculate=speculate,
            support_chunking=support_chunking,
        )
    )


def _req(rid: int, prompt: list[int], max_new: int = 4, use_prefix_cache: bool = True) -> SchedRequest:
    return SchedRequest(rid, prompt, max_new, float(rid), use_prefix_cache=use_prefix_cache)


def test_reserves_lifetime_and_block_zero_is_never_handed_out() -> None:
    s = _sched(num_blocks=8, block_size=4, speculate=2)
    s.enqueue(_req(1, list(range(10)), max_new=5), 0.0)
    plan = s.next_batch(0.0, 100, 100)
    assert plan is not None
    (adm,) = plan.admissions
    assert len(adm.slots) == 10 + 5 + 2 - 1
    assert len(adm.blocks) == 4 and 0 not in adm.blocks
    assert adm.slots == tuple(b * 4 + i for b in adm.blocks for i in range(4))[:16]
    assert (adm.cache_len, adm.chunk_len, plan.prefill_tokens, plan.max_blocks) == (0, None, 10, 4)


def test_prefix_hit_and_whole_prompt_cached_recomputes_its_last_block() -> None:
    """A prompt cached whole reuses the full blocks before its last token: the block holding the last token
    (always computed) is never a shared one, so two requests of one prompt in a batch write no slot twice."""
    s = _sched()
    s.enqueue(_req(1, list(range(8))), 0.0)
    assert s.next_batch(0.0, 100, 100) is not None
    s.release(1)
    s.enqueue(_req(2, list(range(8))), 0.0)
    s.enqueue(_req(4, list(range(8))), 0.0)
    s.enqueue(_req(3, list(range(6)) + [99, 98, 97]), 0.0)
    plan = s.next_batch(0.0, 100, 100)
    assert plan is not None
    assert [a.cache_len for a in plan.admissions] == [4, 4, 4]
    assert plan.prefill_tokens == 4 + 4 + 5
    first, second = plan.admissions[:2]
    assert first.blocks[0] == second.blocks[0] and first.blocks[1] != second.blocks[1]
    written = [set(a.slots[a.cache_len:]) for a in plan.admissions]
    assert not any(written[i] & written[j] for i in range(3) for j in range(i + 1, 3))
    stats = s.cache_stats()
    assert (stats["prompt_tokens_queried"], stats["prompt_tokens_hit"]) == (8 + 8 + 8 + 9, 12)


def _hit_after(s: Scheduler, rid: int, prompt: list[int]) -> int:
    s.enqueue(_req(rid, prompt), 0.0)
    plan = s.next_batch(0.0, 100, 100)
    assert plan is not None
    s.release(rid)
    return plan.admissions[0].cache_len


def test_generated_tokens_are_cached_after_the_prompt_all_but_the_last() -> None:
    """The last generated token was never fed back (no KV): 6 prompt tokens + [7, 8] cache 7 tokens, one full
    block of 4; + [7, 8, 9, 10, 11] cache 10, two blocks; a follow-up that sends them back reuses them."""
    s = _sched()
    s.enqueue(_req(1, [1, 2, 3, 4, 5, 6], max_new=8), 0.0)
    assert s.next_batch(0.0, 100, 100) is not None
    s.release(1, generated=[7, 8])
    assert _hit_after(s, 2, list(range(1, 14))) == 4
    s.enqueue(_req(3, [1, 2, 3, 4, 5, 6], max_new=8), 0.0)
    assert s.next_batch(0.0, 100, 100) is not None
    s.release(3, generated=[7, 8, 9, 10, 11])
    assert _hit_after(s, 4, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 21]) == 8
    for sched, computed in ((_sched(speculate=2), True), (_sched(), False)):  # only the prompt's blocks
        sched.enqueue(_req(1, [1, 2, 3, 4, 5, 6], max_new=8), 0.0)
        plan = sched.next_batch(0.0, 100, 100)
        assert plan is not None
        sched.prefill_done(1)
        sched.release(1, computed=computed, generated=[7, 8, 9, 10, 11])
        assert _hit_after(sched, 2, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 21]) == 4


def test_prompts_shorter_than_a_block_count_as_queried_with_no_hit() -> None:
    s = _sched(block_size=4)
    s.enqueue(_req(1, [5, 6, 7]), 0.0)  # no full block: nothing to match or insert, still queried
    s.enqueue(_req(2, [5, 6], use_prefix_cache=False), 0.0)  # opted out: not queried
    plan = s.next_batch(0.0, 100, 100)
    assert plan is not None and [a.cache_len for a in plan.admissions] == [0, 0]
    s.release(1)
    s.release(2)
    stats = s.cache_stats()
    assert (stats["prompt_tokens_queried"], stats["prompt_tokens_hit"], stats["blocks_cached"]) == (3, 0, 0)


def test_decoder_input_details_neither_matches_nor_inserts() -> None:
    s = _sched()
    s.enqueue(_req(1, list(range(8)), use_prefix_cache=False), 0.0)
    assert s.next_batch(0.0, 100, 100) is not None
    s.release(1)
    assert s.cache_stats()["blocks_cached"] == 0
    s.enqueue(_req(2, list(range(8))), 0.0)
    assert s.next_batch(0.0, 100, 100) is not None
    s.release(2)
    s.enqueue(_req(3, list(range(8)), use_prefix_cache=False), 0.0)
    plan = s.next_batch(0.0, 100, 100)
    assert plan is not None and plan.admissions[0].cache_len == 0


def test_chunking_cuts_the_last_request_to_the_rounded_budget() -> None:
    s = _sched(block_size=4)
    s.enqueue(_req(1, list(range(6))), 0.0)
    s.enqueue(_req(2, list(range(100, 120))), 0.0)
    s.enqueue(_req(3, list(range(200, 204))), 0.0)
    plan = s.next_batch(0.0, 13, 1000)  # rounded up to 16
    assert plan is not None
    assert [(a.request.id, a.chunk_len) for a in plan.admissions] == [(1, None), (2, 10)]
    assert plan.prefill_tokens == 16 and plan.max_tokens == 6
    assert s.waiting_count() == 1


def test_without_chunking_an_over_budget_request_stays_at_the_head() -> None:
    s = _sched(block_size=4, support_chunking=False)
    s.enqueue(_req(1, list(range(6))), 0.0)
    s.enqueue(_req(2, list(range(100, 120))), 0.0)
    s.enqueue(_req(3, list(range(200, 202))), 0.0)
    plan = s.next_batch(0.0, 16, 1000)
    assert plan is not None and [a.request.id for a in plan.admissions] == [1]
    free_before = s.cache_stats()["blocks_free"]
    plan = s.next_batch(0.0, 16, 1000)
    assert plan is None and s.waiting_count() == 2
    assert s.cache_stats()["blocks_free"] == free_before  # the failed allocation was undone


def test_returns_none_when_memory_is_short_and_keeps_order() -> None:
    s = _sched(num_blocks=5, block_size=4)  # 4 usable blocks = 16 tokens
    s.enqueue(_req(1, list(range(8)), max_new=5), 0.0)  # 12 tokens, 3 blocks
    s.enqueue(_req(2, list(range(50, 54)), max_new=1), 0.0)  # 1 block: would fit, but FCFS stops at 1
    s.enqueue(_req(3, list(range(60, 64)), max_new=1), 0.0)
    plan = s.next_batch(0.0, 100, 100)
    assert plan is not None and [a.request.id for a in plan.admissions] == [1, 2]
    assert s.next_batch(0.0, 100, 100) is None
    s.release(1)
    plan = s.next_batch(0.0, 100, 100)
    assert plan is not None and [a.request.id for a in plan.admissions] == [3]


def test_min_and_max_size() -> None:
    s = _sched()
    for i in range(3):
        s.enqueue(_req(i, [i] * 4), 0.0)
    assert s.next_batch(0.0, 100, 100, min_size=4) is None
    assert s.next_batch(0.0, 100, 100, max_size=0) is None
    free = s.cache_stats()["blocks_free"]
    assert s.next_batch(0.0, 8, 100, min_size=3) is None  # only 2 fit the budget: undone
    assert s.cache_stats()["blocks_free"] == free and s.waiting_count() == 3
    plan = s.next_batch(0.0, 100, 100, max_size=2)
    assert plan is not None and [a.request.id for a in plan.admissions] == [0, 1]


def test_zero_budgets_and_empty_queue_return_none() -> None:
    s = _sched()
    assert s.next_batch(0.0, 100, 100) is None
    s.enqueue(_req(1, [1, 2]), 0.0)
    assert s.next_batch(0.0, 0, 100) is None
    assert s.next_batch(0.0, 100, 0) is None


def test_padded_mode_uses_tgi_padded_budget() -> None:
    s = _sched(num_blocks=None)
    s.enqueue(_req(1, [1] * 10, max_new=5), 0.0)
    s.enqueue(_req(2, [2] * 4, max_new=5), 0.0)
    s.enqueue(_req(3, [3] * 12, max_new=5), 0.0)
    plan = s.next_batch(0.0, 20, 1000)  # (1+1)*10 = 20 fits, (2+1)*12 = 36 does not
    assert plan is not None
    assert [a.request.id for a in plan.admissions] == [1, 2]
    assert all(a.blocks == () and a.slots == () and a.cache_len == 0 for a in plan.admissions)
    assert (plan.prefill_tokens, plan.max_tokens) == (20, 30)
    plan = s.next_batch(0.0, 100, 16)  # 12 prefill + 5 decode > 16
    assert plan is None
    s.release(1)
    assert s.cache_stats()["blocks_total"] == 0


def test_cancel_and_release_are_safe() -> None:
    s = _sched()
    s.enqueue(_req(1, [1, 2, 3, 4, 5]), 0.0)
    s.enqueue(_req(2, [1, 2, 3, 4, 6]), 0.0)
    assert s.cancel(1) and not s.cancel(1) and s.waiting_count() == 1
    plan = s.next_batch(0.0, 100, 100)
    assert plan is not None and [a.request.id for a in plan.admissions] == [2]
    assert not s.cancel(2)
    s.release(2)
    s.release(2)
    stats = s.cache_stats()
    assert stats["blocks_free"] + stats["blocks_cached"] == stats["blocks_total"]
