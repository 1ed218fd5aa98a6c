"""Triton paged attention: store K/V by slot, ragged causal prefill over a cached prefix, and decode.

One attention kernel serves prefill and decode. A program owns one request, one KV head and a tile of that
request's new query tokens; it walks the request's context in tiles of ``BLOCK_N`` keys, reading every key
through the block table (so any block size 1..256 works, and a prefix hit costs the same as fresh keys), and
keeps a flash-attention online softmax in fp32.

GQA: the query heads that share a KV head are folded into the tile's rows (row = token * GROUP_P + head), so
each K/V tile is loaded once for the whole group. For decode that turns a (1 x d) @ (d x N) vector product
into a (GROUP_P x d) @ (d x N) matrix product and reads each KV byte once per step.

Causal tiles: keys below the tile's first query position are visible to every row and run without masks;
only the last few key tiles (the diagonal) pay for the causal mask.

Under ``TRITON_INTERPRET=1`` these kernels run on CPU tensors (that is how the tests run them).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# Keys per KV tile. With 128-row prefill tiles and head dim 128 in 16 bit this is the classic flash-attention
# tile on Ampere/Hopper; see _tiles for the rest.
BLOCK_N = 64
# tl.dot on a GPU needs every dimension >= 16.
MIN_DOT = 16


@dataclass(frozen=True)
class Tiles:
    """Launch shape: rows of a query tile (tokens x heads of one group), warps, software-pipeline stages, keys
    per KV tile."""

    rows: int
    num_warps: int
    num_stages: int
    keys: int = BLOCK_N


# Shared memory per block (opt-in) from which prefill takes 256-row tiles: with 64 keys, 3 stages and a 16-bit
# head dim of 128 they need ~160 KB (the Q tile plus three K/V stages), which Hopper-class devices (227 KB)
# hold with room for Triton's own buffers and A100-class ones (163 KB) do not.
BIG_TILE_SHARED_MEMORY = 200 * 1024


def _tiles(dtype: torch.dtype, block_d: int, decode: bool, shared_memory: int = 0) -> Tiles:
    """Decode uses the fewest rows tl.dot takes (its work is reading K/V). A "wide" key row (fp32 at d=128, or
    16 bit at d=256) doubles every tile's bytes, so it gets fewer rows and stages to stay within ~160 KB of
    shared memory (A100's limit). 16-bit prefill on a device with ``shared_memory`` bytes per block of at
    least BIG_TILE_SHARED_MEMORY takes 256-row tiles (1.32x the 128-row tiles on an H200: docs/performance.md,
    the tile sweep)."""
    wide = torch.finfo(dtype).bits // 8 * block_d > 256
    if decode:
        return Tiles(rows=MIN_DOT, num_warps=4, num_stages=2 if wide else 3)
    if wide:
        return Tiles(rows=64, num_warps=4, num_stages=1)
    if dtype.itemsize == 2 and shared_memory >= BIG_TILE_SHARED_MEMORY:
        return Tiles(rows=256, num_warps=8, num_stages=3)
    return Tiles(rows=128, num_warps=8, num_stages=3)


@functools.cache
def _shared_memory(device: torch.device) -> int:
    """Opt-in shared memory per block of a CUDA device in bytes; 0 elsewhere (the Triton interpreter on CPU)."""
    if device.type != "cuda":
        return 0
    return getattr(torch.cuda.get_device_properties(device), "shared_memory_per_block_optin", 0)


@triton.jit
def _store_kv_kernel(
    key,  # (n, hk, d)
    value,  # (n, hk, d)
    key_cache,  # (nb, bs, hk, d)
    value_cache,  # (nb, bs, hk, d)
    slots,  # (n,) int64
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_cb,
    stride_cs,
    stride_ch,
    stride_vcb,
    stride_vcs,
    stride_vch,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    """One program per token: copy its (hk, d) K and V rows into the pool at its slot."""
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots + token).to(tl.int64)
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_D)[None, :]
    mask = (heads < NUM_HEADS) & (dims < HEAD_DIM)
    k = tl.load(key + token * stride_kt + heads * stride_kh + dims, mask=mask)
    v = tl.load(value + token * stride_vt + heads * stride_vh + dims, mask=mask)
    tl.store(key_cache + block * stride_cb + offset * stride_cs + heads * stride_ch + dims, k, mask=mask)
    tl.store(value_cache + block * stride_vcb + offset * stride_vcs + heads * stride_vch + dims, v, mask=mask)


@triton.jit
def _attend_kv_tile(
    acc,
    m_i,
    l_i,
    q,
    q_pos,
    start,
    kv_end,
    key_cache,
    value_cache,
    table_row,
    head_offset_k,
    head_offset_v,
    stride_kb,
    stride_ks,
    stride_vb,
    stride_vs,
    dims,
    dim_valid,
    scale_log2,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """Fold keys start..start+BLOCK_N of one request into the running (acc, m_i, l_i) of its rows.

    MASKED=False is only used for tiles every row may fully see (all keys < kv_end and <= every q_pos).
    DOT_FP32: q arrives in fp32 and both products run in IEEE fp32 (see ``_dot_in_fp32``).
    """
    key_pos = start + tl.arange(0, BLOCK_N)
    if MASKED:
        key_valid = key_pos < kv_end
    else:
        # NOTE: a constant all-true mask folds away, leaving plain (vectorisable) loads in the hot loop.
        key_valid = tl.full([BLOCK_N], 1, tl.int1)
    # NOTE: each key finds its block through the table, so a tile may straddle blocks of any size.
    block = tl.load(table_row + key_pos // BLOCK_SIZE, mask=key_valid, other=0).to(tl.int64)
    offset = (key_pos % BLOCK_SIZE).to(tl.int64)
    k_ptrs = key_cache + block * stride_kb + offset * stride_ks + head_offset_k
    v_ptrs = value_cache + block * stride_vb + offset * stride_vs + head_offset_v
    k = tl.load(k_ptrs[None, :] + dims[:, None], mask=key_valid[None, :] & dim_valid[:, None], other=0.0)
    if DOT_FP32:
        qk = tl.dot(q, k.to(tl.float32), input_precision="ieee")
    else:
        qk = tl.dot(q, k)
    qk = qk * scale_log2
    if MASKED:
        visible = (key_pos[None, :] <= q_pos[:, None]) & key_valid[None, :]
        qk = tl.where(visible, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_ptrs[:, None] + dims[None, :], mask=key_valid[:, None] & dim_valid[None, :], other=0.0)
    if DOT_FP32:
        acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i


@triton.jit
def _paged_attention_kernel(
    q,  # (n, h, d)
    key_cache,  # (nb, bs, hk, d)
    value_cache,  # (nb, bs, hk, d)
    out,  # (n, h, d)
    block_tables,  # (b, mb) int32
    cu_seqlens_q,  # (b + 1,) int32
    seqlens_k,  # (b,) int32
    scale_log2,  # softmax_scale * log2(e): the kernel works in base 2
    stride_qt,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_ot,
    stride_oh,
    stride_bt,
    GROUP: tl.constexpr,
    GROUP_P: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """Grid (query tiles, requests, kv heads). Rows = BLOCK_M new tokens x GROUP_P heads of one KV group."""
    tile = tl.program_id(0)
    req = tl.program_id(1)
    kv_head = tl.program_id(2)
    q_start = tl.load(cu_seqlens_q + req)
    q_len = tl.load(cu_seqlens_q + req + 1) - q_start
    if tile * BLOCK_M >= q_len:
        return
    seqlen_k = tl.load(seqlens_k + req)
    prefix = seqlen_k - q_len

    rows = tl.arange(0, BLOCK_M * GROUP_P)
    token = tile * BLOCK_M + rows // GROUP_P
    head = kv_head * GROUP + rows % GROUP_P
    row_valid = (token < q_len) & (rows % GROUP_P < GROUP)
    q_pos = prefix + token
    dims = tl.arange(0, BLOCK_D)
    if HEAD_DIM == BLOCK_D:
        dim_valid = tl.full([BLOCK_D], 1, tl.int1)
    else:
        dim_valid = dims < HEAD_DIM

    q_rows = (q_start + token).to(tl.int64) * stride_qt + head * stride_qh
    q_tile = tl.load(
        q + q_rows[:, None] + dims[None, :], mask=row_valid[:, None] & dim_valid[None, :], other=0.0
    )
    if DOT_FP32:
        q_tile = q_tile.to(tl.float32)

    acc = tl.zeros([BLOCK_M * GROUP_P, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M * GROUP_P], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M * GROUP_P], dtype=tl.float32)

    table_row = block_tables + req.to(tl.int64) * stride_bt
    head_offset_k = kv_head.to(tl.int64) * stride_kh
    head_offset_v = kv_head.to(tl.int64) * stride_vh
    # Keys 0..prefix + first token are visible to every row of the tile: no mask needed below full_end.
    full_end = ((prefix + tile * BLOCK_M + 1) // BLOCK_N) * BLOCK_N
    kv_end = tl.minimum(seqlen_k, prefix + (tile + 1) * BLOCK_M)
    for start in range(0, full_end, BLOCK_N):
        acc, m_i, l_i = _attend_kv_tile(
            acc,
            m_i,
            l_i,
            q_tile,
            q_pos,
            start,
            kv_end,
            key_cache,
            value_cache,
            table_row,
            head_offset_k,
            head_offset_v,
            stride_kb,
            stride_ks,
            stride_vb,
            stride_vs,
            dims,
            dim_valid,
            scale_log2,
            BLOCK_SIZE,
            BLOCK_N,
            False,
            DOT_FP32,
        )
    # NOTE: the first masked tile holds key 0 whenever full_end == 0, so no row's running max stays -inf.
    for start in range(full_end, kv_end, BLOCK_N):
        acc, m_i, l_i = _attend_kv_tile(
            acc,
            m_i,
            l_i,
            q_tile,
            q_pos,
            start,
            kv_end,
            key_cache,
            value_cache,
            table_row,
            head_offset_k,
            head_offset_v,
            stride_kb,
            stride_ks,
            stride_vb,
            stride_vs,
            dims,
            dim_valid,
            scale_log2,
            BLOCK_SIZE,
            BLOCK_N,
            True,
            DOT_FP32,
        )

    o_rows = (q_start + token).to(tl.int64) * stride_ot + head * stride_oh
    result = acc / l_i[:, None]
    tl.store(
        out + o_rows[:, None] + dims[None, :],
        result.to(out.dtype.element_ty),
        mask=row_valid[:, None] & dim_valid[None, :],
    )


def store_kv(
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    slots: torch.Tensor,
) -> None:
    """See ``AttentionBackend.store_kv``: caches (nb, bs, hk, d); key/value (n, hk, d) of the caches' dtype,
    last dim contiguous; slots (n,) int64."""
    n, heads, dim = key.shape
    if n == 0:
        return
    key, value = _last_dim_contiguous(key), _last_dim_contiguous(value)
    _store_kv_kernel[(n,)](
        key,
        value,
        key_cache,
        value_cache,
        slots,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        key_cache.stride(0),
        key_cache.stride(1),
        key_cache.stride(2),
        value_cache.stride(0),
        value_cache.stride(1),
        value_cache.stride(2),
        NUM_HEADS=heads,
        HEAD_DIM=dim,
        BLOCK_H=triton.next_power_of_2(heads),
        BLOCK_D=triton.next_power_of_2(dim),
        BLOCK_SIZE=key_cache.shape[1],
    )


def prefill(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float,
    *,
    tiles: Tiles | None = None,
) -> torch.Tensor:
    """See ``AttentionBackend.prefill``. ``max_seqlen_q`` sizes the grid; ``max_seqlen_k`` is not needed
    (each program reads its own length from ``seqlens_k``); ``tiles`` overrides the launch shape (the tile
    sweep of ``flash_kernels.bench.tiles``)."""
    return _launch(
        q,
        key_cache,
        value_cache,
        block_tables,
        cu_seqlens_q,
        seqlens_k,
        max_seqlen_q,
        softmax_scale,
        decode=False,
        tiles=tiles,
    )


def decode(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seqlens_k: torch.Tensor,
    max_seqlen_k: int,
    softmax_scale: float,
) -> torch.Tensor:
    """See ``AttentionBackend.decode``. Reads no host value derived from the batch's lengths, so it can be
    captured in a CUDA graph and replayed with other ``seqlens_k``/``block_tables`` contents."""
    cu_seqlens_q = torch.arange(q.shape[0] + 1, dtype=torch.int32, device=q.device)
    return _launch(
        q,
        key_cache,
        value_cache,
        block_tables,
        cu_seqlens_q,
        seqlens_k,
        1,
        softmax_scale,
        decode=True,
    )


def _launch(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    softmax_scale: float,
    decode: bool,
    tiles: Tiles | None = None,
) -> torch.Tensor:
    """Size the tiles for this head layout (or take ``tiles``) and launch the attention kernel; q (n, h, d),
    out (n, h, d)."""
    n, heads, dim = q.shape
    kv_heads = key_cache.shape[2]
    q = _last_dim_contiguous(q)
    out = torch.empty_like(q)
    if n == 0:
        return out
    group = heads // kv_heads
    group_p = triton.next_power_of_2(group)
    block_d = max(MIN_DOT, triton.next_power_of_2(dim))
    tiles = tiles or _tiles(q.dtype, block_d, decode, _shared_memory(q.device))
    block_m = max(1, tiles.rows // group_p)
    grid = (triton.cdiv(max_seqlen_q, block_m), block_tables.shape[0], kv_heads)
    _paged_attention_kernel[grid](
        q,
        key_cache,
        value_cache,
        out,
        block_tables,
        cu_seqlens_q,
        seqlens_k,
        softmax_scale * 1.4426950408889634,
        q.stride(0),
        q.stride(1),
        key_cache.stride(0),
        key_cache.stride(1),
        key_cache.stride(2),
        value_cache.stride(0),
        value_cache.stride(1),
        value_cache.stride(2),
        out.stride(0),
        out.stride(1),
        block_tables.stride(0),
        GROUP=group,
        GROUP_P=group_p,
        HEAD_DIM=dim,
        BLOCK_D=block_d,
        BLOCK_M=block_m,
        BLOCK_N=tiles.keys,
        BLOCK_SIZE=key_cache.shape[1],
        DOT_FP32=_dot_in_fp32(q.dtype),
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
    )
    return out


def _dot_in_fp32(dtype: torch.dtype) -> bool:
    """fp32 inputs keep full precision (no tf32) so they match the reference closely. bf16 also goes through
    fp32 under the interpreter, whose numpy ``dot`` cannot multiply bf16 (it returns garbage); on a GPU bf16
    and fp16 use the tensor cores with fp32 accumulation."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1")


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    """The kernels address the head dim with unit stride; other strides are passed in."""
    return x if x.stride(-1) == 1 else x.contiguous()


class TritonBackend:
    """The Triton kernels as an :class:`~flash_kernels.api.AttentionBackend`; any block size 1..256, fp32 /
    fp16 / bf16, any head dim (padded to a power of two inside the tile, masked), any GQA ratio."""

    name = "triton"
    store_kv = staticmethod(store_kv)
    prefill = staticmethod(prefill)
    decode = staticmethod(decode)
