"""CUDA graph runner: ladder, bucketing and padding on CPU; real capture and replay under the gpu marker."""

from __future__ import annotations

import pytest
import torch

from flash_kernels import reference
from flash_kernels.backends.flash_attn import gather_padded
from shard.cuda_graphs import (
    PAD_SLOT,
    CudaGraphRunner,
    StaticInputs,
    batch_size_ladder,
    padded_batch_size,
)

BLOCK_SIZE, KV_HEADS, HEAD_DIM, VOCAB = 4, 2, 8, 11


def test_ladder_doubles_then_steps_by_32_and_ends_at_the_max() -> None:
    assert batch_size_ladder(1) == [1]
    assert batch_size_ladder(8) == [1, 2, 4, 8]
    assert batch_size_ladder(100) == [1, 2, 4, 8, 16, 32, 64, 96, 100]
    assert batch_size_ladder(128) == [1, 2, 4, 8, 16, 32, 64, 96, 128]
    with pytest.raises(ValueError):
        batch_size_ladder(0)


def test_batches_pad_to_the_nearest_captured_size() -> None:
    ladder = [1, 2, 4, 8]
    assert [padded_batch_size(b, ladder) for b in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    assert padded_batch_size(9, ladder) is None


def test_load_copies_real_rows_and_pads_the_rest_with_the_scratch_slot() -> None:
    static = StaticInputs.allocate(max_batch=8, max_blocks=5, device="cpu")
    static.load(
        8, *_batch(8, width=5, seed=1, num_blocks=41)
    )  # leave stale rows behind, as a previous replay would
    ids, positions, slots, tables, seqlens = _batch(3, width=2, seed=2)
    static.load(4, ids, positions, slots, tables, seqlens)
    got_ids, got_pos, got_slots, got_tables, got_lens = static.rows(4)
    assert got_ids.tolist() == [*ids.tolist(), 0]
    assert got_pos.tolist() == [*positions.tolist(), 0]
    assert got_slots.tolist() == [*slots.tolist(), PAD_SLOT]
    assert got_lens.tolist() == [*seqlens.tolist(), 1]
    assert torch.equal(got_tables[:3, :2], tables)
    assert not got_tables[:3, 2:].any() and not got_tables[3].any()


def test_runner_runs_eagerly_until_captured() -> None:
    calls: list[int] = []

    def forward(ids, positions, slots, tables, seqlens):  # noqa: ANN001, ANN202
        calls.append(ids.shape[0])
        return torch.zeros(ids.shape[0], VOCAB)

    runner = CudaGraphRunner(forward, [1, 2, 4], max_blocks=4, device="cpu")
    assert not runner.captured
    assert runner(*_batch(3, width=2)).shape == (3, VOCAB)
    assert calls == [3]


def test_padding_rows_leave_real_rows_and_live_blocks_untouched() -> None:
    """A decode step run on the padded static buffers gives the real rows the eager logits and changes the
    pool only in block 0, the scratch block that the router never allocates."""
    pool = _pool(num_blocks=12)
    batch = _batch(3, width=3, seed=4)
    eager_pool = [c.clone() for c in pool]
    eager = _tiny_model(eager_pool)(*batch)
    static = StaticInputs.allocate(max_batch=8, max_blocks=4, device="cpu")
    static.load(8, *batch)
    padded = _tiny_model(pool)(*static.rows(8))
    torch.testing.assert_close(padded[:3], eager)
    for cache, eager_cache in zip(pool, eager_pool):
        assert torch.equal(cache[1:], eager_cache[1:])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_replay_matches_eager_across_sizes_and_inputs() -> None:
    device = torch.device("cuda")
    pool = _pool(num_blocks=48, device=device)
    eager_pool = [c.clone() for c in pool]
    runner = CudaGraphRunner(_tiny_model(pool), [1, 2, 4, 8], max_blocks=6, device=device)
    runner.capture()
    assert runner.captured
    for b, seed in ((3, 0), (8, 1), (1, 2), (5, 3), (11, 4)):
        batch = [t.to(device) for t in _batch(b, width=4, seed=seed, num_blocks=48)]
        out = runner(*batch).clone()
        torch.testing.assert_close(out, _tiny_model(eager_pool)(*batch))
        for cache, eager_cache in zip(pool, eager_pool):
            torch.testing.assert_close(cache[1:], eager_cache[1:])


def _batch(b: int, width: int, seed: int = 0, num_blocks: int = 12) -> tuple[torch.Tensor, ...]:
    """b decode rows with distinct blocks from 1.. (block 0 is the scratch block), lengths <= width blocks."""
    gen = torch.Generator().manual_seed(seed)
    tables = (1 + torch.randperm(num_blocks - 1, generator=gen)[: b * width]).view(b, width).int()
    seqlens = torch.randint(1, width * BLOCK_SIZE + 1, (b,), generator=gen, dtype=torch.int32)
    last = seqlens.long() - 1
    slots = tables.long().gather(1, (last // BLOCK_SIZE)[:, None]).squeeze(1) * BLOCK_SIZE + last % BLOCK_SIZE
    ids = torch.randint(0, VOCAB, (b,), generator=gen)
    return ids, last, slots, tables, seqlens


def _pool(num_blocks: int, device: torch.device | str = "cpu") -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(9)
    shape = (num_blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    return [torch.randn(shape, generator=gen).to(device) for _ in range(2)]


def _tiny_model(pool: list[torch.Tensor]):  # noqa: ANN202
    """One attention layer in device-only torch ops (capturable, unlike the reference's host-side loop):
    embed -> store K/V at the slots -> attend over each row's blocks, masked by seqlens_k -> logits."""
    gen = torch.Generator().manual_seed(5)
    device = pool[0].device
    embed = torch.randn(VOCAB, KV_HEADS * HEAD_DIM, generator=gen).to(device)
    head = torch.randn(KV_HEADS * HEAD_DIM, VOCAB, generator=gen).to(device)

    def forward(ids, positions, slots, tables, seqlens):  # noqa: ANN001, ANN202
        x = embed[ids] + positions[:, None].float() * 0.01
        kv = x.view(-1, KV_HEADS, HEAD_DIM)
        reference.store_kv(pool[0], pool[1], kv, kv * 0.5, slots)
        keys, values = gather_padded(pool[0], tables), gather_padded(pool[1], tables)  # (b, L, hk, d)
        scores = torch.einsum("bhd,blhd->bhl", kv, keys) * HEAD_DIM**-0.5
        visible = torch.arange(keys.shape[1], device=device)[None, :] < seqlens[:, None]
        scores = scores.masked_fill(~visible[:, None, :], float("-inf"))
        out = torch.einsum("bhl,blhd->bhd", scores.softmax(-1), values)
        return out.flatten(1) @ head

    return forward
