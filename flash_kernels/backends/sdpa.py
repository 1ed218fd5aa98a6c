"""CPU backend on torch's fused ``scaled_dot_product_attention`` (its flash kernel for CPUs, fp32 and bf16).

No Python loop over requests but for long prompt pieces on CPU; each call is a handful of batched ops:

    call                                  path
    prefill, bf16 on a CPU with AMX or    the compiled kernel of :mod:`.cpu_prefill` (every piece, one call;
      AVX512-BF16                         reads K/V in place; AMX tiles where the CPU has them); otherwise:
    prefill, one prompt, nothing cached   K/V gathered through the table; SDPA(is_causal=True, enable_gqa),
                                          on CPU bf16 / fp16 from 512 rows padded to a multiple of 64
                                          (see PAD_MIN_ROWS)
                                          (also when it is the only prompt piece beside one-token rows)
    prefill, one prompt after a cached    (CPU) two flash calls merged by their log-sum-exps: the piece over
      prefix                              the prefix (no mask) and over itself (is_causal); no mask built
    prefill, one-token rows               as decode (a decode merged with prompt pieces is not padded)
    prefill, several pieces, some long    (CPU) each piece of EACH_MIN_ROWS rows or more alone, as above; the
                                          others together, as below
    prefill, lengths far apart            one call per (query length, context length) class (log2 buckets)
    prefill, otherwise                    queries scattered into a padded (b, h, max_q, d) batch, K/V
                                          gathered into (b, hk, max_k, d); one SDPA with a boolean mask that
                                          is causal aligned bottom-right per request and hides padded keys
    decode                                the compiled kernel of :mod:`.cpu_decode` (reads K/V in place);
                                          without it: K/V gathered into (b, hk, max_k, d), the query heads
                                          of one KV head folded into the query-length axis (b, hk, group, d),
                                          SDPA with a length mask (no K/V repetition for grouped queries)

torch dispatches the SDPA calls to ``_scaled_dot_product_flash_attention_for_cpu`` (checked with
torch.profiler on torch 2.13: is_causal skips the upper triangle, so the cold path costs about half of a
masked call).
Padded query rows see every real key of their request, so no softmax row is empty; their output is dropped.
Blocks are gathered with ``index_select``; ``store_kv`` is one ``index_copy_`` per cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flash_kernels.backends import cpu_decode, cpu_prefill


def store_kv(
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    slots: torch.Tensor,
) -> None:
    """See ``AttentionBackend.store_kv``: key/value (n, hk, d) into caches (nb, bs, hk, d) at slots (n,)."""
    num_blocks, block_size, heads, dim = key_cache.shape
    key_cache.view(num_blocks * block_size, heads, dim).index_copy_(0, slots, key)
    value_cache.view(num_blocks * block_size, heads, dim).index_copy_(0, slots, value)


def gather_padded(cache: torch.Tensor, block_tables: torch.Tensor, max_seqlen_k: int) -> torch.Tensor:
    """cache (nb, bs, hk, d), block_tables (b, mb) int32 -> (b, hk, L, d), L = max_seqlen_k rounded up to a
    block (capped at mb * bs): each request's context in position order, tails past its length arbitrary."""
    block_size = cache.shape[1]
    width = min(-(-max_seqlen_k // block_size), block_tables.shape[1])
    batch = block_tables.shape[0]
    # NOTE: index_select, not advanced indexing: ~15x faster on CPU for this 5-D gather (torch 2.13).
    blocks = cache.index_select(0, block_tables[:, :width].reshape(-1))  # (b * width, bs, hk, d)
    return blocks.view(batch, width * block_size, *cache.shape[2:]).transpose(1, 2)


def _gather_one(cache: torch.Tensor, block_row: torch.Tensor, length: int) -> torch.Tensor:
    """One request's first ``length`` positions: (1, hk, length, d)."""
    block_size = cache.shape[1]
    blocks = cache.index_select(0, block_row[: -(-length // block_size)])
    return blocks.flatten(0, 1)[:length].transpose(0, 1).unsqueeze(0)


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
) -> torch.Tensor:
    """See ``AttentionBackend.prefill``: q (n, h, d) -> (n, h, d)."""
    q_lens = cu_seqlens_q[1:] - cu_seqlens_q[:-1]
    single = q_lens == 1
    if max_seqlen_q <= 1 or not bool(single.any()):
        args = (block_tables, cu_seqlens_q, seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale)
        return _prefill_many(q, key_cache, value_cache, *args)
    # A mixed batch (decodes merged with prompt pieces): one-token rows take the decode path, so they are not
    # padded to the longest prompt piece.
    out = torch.empty_like(q)
    ones = single.nonzero()[:, 0]
    rows = cu_seqlens_q[:-1][ones].long()
    out[rows] = decode(
        q[rows], key_cache, value_cache, block_tables[ones], seqlens_k[ones], max_seqlen_k, softmax_scale
    )
    multi = (q_lens > 1).nonzero()[:, 0]
    token_rows, cu_multi = _rows_of(q_lens, q_lens > 1, q.shape[0])
    out[token_rows] = _prefill_many(
        q[token_rows],
        key_cache,
        value_cache,
        block_tables[multi],
        cu_multi,
        seqlens_k[multi],
        max_seqlen_q,
        max_seqlen_k,
        softmax_scale,
    )
    return out


def _prefill_many(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float,
) -> torch.Tensor:
    """bf16 where the compiled kernel applies: every piece in one call of it. Otherwise one cold prompt:
    is_causal over its own K/V; one prompt after a cached prefix: prefix and piece apart; anything else: the
    padded, masked batch."""
    if cpu_prefill.usable(q, key_cache):
        return cpu_prefill.prefill(q, key_cache, value_cache, block_tables, cu_seqlens_q, seqlens_k, softmax_scale)
    n = q.shape[0]
    if len(seqlens_k) == 1:
        length = int(seqlens_k[0])
        if length == n or (n > 0 and q.device.type == "cpu"):
            return _prefill_one(q, key_cache, value_cache, block_tables[0], length, softmax_scale)
    if len(seqlens_k) > 1:
        q_lens = cu_seqlens_q[1:] - cu_seqlens_q[:-1]
        long = q_lens >= EACH_MIN_ROWS
        if q.device.type == "cpu" and bool(long.any()):
            return _prefill_long_apart(
                q, key_cache, value_cache, block_tables, cu_seqlens_q, q_lens, seqlens_k, long, softmax_scale
            )
        group = _length_class(q_lens) * 64 + _length_class(seqlens_k)
        classes = group.unique()
        if len(classes) > 1:
            return _prefill_grouped(q, key_cache, value_cache, block_tables, q_lens, seqlens_k, group, classes,
                                    softmax_scale)
    args = (block_tables, cu_seqlens_q, seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale)
    return _prefill_padded(q, key_cache, value_cache, *args)


# On CPU a piece of EACH_MIN_ROWS rows or more runs alone (is_causal, or two flash calls after its prefix),
# not in a masked batch, which computes every masked-out (query, key) pair and reads an (mq, mk) mask: two
# cold 1,551-token prompts took 20 ms a layer batched, 7.7-8.1 apart; from 128 rows apart costs less than
# batched (docs/performance.md). Many short pieces stay batched.
EACH_MIN_ROWS = 128


def _prefill_long_apart(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    q_lens: torch.Tensor,
    seqlens_k: torch.Tensor,
    long: torch.Tensor,
    softmax_scale: float,
) -> torch.Tensor:
    """q (n, h, d) -> (n, h, d): each ``long`` (b,) bool request's piece through :func:`_prefill_one` (its
    rows are one contiguous slice), the other requests' rows together through :func:`_prefill_many`. q_lens
    (b,): each request's rows, ``cu_seqlens_q``'s differences."""
    out = torch.empty_like(q)
    bounds, lengths = cu_seqlens_q.tolist(), seqlens_k.tolist()
    for i in long.nonzero()[:, 0].tolist():
        start, end = bounds[i], bounds[i + 1]
        out[start:end] = _prefill_one(q[start:end], key_cache, value_cache, block_tables[i], lengths[i],
                                      softmax_scale)
    short = (~long).nonzero()[:, 0]
    rows, cu_short = _rows_of(q_lens, ~long, q.shape[0])
    if len(rows):
        out[rows] = _prefill_many(
            q[rows], key_cache, value_cache, block_tables[short], cu_short, seqlens_k[short],
            int(q_lens[short].max()), int(seqlens_k[short].max()), softmax_scale,
        )
    return out


def _prefill_one(
    q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, block_row: torch.Tensor, length: int,
    scale: float,
) -> torch.Tensor:
    """One request's piece q (n, h, d) ending its context of ``length`` positions -> (n, h, d): is_causal when
    nothing is cached (any device), else the two flash calls after the prefix (CPU, n > 0)."""
    if q.shape[0] == length:
        return _prefill_cold(q, key_cache, value_cache, block_row, scale)
    return _prefill_after_prefix(q, key_cache, value_cache, block_row, length, scale)


def _rows_of(q_lens: torch.Tensor, keep: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows (of ``n``) of the requests where ``keep`` (b,) bool is set, and their cu_seqlens (int32)."""
    requests = torch.arange(len(q_lens), device=q_lens.device)
    owner = torch.repeat_interleave(requests, q_lens.long(), output_size=n)  # request of each row
    return keep[owner].nonzero()[:, 0], F.pad(q_lens[keep].cumsum(0, dtype=torch.int32), (1, 0))


# A cold bf16 / fp16 prompt on CPU of at least PAD_MIN_ROWS tokens is padded to a multiple of PAD_MULTIPLE
# rows: torch's CPU flash kernel JIT-builds an AMX brgemm kernel for each new size of its last query / key
# block (a few ms at 1,500-2,000 tokens, and real prompts have a new length almost every time); padded, the
# tails take PAD_MULTIPLE's few sizes. At most 1/8 more rows at 512; shorter prompts and pieces after a
# prefix are left alone (there the padding costs more than the build: docs/performance.md).
PAD_MIN_ROWS, PAD_MULTIPLE = 512, 64


def _prefill_cold(
    q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, block_row: torch.Tensor, scale: float
) -> torch.Tensor:
    """One prompt with nothing cached: q (n, h, d) -> (n, h, d), is_causal over its own K/V. Zero rows padded
    at the end change no real row: a causal query never sees a later key."""
    n = q.shape[0]
    k = _gather_one(key_cache, block_row, n)  # (1, hk, n, d)
    v = _gather_one(value_cache, block_row, n)
    qh = q.transpose(0, 1).unsqueeze(0)  # (1, h, n, d)
    jit = q.device.type == "cpu" and q.dtype != torch.float32  # fp32 runs a BLAS, no JIT'd kernels
    pad = -n % PAD_MULTIPLE if jit and n >= PAD_MIN_ROWS else 0
    if pad:
        qh, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (qh, k, v))
    out = F.scaled_dot_product_attention(qh, k, v, is_causal=True, scale=scale, enable_gqa=True)
    return out[0, :, :n].transpose(0, 1)


def _prefill_after_prefix(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_row: torch.Tensor,
    length: int,
    softmax_scale: float,
) -> torch.Tensor:
    """One prompt piece q (n, h, d) after a cached prefix of ``length - n`` positions -> (n, h, d).

    Two calls of the CPU flash kernel, merged by their log-sum-exps: every query over the whole prefix (no
    mask) and the piece over itself (is_causal). The one masked call it replaces also ran the kernel over a
    (n, length) mask and built that mask in every layer."""
    n = q.shape[0]
    k = _gather_one(key_cache, block_row, length)  # (1, hk, length, d)
    v = _gather_one(value_cache, block_row, length)
    prefix = length - n
    qh = q.transpose(0, 1).unsqueeze(0)  # (1, h, n, d)
    # NOTE: the aten op, not F.scaled_dot_product_attention, for its logsumexp (1, h, n) fp32; it reads
    # grouped K/V heads itself. Looked up by name: it is torch's underscored op, not one of ours.
    flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")
    past, past_lse = flash(qh, k[:, :, :prefix], v[:, :, :prefix], scale=softmax_scale)
    own, own_lse = flash(qh, k[:, :, prefix:], v[:, :, prefix:], is_causal=True, scale=softmax_scale)
    past_share = torch.sigmoid(past_lse - own_lse).unsqueeze(-1)  # exp(a) / (exp(a) + exp(b))
    out = torch.lerp(own.float(), past.float(), past_share).to(q.dtype)
    return out[0].transpose(0, 1)


def _length_class(lengths: torch.Tensor) -> torch.Tensor:
    """floor(log2(max(length, 1))) (int64): lengths within one class differ by less than 2x."""
    return torch.log2(lengths.clamp(min=1).float()).floor().long()


def _prefill_grouped(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    q_lens: torch.Tensor,
    seqlens_k: torch.Tensor,
    group: torch.Tensor,
    classes: torch.Tensor,
    softmax_scale: float,
) -> torch.Tensor:
    """Prompt pieces of very different lengths: one padded call per (query length, context length) class, so
    that padding costs at most 2x per axis. One padded batch costs b x max_q x max_k: a cold 1,550-token prompt
    padded 16 cached 50-token pieces up to 1,550 x 1,550 each (a 17-request step took 1.5-2 s, not ~0.1 s).
    group (b,) int64 class of each request; classes: its distinct values (a loop over at most a few classes)."""
    out = torch.empty_like(q)
    owner = torch.repeat_interleave(torch.arange(len(q_lens), device=q.device), q_lens.long(), output_size=q.shape[0])
    for c in classes.tolist():
        members = (group == c).nonzero()[:, 0]
        token_rows = (group[owner] == c).nonzero()[:, 0]
        if len(token_rows) == 0:  # only requests with no new tokens in this step
            continue
        m_lens, m_k = q_lens[members], seqlens_k[members]
        cu = F.pad(m_lens.cumsum(0, dtype=torch.int32), (1, 0))
        out[token_rows] = _prefill_many(
            q[token_rows], key_cache, value_cache, block_tables[members], cu, m_k,
            int(m_lens.max()), int(m_k.max()), softmax_scale,
        )
    return out


def _prefill_padded(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float,
) -> torch.Tensor:
    batch, device = len(seqlens_k), q.device
    starts = cu_seqlens_q[:-1].long()
    q_lens = cu_seqlens_q[1:].long() - starts
    col = torch.arange(max_seqlen_q, device=device)
    valid = col[None, :] < q_lens[:, None]  # (b, mq)
    rows = torch.where(valid, starts[:, None] + col[None, :], 0)  # padded rows read row 0, dropped below
    q_pad = q[rows].permute(0, 2, 1, 3)  # (b, h, mq, d)
    k = gather_padded(key_cache, block_tables, max_seqlen_k)
    v = gather_padded(value_cache, block_tables, max_seqlen_k)
    # Query j of request i sits at context position prefix_i + j; padded rows (j >= q_len) see all real keys.
    q_pos = (seqlens_k.long() - q_lens)[:, None] + col[None, :]  # (b, mq)
    k_pos = torch.arange(k.shape[2], device=device)
    causal = k_pos[None, None, :] <= q_pos[:, :, None]
    mask = causal & (k_pos[None, None, :] < seqlens_k.long()[:, None, None])
    out = F.scaled_dot_product_attention(
        q_pad, k, v, attn_mask=mask.unsqueeze(1), scale=softmax_scale, enable_gqa=True
    )  # (b, h, mq, d)
    return out.permute(0, 2, 1, 3)[valid] if batch else q.new_empty(q.shape)


def decode(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seqlens_k: torch.Tensor,
    max_seqlen_k: int,
    softmax_scale: float,
) -> torch.Tensor:
    """See ``AttentionBackend.decode``: q (b, h, d) -> (b, h, d)."""
    kernel = cpu_decode.decode if q.device.type == "cpu" and cpu_decode.load() else decode_gathered
    return kernel(q, key_cache, value_cache, block_tables, seqlens_k, max_seqlen_k, softmax_scale)


def decode_gathered(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seqlens_k: torch.Tensor,
    max_seqlen_k: int,
    softmax_scale: float,
) -> torch.Tensor:
    """Decode on SDPA over a gathered, padded copy of the context (the path without the compiled kernel)."""
    batch, heads, dim = q.shape
    kv_heads = key_cache.shape[2]
    k = gather_padded(key_cache, block_tables, max_seqlen_k)  # (b, hk, L, d)
    v = gather_padded(value_cache, block_tables, max_seqlen_k)
    mask = torch.arange(k.shape[2], device=q.device)[None, :] < seqlens_k.long()[:, None]  # (b, L)
    # NOTE: query head j reads KV head j // group: (b, h, d) -> (b, hk, group, d) pairs them without copies.
    out = F.scaled_dot_product_attention(
        q.view(batch, kv_heads, heads // kv_heads, dim),
        k,
        v,
        attn_mask=mask[:, None, None, :],
        scale=softmax_scale,
    )
    return out.reshape(batch, heads, dim)


class SdpaBackend:
    """torch SDPA as an :class:`~flash_kernels.api.AttentionBackend` (paths in the module docstring)."""

    name = "sdpa"

    def __init__(self) -> None:
        cpu_decode.load()  # NOTE: build / load the decode kernel now (shard start), not at the first decode

    store_kv = staticmethod(store_kv)
    prefill = staticmethod(prefill)
    decode = staticmethod(decode)
