"""Build a HuggingFace-format model folder offline: random weights (fixed seed) and a byte-level BPE tokenizer
trained on the English text shipped in ``shard/demo_data/corpus.txt``.

The folder is an ordinary HF checkpoint (``config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json``, ``generation_config.json``): ``transformers`` loads it, and the shard loads it with
same code it uses for real models. Same arguments -> byte-identical files.

    prism-demo-model OUT_DIR [--arch llama|qwen3] [--size tiny|small|100m|8b] [--max-positions N] [--config-only]

``--config-only`` writes everything but the weights, for ``--load-format dummy`` (the 8b size: Llama 3 8B's
shapes, whose 16 GB of random weights are not worth writing to disk).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "demo_data" / "corpus.txt"
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
SEED = 1234
INIT_STD = 0.02

# NOTE: role-tagged, minimal; the router tokenizes it with add_special_tokens=false: BOS is in it.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Size:
    """Shape of one demo size; head_dim = hidden // heads."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int  # BPE vocabulary trained on the corpus
    model_vocab: int = 0  # the model's vocabulary when larger: ids past the tokenizer's decode to nothing


SIZES = {
    "tiny": Size(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=1024),
    "small": Size(hidden=256, layers=4, heads=8, kv_heads=4, intermediate=704, vocab=1024),
    "100m": Size(hidden=768, layers=12, heads=12, kv_heads=4, intermediate=2688, vocab=1024),
    "8b": Size(hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336, vocab=1024, model_vocab=128256),
}
ARCHS = ("llama", "qwen3")


def train_tokenizer(vocab_size: int):  # -> tokenizers.Tokenizer
    """Byte-level BPE over the shipped corpus, with BOS/EOS/PAD as ids 0/1/2; a post-processor adds BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.read_text(encoding="utf-8").splitlines(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return tok


def hf_config(
    arch: str, size: Size, vocab: int, bos_id: int, eos_id: int, max_positions: int = 4096
) -> dict:
    """Real HF config keys for LlamaForCausalLM / Qwen3ForCausalLM."""
    common = {
        "hidden_size": size.hidden,
        "intermediate_size": size.intermediate,
        "num_hidden_layers": size.layers,
        "num_attention_heads": size.heads,
        "num_key_value_heads": size.kv_heads,
        "head_dim": size.hidden // size.heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_positions,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "vocab_size": vocab,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "initializer_range": INIT_STD,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    if arch == "llama":
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            **common,
            "mlp_bias": False,
            "pretraining_tp": 1,
            "tie_word_embeddings": False,
        }
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        **common,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": size.layers,
    }


def random_weights(arch: str, size: Size, vocab: int) -> dict:
    """HF parameter names -> fp32 tensors; normal(0, INIT_STD) matrices, ones for norms, fixed seed."""
    import torch

    gen = torch.Generator().manual_seed(SEED)
    head_dim = size.hidden // size.heads

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float32) * INIT_STD

    w = {"model.embed_tokens.weight": normal(vocab, size.hidden)}
    for i in range(size.layers):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = normal(size.heads * head_dim, size.hidden)
        w[p + "self_attn.k_proj.weight"] = normal(size.kv_heads * head_dim, size.hidden)
        w[p + "self_attn.v_proj.weight"] = normal(size.kv_heads * head_dim, size.hidden)
        w[p + "self_attn.o_proj.weight"] = normal(size.hidden, size.heads * head_dim)
        if arch == "qwen3":
            w[p + "self_attn.q_norm.weight"] = torch.ones(head_dim)
            w[p + "self_attn.k_norm.weight"] = torch.ones(head_dim)
        w[p + "mlp.gate_proj.weight"] = normal(size.intermediate, size.hidden)
        w[p + "mlp.up_proj.weight"] = normal(size.intermediate, size.hidden)
        w[p + "mlp.down_proj.weight"] = normal(size.hidden, size.intermediate)
        w[p + "input_layernorm.weight"] = torch.ones(size.hidden)
        w[p + "post_attention_layernorm.weight"] = torch.ones(size.hidden)
    w["model.norm.weight"] = torch.ones(size.hidden)
    if arch == "llama":  # qwen3 ties lm_head to the embedding
        w["lm_head.weight"] = normal(vocab, size.hidden)
    return w


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_demo_model(
    out_dir: str | Path, arch: str = "llama", size: str = "tiny", max_positions: int = 4096, weights: bool = True
) -> Path:
    """Write a demo model folder at ``out_dir`` (created if missing) and return its path.

    Args:
        out_dir: target folder; existing files of the same names are overwritten.
        arch: "llama" (LlamaForCausalLM) or "qwen3" (Qwen3ForCausalLM).
        size: "tiny" (~0.2M params, tests), "small" (~3.5M), "100m" (~95M, benchmarks), "8b" (Llama 3 8B's
            shapes, for GPU benchmarks with ``weights=False``).
        max_positions: ``max_position_embeddings`` (and the tokenizer's ``model_max_length``).
        weights: write model.safetensors; without it the folder is served with ``--load-format dummy``.
    Raises:
        ValueError: unknown arch or size.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {list(ARCHS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {list(SIZES)}")
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shape = SIZES[size]
    tok = train_tokenizer(shape.vocab)
    vocab = max(tok.get_vocab_size(), shape.model_vocab)
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.save(str(out / "tokenizer.json"))
    _write_json(out / "config.json", hf_config(arch, shape, vocab, bos_id, eos_id, max_positions))
    _write_json(
        out / "generation_config.json",
        {
            "bos_token_id": bos_id,
            "eos_token_id": eos_id,
            "do_sample": False,
            "transformers_version": "4.57.6",
        },
    )
    _write_json(
        out / "tokenizer_config.json",
        {
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "unk_token": None,
            "add_bos_token": True,
            "add_eos_token": False,
            "model_max_length": max_positions,
            "chat_template": CHAT_TEMPLATE,
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": False,
        },
    )
    if weights:
        save_file(random_weights(arch, shape, vocab), str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``prism-demo-model``."""
    parser = argparse.ArgumentParser(prog="prism-demo-model", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--arch", choices=ARCHS, default="llama")
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--max-positions", type=int, default=4096, help="max_position_embeddings")
    parser.add_argument("--config-only", action="store_true", help="no weights (serve with --load-format dummy)")
    args = parser.parse_args(argv)
    print(build_demo_model(args.out_dir, args.arch, args.size, args.max_positions, not args.config_only))


if __name__ == "__main__":
    main()
