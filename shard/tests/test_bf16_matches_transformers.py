"""bf16 weights and KV on the SDPA backend: logits within a stated tolerance of transformers' bf16 forward on
the same weights, for a cold prompt and for the same prompt continued over a cached prefix.

Tolerance: |ours - theirs| <= BF16_ATOL + BF16_RTOL * |theirs| elementwise, on every position. Both sides
round activations to bf16 (8 bits of mantissa) after each op, in different orders, so the difference is a
few bf16 ulps of the logits (one bf16 ulp at 1.0 is 2**-7 = 0.0078). Measured on the tiny demo models:
max |ours - transformers bf16| 0.0039 (Llama) / 0.0078 (Qwen3), about what transformers bf16 itself is
from transformers fp32 (0.0042 / 0.0044)."""

from __future__ import annotations

from pathlib import Path

import torch

from shard.batch import RequestState
from shard.factory import build_runner
from shard.inputs import build_step_inputs, to_device
from shard.sampling import NextTokenChooser, SamplingParams, StoppingCriteria
from shard.tests.helpers import make_config

BF16_ATOL, BF16_RTOL = 0.02, 0.02
PROMPT = "The cache keeps the shared prefix of every prompt so the next request starts sooner. " * 3


def _logits(runner, ids: list[int], cache_len: int, blocks: list[int]) -> torch.Tensor:
    bs = runner.kv.block_size
    slots = [b * bs + o for b in blocks for o in range(bs)]
    r = RequestState(
        0, ids, len(ids), blocks, slots, cache_len, NextTokenChooser(SamplingParams()),
        StoppingCriteria(frozenset(), 1),
    )
    tokens, meta = to_device(build_step_inputs([r]), runner.loaded.device, bs)
    with torch.inference_mode():
        return runner.model.logits(runner.model(tokens, meta, runner.kv.layers))


def test_bf16_logits_within_tolerance_of_transformers(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    runner = build_runner(make_config(tiny_model, attention_backend="sdpa", dtype="bfloat16"))
    assert runner.kv.layers[0][0].dtype == torch.bfloat16
    ids = runner.detok.encode(PROMPT, True, 0)
    hf = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16, attn_implementation="sdpa")
    with torch.inference_mode():
        theirs = hf(torch.tensor([ids])).logits[0].float()
    blocks = list(range(1, 2 + len(ids) // 16))
    cold = _logits(runner, ids, 0, blocks)
    torch.testing.assert_close(cold, theirs, atol=BF16_ATOL, rtol=BF16_RTOL)
    assert (cold.argmax(-1) == theirs.argmax(-1)).float().mean() >= 0.9
    # the same prompt again over its first 32 positions read from the pool
    warm = _logits(runner, ids, 32, blocks)
    torch.testing.assert_close(warm, theirs[32:], atol=BF16_ATOL, rtol=BF16_RTOL)
