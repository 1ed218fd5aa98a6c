"""Load one tensor-parallel rank's slice of every checkpoint tensor, reading only that slice from safetensors.

Which dimension a tensor is split on follows from the rank's parameter shape against the checkpoint's: the one
dimension where they differ (q/k/v/gate/up rows, o_proj/down_proj columns, embedding/LM-head vocab rows);
tensors of equal shape (norms) are read whole.
"""

from __future__ import annotations

from pathlib import Path

import torch

from shard.tensor_parallel import TensorParallel


def load_rank_weights(model: torch.nn.Module, files: list[Path], tp: TensorParallel) -> None:
    """Copy this rank's slice of each checkpoint tensor into ``model`` (built for ``tp``) by HF name.

    Raises:
        ValueError: a parameter missing from the checkpoint (tied lm_head excepted), or a checkpoint tensor
            whose shape is not the parameter's, nor world times it (rounded up) along one dimension.
    """
    from safetensors import safe_open

    handles = [safe_open(str(f), framework="pt") for f in files]
    where = {name: h for h in handles for name in h.keys()}
    tied = getattr(getattr(model, "config", None), "tie_embeddings", False)
    missing: list[str] = []
    for name, param in model.state_dict(keep_vars=True).items():
        if tied and name == "lm_head.weight":  # NOTE: the embedding itself (as HF ties it), loaded as such
            continue
        if name not in where:
            missing.append(name)
            continue
        with torch.no_grad():
            param.copy_(_rank_slice(name, where[name].get_slice(name), tuple(param.shape), tp))
    if missing:
        raise ValueError(f"checkpoint lacks parameters: {missing[:8]}{' ...' if len(missing) > 8 else ''}")


def _rank_slice(name: str, full, shape: tuple[int, ...], tp: TensorParallel) -> torch.Tensor:
    """This rank's part of checkpoint tensor ``full`` (a safetensors slice) for a parameter of ``shape``."""
    full_shape = tuple(full.get_shape())
    split = [d for d, (a, b) in enumerate(zip(shape, full_shape)) if a != b]
    if len(full_shape) != len(shape) or len(split) > 1:
        raise ValueError(f"{name}: checkpoint shape {full_shape} does not fit this shard's {shape}")
    if not split:
        return full[:]
    d = split[0]
    part, size = shape[d], full_shape[d]
    if -(-size // tp.world) != part:
        raise ValueError(f"{name}: checkpoint dim {d} of {size} is not {tp.world} x {part} (rounded up)")
    start, end = tp.rank * part, min((tp.rank + 1) * part, size)
    index = tuple(slice(start, end) if i == d else slice(None) for i in range(len(shape)))
    piece = full[index]
    if piece.shape[d] < part:  # NOTE: the last rank's vocab rows past the vocabulary are zero padding
        pad = list(piece.shape)
        pad[d] = part - piece.shape[d]
        piece = torch.cat([piece, piece.new_zeros(pad)], dim=d)
    return piece
