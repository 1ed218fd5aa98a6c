"""Load a local HuggingFace model folder: config.json, *.safetensors weights, tokenizer, EOS ids.

The same code loads the demo models and real checkpoints (single-file or sharded safetensors).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from flash_kernels.api import AttentionBackend
from shard.layers import cpu_direct
from shard.layers.fusion import fuse_projections
from shard.layers.packed_linear import pack_cpu_linears, warm_packed_linears
from shard.layers.panel_linear import pack_panel_linears
from shard.layers.rotary import Rotary, rope_type
from shard.models import model_class
from shard.models.llama import DecoderConfig, LlamaForCausalLM
from shard.tensor_parallel import SINGLE, TensorParallel

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready to run, with what the shard needs around it."""

    model: LlamaForCausalLM
    hf_config: dict
    tokenizer: object  # tokenizers.Tokenizer
    eos_token_ids: frozenset[int]
    dtype: torch.dtype
    device: torch.device

    @property
    def max_position_embeddings(self) -> int:
        return self.model.config.max_positions


def read_config(folder: Path, rope_factor: float | None = None) -> dict:
    """config.json; ``rope_factor`` (TGI's ``--rope-factor``) replaces its rope_scaling with linear scaling by
    that factor, as TGI does."""
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a model folder: config.json is missing")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if rope_factor is not None:
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": rope_factor}
    return cfg


def decoder_config(folder: Path, rope_factor: float | None = None) -> DecoderConfig:
    """The decoder shape of the model folder's config.json (``rope_factor``: see :func:`read_config`).

    Raises:
        ValueError: unsupported architecture (as :func:`load_model`). FileNotFoundError: not a model folder.
    """
    cfg = read_config(folder, rope_factor)
    _model_class(cfg)
    return DecoderConfig.from_hf(cfg)


def _model_class(cfg: dict) -> type[LlamaForCausalLM]:
    return model_class(cfg.get("architectures") or [cfg.get("model_type", "?")])


def safetensors_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files, as transformers picks them: model.safetensors, else the files named by
    model.safetensors.index.json, else every *.safetensors. NOTE: Mistral's folders also hold
    consolidated.safetensors, the same weights under other names: read as well, it doubled the host memory."""
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
        return [folder / name for name in sorted(set(names))]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    return files


def load_weights(model: torch.nn.Module, files: list[Path]) -> None:
    """Copy checkpoint tensors into ``model`` by HF name.

    With tied embeddings a stored ``lm_head.weight`` is ignored: transformers ties the head to the input
    embeddings, whatever the checkpoint holds.

    Raises:
        ValueError: a parameter missing from the checkpoint (tied lm_head excepted).
    """
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    tied = getattr(model.config, "tie_embeddings", False)
    if tied:  # NOTE: lm_head IS the embedding (as HF ties it); a stored copy must not overwrite it
        state.pop("lm_head.weight", None)
    missing, _unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (tied and m == "lm_head.weight")]
    if missing:
        raise ValueError(f"checkpoint lacks parameters: {missing[:8]}{' ...' if len(missing) > 8 else ''}")


def eos_ids(folder: Path, cfg: dict, tokenizer: object) -> frozenset[int]:
    """EOS ids from generation_config.json, else config.json, else tokenizer_config's eos_token."""
    for name in ("generation_config.json", "config.json"):
        path = folder / name
        value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id") if path.is_file() else None
        if value is not None:
            return frozenset(value if isinstance(value, list) else [value])
    tc = folder / "tokenizer_config.json"
    token = json.loads(tc.read_text(encoding="utf-8")).get("eos_token") if tc.is_file() else None
    if isinstance(token, dict):
        token = token.get("content")
    token_id = tokenizer.token_to_id(token) if token else None
    return frozenset() if token_id is None else frozenset([token_id])


def _initialised(
    cls: type, cfg: dict, backend: AttentionBackend, tp: TensorParallel, dtype: torch.dtype, device: torch.device
) -> LlamaForCausalLM:
    """The model with torch's default initialisation, built on ``device`` in ``dtype`` (no fp32 copy on the
    host: an 8B config would need 32 GB there). RoPE tables are computed in fp32 whatever the default."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return cls.from_hf_config(cfg, backend, tp)
    finally:
        torch.set_default_dtype(previous)


def load_model(
    folder: str | Path,
    backend: AttentionBackend,
    dtype: torch.dtype,
    device: torch.device,
    tp: TensorParallel = SINGLE,
    dummy: bool = False,
    rope_factor: float | None = None,
) -> LoadedModel:
    """Build the model named by config.json ``architectures`` and load its weights (with ``tp`` of world > 1,
    only this rank's slices: :mod:`shard.tp_loading`); ``dummy`` (``--load-format dummy``) keeps the modules'
    random initialisation and reads no checkpoint: a big config is benchmarked without writing its weights.
    ``rope_factor``: see :func:`read_config`.

    Raises:
        ValueError: unsupported architecture (message names it and the supported ones), missing weights, or
            head counts / intermediate size not divisible by ``tp.world``.
        FileNotFoundError: not a model folder.
    """
    from tokenizers import Tokenizer

    folder = Path(folder)
    cfg = read_config(folder, rope_factor)
    cls = _model_class(cfg)
    if dummy:
        model = _initialised(cls, cfg, backend, tp, dtype, device)
    else:
        with torch.device("cpu"):
            model = cls.from_hf_config(cfg, backend, tp)
        if tp.enabled:
            from shard.tp_loading import load_rank_weights

            load_rank_weights(model, safetensors_files(folder), tp)
        else:
            load_weights(model, safetensors_files(folder))
    model = model.to(device=device, dtype=dtype).eval()
    for module in model.modules():  # NOTE: RoPE tables stay fp32 under bf16/fp16 weights, as in HF
        if isinstance(module, Rotary):
            module.float()
    model.requires_grad_(False)
    fuse_projections(model)
    if pack_cpu_linears(model):
        warm_packed_linears(model)
    pack_panel_linears(model)
    cpu_direct.attach(model)
    positions = cfg.get("max_position_embeddings")
    if positions and model.config.max_positions < positions:
        log.warning(
            "sliding_window %d is below max_position_embeddings %d: attention here is full, not windowed, so "
            "positions are capped at the window (max_total_tokens <= %d), where both give the same outputs",
            model.config.max_positions, positions, model.config.max_positions,
        )
    if rope_type(model.config.rope_scaling) == "dynamic":
        log.warning(
            "rope_scaling dynamic: served as transformers computes it up to max_position_embeddings (%d), where "
            "it is plain RoPE; longer contexts, whose every position it would rescale, are not offered",
            model.config.max_positions,
        )
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return LoadedModel(model, cfg, tokenizer, eos_ids(folder, cfg, tokenizer), dtype, device)
