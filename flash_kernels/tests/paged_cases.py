"""Builds random paged-attention cases for the kernel tests: a pool with permuted block tables, plus the same
K/V kept contiguous per request so a brute-force attention can serve as ground truth."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from flash_kernels import reference

# Cases are built on CPU (seeded) and then moved here: "cuda" with TRITON_INTERPRET=0 runs the same tests
# against the compiled kernels (see test_compiled_on_cuda.py).
DEVICE = torch.device(os.environ.get("FLASH_KERNELS_TEST_DEVICE", "cpu"))


@dataclass
class PagedCase:
    """One batch. q: (n, h, d); caches: (nb, bs, hk, d); block_tables: (b, mb) int32; cu_seqlens_q: (b+1,)
    int32; seqlens_k: (b,) int32; keys/values: per request (L_i, hk, d) contiguous copies of the pool's
    K/V."""

    q: torch.Tensor
    key_cache: torch.Tensor
    value_cache: torch.Tensor
    block_tables: torch.Tensor
    cu_seqlens_q: torch.Tensor
    seqlens_k: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    scale: float

    @property
    def max_seqlen_q(self) -> int:
        return int((self.cu_seqlens_q[1:] - self.cu_seqlens_q[:-1]).max())

    @property
    def max_seqlen_k(self) -> int:
        return int(self.seqlens_k.max())

    def prefill_args(self) -> tuple:
        return (
            self.q,
            self.key_cache,
            self.value_cache,
            self.block_tables,
            self.cu_seqlens_q,
            self.seqlens_k,
            self.max_seqlen_q,
            self.max_seqlen_k,
            self.scale,
        )

    def decode_args(self) -> tuple:
        """Only meaningful when every request has exactly one new token."""
        return (
            self.q,
            self.key_cache,
            self.value_cache,
            self.block_tables,
            self.seqlens_k,
            self.max_seqlen_k,
            self.scale,
        )


def make_case(
    requests: list[tuple[int, int]],
    block_size: int,
    kv_heads: int,
    group: int,
    head_dim: int,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> PagedCase:
    """``requests``: (cached prefix length, new tokens) per request. Blocks are handed out in a random order,
    and table entries past a request's last block hold random valid ids (the API says they are ignored)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [prefix + new for prefix, new in requests]
    needed = [-(-length // block_size) for length in lengths]
    num_blocks = sum(needed) + 2
    max_blocks = max(needed) + 1
    order = torch.randperm(num_blocks, generator=gen)
    tables = torch.randint(0, num_blocks, (len(requests), max_blocks), generator=gen, dtype=torch.int32)
    shape = (num_blocks, block_size, kv_heads, head_dim)
    key_cache = torch.randn(shape, generator=gen).to(dtype)
    value_cache = torch.randn(shape, generator=gen).to(dtype)
    keys, values, used = [], [], 0
    for i, length in enumerate(lengths):
        tables[i, : needed[i]] = order[used : used + needed[i]].int()
        used += needed[i]
        k = torch.randn(length, kv_heads, head_dim, generator=gen).to(dtype)
        v = torch.randn(length, kv_heads, head_dim, generator=gen).to(dtype)
        reference.store_kv(key_cache, value_cache, k, v, context_slots(tables[i], length, block_size))
        keys.append(k)
        values.append(v)
    new = [n for _, n in requests]
    q = torch.randn(sum(new), kv_heads * group, head_dim, generator=gen).to(dtype)
    cu = torch.tensor([0, *torch.tensor(new).cumsum(0).tolist()], dtype=torch.int32)
    seqlens = torch.tensor(lengths, dtype=torch.int32)
    move = [t.to(DEVICE) for t in (q, key_cache, value_cache, tables, cu, seqlens)]
    keys, values = [k.to(DEVICE) for k in keys], [v.to(DEVICE) for v in values]
    return PagedCase(*move, keys, values, head_dim**-0.5)


def context_slots(table_row: torch.Tensor, length: int, block_size: int) -> torch.Tensor:
    """Slots (int64) of positions 0..length-1 of a request whose blocks are ``table_row``."""
    positions = torch.arange(length)
    return table_row.long()[positions // block_size] * block_size + positions % block_size


def brute_force(case: PagedCase) -> torch.Tensor:
    """Ground truth: torch SDPA in fp64 per request on its contiguous K/V, mask aligned bottom-right."""
    cu = case.cu_seqlens_q.tolist()
    outs = []
    for i, (k, v) in enumerate(zip(case.keys, case.values)):
        q = case.q[cu[i] : cu[i + 1]]
        prefix = k.shape[0] - q.shape[0]
        q_pos = torch.arange(prefix, k.shape[0], device=k.device)[:, None]
        mask = torch.arange(k.shape[0], device=k.device)[None, :] <= q_pos
        out = F.scaled_dot_product_attention(
            q.double().transpose(0, 1),
            k.double().transpose(0, 1),
            v.double().transpose(0, 1),
            attn_mask=mask,
            scale=case.scale,
            enable_gqa=True,
        )
        outs.append(out.transpose(0, 1))
    return torch.cat(outs)


def mixed_requests(block_size: int) -> list[tuple[int, int]]:
    """A batch mixing a fresh prompt, a prefix of several blocks plus a short suffix, a prefix ending exactly
    on a block boundary with one new token, and a short prefix with a longer suffix."""
    return [(0, 9), (2 * block_size + 3, 4), (block_size, 1), (5, 17)]


def decode_requests(block_size: int) -> list[tuple[int, int]]:
    """Contexts of 1 token, of exactly one block, and of several blocks plus a partial one."""
    return [(0, 1), (block_size - 1, 1), (3 * block_size + 1, 1), (7, 1)]


TOLERANCE = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def assert_close(out: torch.Tensor, expected: torch.Tensor) -> None:
    """Same dtype and shape, values within the dtype's :data:`TOLERANCE`."""
    assert out.dtype == expected.dtype and out.shape == expected.shape
    tol = TOLERANCE[out.dtype]
    torch.testing.assert_close(out.float(), expected.float(), atol=tol, rtol=tol)
