"""Model registry: HF ``architectures`` name -> model class (one file per family)."""

from __future__ import annotations

from shard.models.llama import LlamaForCausalLM
from shard.models.qwen3 import Qwen2ForCausalLM, Qwen3ForCausalLM

ARCHITECTURES: dict[str, type[LlamaForCausalLM]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}


def model_class(architectures: list[str]) -> type[LlamaForCausalLM]:
    """The class for the first supported name in ``architectures``.

    Raises:
        ValueError: none supported; the message names them and the supported ones.
    """
    for name in architectures:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    raise ValueError(f"unsupported architecture {architectures}; supported: {sorted(ARCHITECTURES)}")
