"""A decoder layer on a CPU as direct kernel calls: the modules' own path, minus its per-call Python.

The modules decide their kernels on every call (dtype, device and switch checks, row-count branches, nested
module calls); on a small model that costs a large share of a decode step beside its kernels
(docs/performance.md). :func:`attach` decides once, after loading, whether every layer takes the kernels the
modules would pick (fused q/k/v and gate/up, on AMX tiles for bf16, fp32 panels or torch's linear for fp32, the
fused RoPE + KV store, the one-pass norms, the ``sdpa`` backend); :func:`step_attention` decides once per step
whether this step does (rows, switches) and how it attends. Then :class:`DirectLayer` makes the same calls in
the same order on the same tensors, so results are bit-identical to the modules' path
(shard/tests/test_cpu_direct.py)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from flash_kernels.backends import cpu_decode, cpu_linear, cpu_panels, cpu_pointwise, cpu_prefill
from shard.layers.packed_linear import TILED_MAX_ROWS, TiledLinear
from shard.layers.panel_linear import PANEL_MAX_ROWS, PanelLinear

if TYPE_CHECKING:
    from shard.layers.attention import AttentionMetadata

# attend(q (n, h, d), key_cache, value_cache, meta, scale) -> (n, h, d)
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "AttentionMetadata", float], torch.Tensor]
_switch = {"on": True}


def set_enabled(on: bool) -> None:
    """Take the direct path where it applies (the default) or always the modules' path: for A/B runs."""
    _switch["on"] = on


def enabled() -> bool:
    """:func:`set_enabled`'s last setting (True by default)."""
    return _switch["on"]


class DirectLayer:
    """One ``shard.models.llama.DecoderLayer``'s tensors, read once; calling it runs the layer."""

    def __init__(self, layer: nn.Module) -> None:
        a = layer.self_attn
        self.eps = layer.input_layernorm.eps
        self.norms = _norms(layer)
        projections = _projections(layer)
        self.qkv, self.o, self.gate_up, self.down = map(_linear_of, projections)
        # the packed kernels take up to their row limit; beyond, the modules pad or fall back to F.linear
        self.max_rows = _MAX_ROWS.get(type(projections[0]))
        self.cos, self.sin = a.rotary.tables()
        self.heads, self.kv_heads, self.head_dim, self.scale = a.heads, a.kv_heads, a.shape.head_dim, a.scale

    def __call__(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        meta: AttentionMetadata,
        kv: tuple[torch.Tensor, torch.Tensor],
        attend: Attend,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As ``DecoderLayer.forward``: x, residual (n, hidden) bf16 or fp32 (residual None for the first layer,
        x then the embeddings) -> (MLP output, residual); ``residual`` is updated in place."""
        n = x.shape[0]
        if residual is None:
            h, residual = cpu_pointwise.rms_norm(x, self.norms[0], self.eps), x
        else:
            h = cpu_pointwise.add_rms_norm(x, residual, self.norms[0], self.eps)
        qkv = self.qkv(h).view(n, self.heads + 2 * self.kv_heads, self.head_dim)
        q = cpu_pointwise.rope_store_kv(qkv, meta.positions, self.cos, self.sin, kv[0], kv[1], meta.slots)
        out = attend(q, kv[0], kv[1], meta, self.scale)
        h = cpu_pointwise.add_rms_norm(self.o(out.reshape(n, -1)), residual, self.norms[1], self.eps)
        return self.down(cpu_pointwise.gated_silu(self.gate_up(h))), residual


_MAX_ROWS = {TiledLinear: TILED_MAX_ROWS, PanelLinear: PANEL_MAX_ROWS}


def _linear_of(m: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """x (n, in) -> (n, out), the kernel ``m.forward`` calls (within :attr:`DirectLayer.max_rows`), with the
    module's tensors read once: a :class:`TiledLinear`'s tiles, a :class:`PanelLinear`'s panels, or a plain
    ``nn.Linear``'s weight for torch's linear."""
    if type(m) is TiledLinear:
        return partial(cpu_linear.linear, packed=m.tiles, out_features=m.out_features, bias=m.bias)
    if type(m) is PanelLinear:
        return partial(cpu_panels.linear, panels=m.panels, out_features=m.out_features, bias=m.panel_bias)
    return partial(F.linear, weight=m.weight, bias=m.bias)


def attach(model: nn.Module) -> int:
    """Give ``model`` (a ``shard.models.llama.LlamaForCausalLM``) its :class:`DirectLayer` list
    (``model.direct_layers``) when every layer runs the kernels it mirrors: on a CPU, one process (no tensor
    parallelism), no q/k norm, q/k/v and gate/up fused, every projection on AMX tiles (bf16), in fp32 panels or
    a plain fp32 ``nn.Linear``, the ``sdpa`` attention backend (whose CPU kernels it calls), the fused pointwise
    ops. Returns how many layers got one (0: none, ``direct_layers`` stays None)."""
    layers = list(model.model.layers)
    if not layers or model.tp.enabled or not all(_mirrorable(layer) for layer in layers):
        return 0
    model.direct_layers = [DirectLayer(layer) for layer in layers]
    return len(layers)


def _projections(layer: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    """A decoder layer's q/k/v, o, gate/up and down projections, in the order of its calls."""
    a, mlp = layer.self_attn, layer.mlp
    return a.qkv_proj, a.o_proj, mlp.gate_up_proj, mlp.down_proj


def _norms(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    return layer.input_layernorm.weight, layer.post_attention_layernorm.weight


def _mirrorable(layer: nn.Module) -> bool:
    a, projections = layer.self_attn, _projections(layer)
    kinds = {type(p) for p in projections}
    fp32 = all(p.weight.dtype == torch.float32 for p in projections)
    one_kind = kinds == {TiledLinear} or (fp32 and kinds in ({PanelLinear}, {nn.Linear}))
    return (a.shape.qk_norm_eps is None and getattr(a.backend, "name", None) == "sdpa" and one_kind
            and all(cpu_pointwise.usable(w) for w in _norms(layer) + (a.qkv_proj.weight,)))


def step_attention(model: nn.Module, x: torch.Tensor, meta: AttentionMetadata) -> Attend | None:
    """The attention of this step when the direct path takes it (None: the modules' path): x (n, hidden) the
    embeddings. It does when the rows are within the packed linears' range (if packed) and the switches are on
    (this module's, the pointwise ops', the compiled kernels'). Decode steps call the decode kernel; prompt
    steps whose every piece has several rows call the compiled prefill kernel where it has a form for the
    model's head shape and dtype; other prompt steps (one-token pieces among longer ones, which the backend runs
    apart, or no form) call the backend's ``prefill``, as the modules do."""
    layers = model.direct_layers
    if (layers is None or not _switch["on"] or not cpu_pointwise.usable(x) or not cpu_decode.load()
            or (layers[0].max_rows is not None and x.shape[0] > layers[0].max_rows)):
        return None
    if meta.is_decode:
        return _decode
    c = model.config
    if meta.min_seqlen_q > 1 and cpu_prefill.form(c.heads // c.kv_heads, c.head_dim, x.dtype) is not None:
        return _prefill
    backend = model.model.layers[0].self_attn.backend
    return lambda q, kc, vc, m, scale: backend.prefill(
        q, kc, vc, m.block_tables, m.cu_seqlens_q, m.seqlens_k, m.max_seqlen_q, m.max_seqlen_k, scale)


def _decode(q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, m: AttentionMetadata, scale: float
            ) -> torch.Tensor:
    return cpu_decode.decode(q, kc, vc, m.block_tables, m.seqlens_k, m.max_seqlen_k, scale)


def _prefill(q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, m: AttentionMetadata, scale: float
             ) -> torch.Tensor:
    return cpu_prefill.prefill(q, kc, vc, m.block_tables, m.cu_seqlens_q, m.seqlens_k, scale)
