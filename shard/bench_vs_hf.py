"""The shard's forward against transformers' ``LlamaForCausalLM`` (SDPA attention) on the same weights, the
same tokens and the same dtype, timed interleaved in one process; prints both medians and the ratio.

The shard side is one cold prefill step through :class:`~shard.model_runner.ModelRunner` (store into the
paged pool, attention through ``flash_kernels``, the LM head on the last row, greedy choice, detokenize);
the transformers side is ``model(input_ids)`` under ``inference_mode`` (its logits cover every row).
:func:`transformers_greedy` is the greedy-token oracle the tests and ``scripts/gpu_smoke.py`` compare with.
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

import torch

from shard.batch import RequestState
from shard.config import ShardConfig
from shard.factory import build_runner
from shard.sampling import NextTokenChooser, SamplingParams, StoppingCriteria


def _cold_request(prompt: list[int], block_size: int) -> RequestState:
    blocks = list(range(1, 1 + -(-(len(prompt) + 1) // block_size)))
    slots = [b * block_size + o for b in blocks for o in range(block_size)]
    return RequestState(
        0,
        list(prompt),
        len(prompt),
        blocks,
        slots,
        0,
        NextTokenChooser(SamplingParams()),
        StoppingCriteria(frozenset(), 10, ignore_eos_token=True),
    )


def transformers_greedy(model_dir: str | Path, prompts: list[str], new_tokens: int) -> list[list[int]]:
    """transformers' fp32 greedy continuation (``new_tokens`` ids, EOS not stopping it) of each prompt, alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    outs = []
    for prompt in prompts:
        enc = tok(prompt, return_tensors="pt")
        # NOTE: an explicit mask; generate() would otherwise infer one from pad_token_id and could mask BOS.
        out = model.generate(
            enc.input_ids,
            attention_mask=enc.attention_mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
        outs.append(out[0, enc.input_ids.shape[1] :].tolist())
    return outs


def forward_vs_transformers(
    folder: Path, dtype: str, tokens: int = 2001, repeats: int = 7, backend: str = "auto", threads: int = 1
) -> tuple[float, float]:
    """(shard median s, transformers median s) for one ``tokens``-token forward, interleaved, both sides on
    ``threads`` torch threads."""
    from transformers import AutoModelForCausalLM

    block = 16
    runner = build_runner(
        ShardConfig(
            model_dir=str(folder),
            device="cpu",
            dtype=dtype,
            attention_backend=backend,
            num_blocks=-(-(tokens + 1) // block) + 2,
            block_size=block,
            cpu_threads=threads,
        )
    )
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), attn_implementation="sdpa")
    hf.eval()
    rng = random.Random(0)
    prompt = [rng.randrange(3, runner.model.config.vocab_size) for _ in range(tokens)]
    ids = torch.tensor([prompt])
    ours, theirs = [], []
    torch.set_num_threads(threads)  # the runner sets the same count on this thread at each step
    with torch.inference_mode():
        runner.step([_cold_request(prompt, block)])
        hf(ids)
        for _ in range(repeats):
            start = time.perf_counter()
            runner.step([_cold_request(prompt, block)])
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            hf(ids)
            theirs.append(time.perf_counter() - start)
    return statistics.median(ours), statistics.median(theirs)


def print_forward_vs_transformers(
    folder: Path, dtypes: list[str], tokens: int = 2001, threads: int | None = None
) -> None:
    """``threads`` None: the count the shard's default gives a step of ``tokens`` tokens."""
    if threads is None:
        from shard.factory import pick_cpu_threads

        threads = pick_cpu_threads(ShardConfig(model_dir=str(folder)))[0].for_tokens(tokens)
    for dtype in dtypes:
        ours, theirs = forward_vs_transformers(folder, dtype, tokens, threads=threads)
        print(
            f"{tokens}-token forward, {dtype}, {threads} threads: "
            f"shard {ours * 1000:.0f} ms, "
            f"transformers SDPA {theirs * 1000:.0f} ms, ratio {ours / theirs:.2f} (target <= 1.2)"
        )
