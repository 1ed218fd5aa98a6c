"""On a CUDA host, the shard itself on the GPU (the `gpu` marker; skipped without CUDA): Triton attention over
the paged pool, eager and replayed from CUDA graphs, against the oracles the CPU suites use.

- fp32 greedy tokens equal transformers' fp32 ``generate`` (the CPU oracle of test_greedy_matches_transformers),
  for a batch of four prompts, eager and with the decode steps replayed from captured graphs.
- bf16 logits within the tolerance of test_bf16_matches_transformers of transformers' bf16 forward on the same
  GPU, for a cold prompt and for the same prompt continued over a cached prefix read from the pool.
Run them with compiled kernels: ``TRITON_INTERPRET=0 python -m pytest -m gpu shard/tests flash_kernels/tests``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shard.factory import build_runner, build_service
from shard.tests.helpers import make_config
from shard.tests.test_bf16_matches_transformers import BF16_ATOL, BF16_RTOL, PROMPT, _logits
from shard.tests.test_greedy_matches_transformers import assert_batched_greedy_equals_transformers

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "cuda-graphs"])
async def test_greedy_on_cuda_equals_transformers(tiny_model: Path, graphs: bool) -> None:
    service = build_service(make_config(tiny_model, attention_backend="triton", device="cuda"))
    if graphs:
        service.runner.maybe_capture_graphs(max_total_tokens=256)
        assert service.runner.graphs is not None and service.runner.graphs.captured
    await assert_batched_greedy_equals_transformers(tiny_model, service)


def test_bf16_logits_on_cuda_within_tolerance_of_transformers(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    runner = build_runner(make_config(tiny_model, attention_backend="triton", dtype="bfloat16", device="cuda"))
    assert runner.kv.layers[0][0].dtype == torch.bfloat16 and runner.kv.layers[0][0].is_cuda
    ids = runner.detok.encode(PROMPT, True, 0)
    hf = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16, attn_implementation="sdpa")
    hf = hf.to("cuda")
    with torch.inference_mode():
        theirs = hf(torch.tensor([ids], device="cuda")).logits[0].float()
    blocks = list(range(1, 2 + len(ids) // 16))
    cold = _logits(runner, ids, 0, blocks)
    torch.testing.assert_close(cold, theirs, atol=BF16_ATOL, rtol=BF16_RTOL)
    warm = _logits(runner, ids, 32, blocks)  # its first 32 positions read from the pool
    torch.testing.assert_close(warm, theirs[32:], atol=BF16_ATOL, rtol=BF16_RTOL)
