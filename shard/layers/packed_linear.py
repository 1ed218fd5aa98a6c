"""bf16 linears on CPU with their weights prepacked once: for AMX tiles where the CPU has them, else oneDNN.

``F.linear`` on a bf16 CPU tensor calls oneDNN, which reorders the weight into its blocked layout on every
call; for a small model's decode step that reordering costs more than the matmul (docs/performance.md). Here
the weight is packed once at load, in one of two forms:

- :class:`TiledLinear`, on CPUs with AMX (``flash_kernels.backends.cpu_linear``): up to ``TILED_MAX_ROWS``
  rows run our tile kernel on its packed copy, with no per-call set-up (oneDNN's costs 15-25 us a call, more
  than a decode step's product); more rows (prompts) run ``F.linear``. fp32 sums rounded once, as oneDNN's,
  but in another order: checked at pack time to be within one bf16 rounding step of the fp32 product.
- :class:`PackedLinear`, elsewhere: reordered for oneDNN (``torch.ops.mkldnn._reorder_linear_weight``, the op
  torch's own compiler uses when it freezes CPU weights), each call ``_linear_pointwise`` on it: the same
  oneDNN kernel's result, checked equal to ``F.linear`` at pack time.

fp32 linears are :mod:`shard.layers.panel_linear`'s (``F.linear`` runs MKL there, not oneDNN). Cost: the
packed copy is held beside the original weight (kept for ``state_dict`` and tied embeddings), so the linears'
memory doubles; packing is skipped (logged) when that copy would take more than a quarter of the host's
available memory, and ``PRISM_PACK_LINEARS=0`` turns it off.
"""

from __future__ import annotations

import functools
import logging
import os

import torch
from torch import nn
from torch.nn import functional as F

from flash_kernels.backends import cpu_linear

log = logging.getLogger(__name__)
ENV = "PRISM_PACK_LINEARS"
# NOTE: above this many rows (a prefill) F.linear is used: for the packed weight a new row count's first call
# costs 1-2 ms more per linear at ~1,000 rows, more than packing saves there.
PACKED_MAX_ROWS = 256
# NOTE: up to here the tile kernel beats F.linear (oneDNN) on the peer model's shapes at 2 threads; at ~1,000
# rows they meet (docs/performance.md)
TILED_MAX_ROWS = 768
# Row counts warmed at load (:func:`warm_packed_linears`): every decode batch size up to WARM_ROWS, then the
# buckets above it (:func:`bucket_rows`) up to PACKED_MAX_ROWS, within a budget of multiply-adds so that a
# large model warms only its smallest sizes. Above WARM_ROWS rows are padded to their bucket: oneDNN builds a
# primitive per new row count (about 1 ms per linear at 70-250 rows on an AMX CPU, 3-4 ms at 1,650, against
# 0.2 / 0.6 ms for the products), and a step mixing decode rows and prompt pieces has a new count every time.
WARM_ROWS, WARM_MACS = 64, 2 * 10**10
PREFILL_WARM_MACS = 4 * WARM_MACS  # all 32 prompt buckets to 4,096 rows of the peer model: ~1 s at load


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` (same parameters, same state_dict) whose forward uses ``packed``, a non-persistent
    buffer holding the weight in oneDNN's layout."""

    packed: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) bf16 -> (..., out); the leading dims are flattened into rows."""
        rows = x.numel() // x.shape[-1]
        if rows <= WARM_ROWS:
            return self._packed(x)
        padded = _pad_rows(x.reshape(rows, x.shape[-1]), bucket_rows(rows))
        out = F.linear(padded, self.weight, self.bias) if rows > PACKED_MAX_ROWS else self._packed(padded)
        return out[:rows].view(*x.shape[:-1], self.out_features)

    def _packed(self, x: torch.Tensor) -> torch.Tensor:
        return _mkldnn("_linear_pointwise")(x, self.packed, self.bias, "none", [None], "")


class TiledLinear(nn.Linear):
    """An ``nn.Linear`` (same parameters, same state_dict) whose forward runs up to ``TILED_MAX_ROWS`` rows on
    ``tiles``, a non-persistent buffer holding the weight packed for AMX tiles (``cpu_linear.pack``)."""

    tiles: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) bf16 -> (..., out); the leading dims are flattened into rows."""
        if x.dim() == 2 and x.shape[0] <= TILED_MAX_ROWS:  # a layer's rows: no reshapes
            return cpu_linear.linear(x, self.tiles, self.out_features, self.bias)
        rows = x.numel() // x.shape[-1]
        flat = x.reshape(rows, x.shape[-1])
        if rows <= TILED_MAX_ROWS:
            out = cpu_linear.linear(flat, self.tiles, self.out_features, self.bias)
        else:
            out = F.linear(_pad_rows(flat, bucket_rows(rows)), self.weight, self.bias)[:rows]
        return out.view(*x.shape[:-1], self.out_features)


def bucket_rows(rows: int) -> int:
    """``rows`` rounded up to a multiple of an eighth of its power of two (at least 16): at most 8 row counts
    per octave above 128, at most 12.5% of padding (a prompt piece of 208 tokens is not padded)."""
    step = max(16, 1 << max(rows.bit_length() - 4, 0))
    return -(-rows // step) * step


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x (n, in) with zero rows appended up to ``rows``: rows are computed independently, so the padding
    changes no real row (checked bit for bit in the tests)."""
    if x.shape[0] == rows:
        return x
    # NOTE: not F.pad: it fills the whole output then copies (2-3x the time of one copy, per linear per step)
    out = x.new_empty(rows, x.shape[1])
    out[: x.shape[0]].copy_(x)
    out[x.shape[0]:].zero_()
    return out


def pack_cpu_linears(model: nn.Module, available_bytes: int | None = None) -> int:
    """Turn every bf16 CPU ``nn.Linear`` of ``model`` into a :class:`PackedLinear`, in place; how many were
    packed (0 when off, when torch lacks the ops, when a packed result differs from ``F.linear``, or when the
    copies would exceed a quarter of ``available_bytes``, default the host's available memory)."""
    linears = packable(model, torch.bfloat16, available_bytes) if torch.backends.mkldnn.is_available() else []
    if not linears:
        return 0
    first = cpu_linear.pack(linears[0].weight) if cpu_linear.usable() else None
    if first is not None and _tiles_are_close(linears[0], first):
        for m in linears:
            tiles = first if m is linears[0] else cpu_linear.pack(m.weight)
            m.register_buffer("tiles", tiles, persistent=False)
            m.__class__ = TiledLinear
        log.info("%d bf16 linears packed for AMX tiles (%s=0 turns it off, %s=0 uses oneDNN)", len(linears),
                 ENV, cpu_linear.ENV)
        return len(linears)
    if not _packing_is_exact(linears[0]):
        return 0
    for m in linears:
        m.register_buffer("packed", _pack(m.weight), persistent=False)
        m.__class__ = PackedLinear
    log.info("%d bf16 linears prepacked for oneDNN (%s=0 turns it off)", len(linears), ENV)
    return len(linears)


def warm_packed_linears(model: nn.Module, rows: int = WARM_ROWS, budget_macs: int = WARM_MACS) -> int:
    """Call every distinct packed linear shape of ``model`` once per row count 1..``rows``, then once per
    bucket (:func:`bucket_rows`) that forward pads to, up to ``PACKED_MAX_ROWS`` (zeros, bf16), so that
    oneDNN builds its primitive for each decode batch size and small mixed step now rather than in a live
    step (2-5 ms each on the peer model, paid by the first steps at each new batch size: docs/performance.md).
    Stops at the first row count that would take the calls past ``budget_macs``. Call with the intra-op
    thread count the decode steps use (a primitive is kept per thread count). Returns the row counts warmed."""
    # NOTE: the buckets forward pads to: those of row counts above WARM_ROWS, whatever ``rows`` is
    counts = list(range(1, rows + 1)) + sorted({bucket_rows(n) for n in range(WARM_ROWS + 1, PACKED_MAX_ROWS + 1)})
    return _warm(model, counts, budget_macs, (PackedLinear,))  # a TiledLinear has nothing to build there


def warm_prefill_linears(model: nn.Module, max_rows: int, budget_macs: int = PREFILL_WARM_MACS) -> int:
    """As :func:`warm_packed_linears` for the buckets of prompt pieces that run ``F.linear`` (above
    ``PACKED_MAX_ROWS`` rows, or ``TILED_MAX_ROWS`` for tiles) up to ``max_rows``'s: a new bucket's first step
    cost 6-8 ms more at 1,500-2,000 rows on the peer model. Call with the thread count of prefill steps.
    Returns the row counts warmed."""
    floor = TILED_MAX_ROWS if any(isinstance(m, TiledLinear) for m in model.modules()) else PACKED_MAX_ROWS
    counts = sorted({bucket_rows(n) for n in range(floor + 1, max_rows + 1)})
    return _warm(model, counts, budget_macs, (PackedLinear, TiledLinear))


def _warm(model: nn.Module, counts: list[int], budget_macs: int, kinds: tuple[type, ...]) -> int:
    """One call of every distinct linear shape of ``kinds`` per row count, smallest first, within budget."""
    shapes = {(m.in_features, m.out_features, m.bias is not None): m
              for m in model.modules() if isinstance(m, kinds)}
    if not shapes:
        return 0
    per_row = sum(i * o for i, o, _ in shapes)
    spent = 0
    with torch.inference_mode():
        for done, n in enumerate(counts):
            spent += n * per_row
            if spent > budget_macs:
                return done
            for (i, _, _), m in shapes.items():
                m(torch.zeros(n, i, dtype=m.weight.dtype))
    return len(counts)


def available_memory() -> int:
    """The host's available memory in bytes (the budget a packed copy of the weights is held against)."""
    from shard.kv_cache import free_memory

    return free_memory(torch.device("cpu"))


def packable(model: nn.Module, dtype: torch.dtype, available_bytes: int | None) -> list[nn.Linear]:
    """The CPU ``nn.Linear`` modules of ``model`` with ``dtype`` weights (fused parts left out), or none when
    ``PRISM_PACK_LINEARS=0`` or when a packed copy of their weights would take over a quarter of
    ``available_bytes`` (default the host's available memory; logged)."""
    if os.environ.get(ENV, "1") == "0":
        return []
    linears = [
        m for m in model.modules()
        # NOTE: a fused part is not called any more (shard.layers.fusion)
        if type(m) is nn.Linear and m.weight.device.type == "cpu" and m.weight.dtype == dtype
        and not getattr(m, "fused", False)
    ]
    extra = sum(m.weight.numel() * m.weight.element_size() for m in linears)
    available = available_memory() if available_bytes is None else available_bytes
    if extra > available // 4:
        log.info("not packing %s linears: the copies (%d MiB) would take over a quarter of the %d MiB available",
                 dtype, extra >> 20, available >> 20)
        return []
    return linears


@functools.cache
def _mkldnn(name: str):
    """torch's (underscored) oneDNN op ``name``; looked up by name: it is torch's private op, not ours."""
    return getattr(torch.ops.mkldnn, name)


def _pack(w: torch.Tensor) -> torch.Tensor:
    return _mkldnn("_reorder_linear_weight")(w.detach(), None)


def _tiles_are_close(m: nn.Linear, tiles: torch.Tensor) -> bool:
    """Whether the tile kernel's result on ``tiles`` (``m``'s packed weight) is within one bf16 rounding step
    of the fp32 product here (it sums in another order than oneDNN, so the last bit may differ; anything more
    is a broken build or CPU)."""
    for rows in (1, 33):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(rows, m.in_features, dtype=m.weight.dtype, generator=gen)
        exact = F.linear(x.float(), m.weight.float(), None if m.bias is None else m.bias.float())
        got = cpu_linear.linear(x, tiles, m.out_features, m.bias).float()
        # NOTE: one bf16 step (2^-7 relative at most), plus the fp32 sums' order against the terms' magnitude
        bound = exact.abs() * 2**-7 + (x.float().abs() @ m.weight.float().abs().T) * 2**-16
        if not bool(((got - exact).abs() <= bound).all()):
            log.warning("AMX tile linears differ from the fp32 product here; prepacking for oneDNN instead")
            return False
    return True


def _packing_is_exact(m: nn.Linear) -> bool:
    try:
        packed = _pack(m.weight)
        for rows in (1, 33):
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(rows, m.in_features, dtype=m.weight.dtype, generator=gen)
            got = _mkldnn("_linear_pointwise")(x, packed, m.bias, "none", [None], "")
            if not torch.equal(got, F.linear(x, m.weight, m.bias)):
                log.info("prepacked bf16 linears differ from F.linear here; not packing")
                return False
    except (RuntimeError, AttributeError) as err:  # ops missing or refused in this torch build
        log.info("bf16 linear prepacking unavailable (%s); not packing", err)
        return False
    return True
