"""Session lottery (EXPERIMENT, sixth pass): on a loop of sessions larger than the cache, a stable draw per
session keeps a subset cached for the whole loop where recency keeps none."""

from __future__ import annotations

import pytest

from prism_cache import RadixAllocator, session_return
from prism_cache.session_lottery import GapMedian, lottery

BS = 2


def _loop_hits(rounds: int = 10, sessions: int = 24) -> list[int]:
    """Tokens hit per round when ``sessions`` chats of 4-block prompts each come back in turn (round robin,
    one return horizon of observed blocks per round), a cache of 64 blocks holding about half of them."""
    a = RadixAllocator(65, BS, "dart")
    per_round = []
    for _ in range(rounds):
        hits = 0
        for s in range(sessions):
            prompt = tuple(v for b in range(4) for v in (1000 * b + s,) * BS)
            hashes = a.hashes("", prompt)
            a.enqueue("", prompt, hashes, session=f"chat{s}")
            a.dequeue(hashes)
            got = a.allocate(len(prompt) + 1, "", prompt)
            assert got is not None
            hits += got.prefix_len
            a.release(got, prompt)
        per_round.append(hits)
    a.check_integrity()
    return per_round


def test_a_stable_draw_keeps_a_subset_over_a_loop_larger_than_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    # recency (the session's clock) evicts every chat just before it comes back, once the learned return
    # probabilities have settled; a draw spanning 8 horizons keeps about 14 of the 24 chats for good
    assert _loop_hits()[-3:] == [0, 0, 0]
    monkeypatch.setattr(session_return, "LOT_SPAN", 8.0)
    assert min(_loop_hits()[-3:]) >= 100


def test_the_draw_is_stable_and_uniform() -> None:
    draws = [lottery(k) for k in range(20000)]
    assert draws == [lottery(k) for k in range(20000)]
    assert all(0.0 <= u < 1.0 for u in draws) and abs(sum(draws) / len(draws) - 0.5) < 0.01


def test_the_gap_median_is_the_median_bucket() -> None:
    g = GapMedian()
    assert g.median(7.0) == 7.0
    for gap in (3, 100, 110, 120, 5000):
        g.add(gap)
    assert 64 <= g.median(0.0) < 128


def test_the_adaptive_span_is_zero_for_falling_hazards_and_positive_for_a_loop() -> None:
    from prism_cache.session_lottery import GAP_BUCKETS, best_span

    loop = [0] * GAP_BUCKETS
    loop[12] = 100  # every gap in [2048, 4096): a loop
    assert best_span(loop, 100, 1000.0) > 0  # hold some for the whole gap rather than all for a third of it
    falling = [0] * GAP_BUCKETS
    for b in range(4, 16):
        falling[b] = 2 ** (16 - b)  # most returns soon, fewer later: recency is right
    assert best_span(falling, sum(falling), 1000.0) == 0.0
