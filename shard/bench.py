"""``prism-shard bench``: prefill and decode throughput, and the cost of a 90%-cached 2,048-token prefill
relative to the same prefill cold, for demo models built on the spot. Prints numbers; asserts nothing.
Beside that ratio it prints its proportional floor (:func:`proportional_floor`): where a model's cold step is
mostly attention, its 208 new tokens still attend over all 2,048 keys, 0.19 of the cold step's pairs.

It drives :class:`~shard.model_runner.ModelRunner` directly (no gRPC), with token ids instead of text, so it
measures the model step: attention through ``flash_kernels``, sampling and detokenizing included.
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from shard import step_thread
from shard.batch import RequestState
from shard.config import ShardConfig
from shard.demo_model import build_demo_model
from shard.detokenize import Detokenizer
from shard.factory import build_runner
from shard.layers import cpu_direct
from shard.model_runner import ModelRunner
from shard.sampling import NextTokenChooser, SamplingParams, StoppingCriteria

BLOCK = 16
POOL_BLOCKS = 1024  # 16k tokens: every phase below fits without reuse
PREFILL_BATCH, PREFILL_LEN = 4, 512
DECODE_BATCHES, DECODE_PROMPT = (1, 8, 32), 32
CACHED_PROMPT, CACHED_SHARE = 2048, 0.9
CACHED_TOKENS = int(CACHED_PROMPT * CACHED_SHARE) // BLOCK * BLOCK  # whole blocks, as prefix-cache hits are
REPEATS = 3
CACHED_REPEATS = 7  # cold/cached pairs; the median of their ratios (each pair run back to back)
FLOOR_REPEATS = 3  # cold steps timed with their attention calls apart, for the proportional floor


class BlockCounter:
    """Fresh consecutive blocks from 1; reset between phases."""

    def __init__(self) -> None:
        self.next = 1

    def take(self, tokens: int) -> list[int]:
        count = -(-tokens // BLOCK)
        self.next += count
        if self.next > POOL_BLOCKS:
            self.next = 1 + count
        return list(range(self.next - count, self.next))


def _request(
    rid: int, prompt: list[int], blocks: list[int], cache_len: int = 0, max_new: int = 1000
) -> RequestState:
    slots = [b * BLOCK + o for b in blocks for o in range(BLOCK)]
    prefix_offset, read_offset = Detokenizer.initial_offsets(len(prompt))  # as the server sets them
    return RequestState(
        rid,
        list(prompt),
        len(prompt),
        blocks,
        slots,
        cache_len,
        NextTokenChooser(SamplingParams()),
        StoppingCriteria(frozenset(), max_new, ignore_eos_token=True),
        prefix_offset=prefix_offset,
        read_offset=read_offset,
    )


def _prompt(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(3, vocab) for _ in range(n)]


def _timed(runner: ModelRunner, requests: list[RequestState]) -> float:
    start = time.perf_counter()
    runner.step(requests)
    return time.perf_counter() - start


def prefill_tokens_per_s(runner: ModelRunner, rng: random.Random, vocab: int, pool: BlockCounter) -> float:
    times = []
    for _ in range(REPEATS):
        reqs = [
            _request(i, _prompt(rng, PREFILL_LEN, vocab), pool.take(PREFILL_LEN + 1))
            for i in range(PREFILL_BATCH)
        ]
        times.append(_timed(runner, reqs))
    return PREFILL_BATCH * PREFILL_LEN / statistics.median(times)


def decode_tokens_per_s(
    runner: ModelRunner, rng: random.Random, vocab: int, pool: BlockCounter, batch: int, steps: int
) -> float:
    reqs = [
        _request(i, _prompt(rng, DECODE_PROMPT, vocab), pool.take(DECODE_PROMPT + steps + 1))
        for i in range(batch)
    ]
    runner.step(reqs)  # prefill, not timed
    start = time.perf_counter()
    for _ in range(steps):
        runner.step(reqs)
    return batch * steps / (time.perf_counter() - start)


def cached_prefill_ratio(
    runner: ModelRunner, rng: random.Random, vocab: int, pool: BlockCounter
) -> tuple[float, float]:
    """(median cold seconds, median of cached/cold ratios) for a CACHED_PROMPT-token prompt, its first 90%
    (block-aligned) cached. Each ratio divides a cached step by the cold step just before it, so that a shared
    machine's load, which changes from second to second, hits both sides of a ratio alike."""
    colds, warms = [], []
    for _ in range(CACHED_REPEATS):
        cold, warm = cold_and_cached(rng, vocab, pool)
        colds.append(_timed(runner, cold))
        warms.append(_timed(runner, warm))
    return statistics.median(colds), statistics.median(w / c for c, w in zip(colds, warms))


def cold_and_cached(
    rng: random.Random, vocab: int, pool: BlockCounter
) -> tuple[list[RequestState], list[RequestState]]:
    """One step's requests each: a fresh CACHED_PROMPT-token prompt cold, then the same prompt with its first
    CACHED_TOKENS read from the blocks the cold step fills (so step them in this order)."""
    prompt, first = _prompt(rng, CACHED_PROMPT, vocab), pool.take(CACHED_PROMPT + 1)
    reuse = first[: CACHED_TOKENS // BLOCK] + pool.take(CACHED_PROMPT + 1 - CACHED_TOKENS)
    return [_request(0, prompt, first)], [_request(1, prompt, reuse, cache_len=CACHED_TOKENS)]


def pairs(new: int, context: int) -> int:
    """(query, key) pairs of causal attention for the last ``new`` tokens of a ``context``-token prompt (the
    count of ``bench.cost_model.chunk_pairs``, which the import directions keep out of the shard's reach)."""
    return new * (context - new) + new * (new + 1) // 2


def proportional_floor(attention_share: float) -> float:
    """The 90%-cached / cold ratio of an engine whose every cost scales with its work: the cold step's
    attention (``attention_share`` of its time) by the (query, key) pairs, everything else (fixed per-step
    costs too) by the new tokens. An exact-attention engine goes below it only by computing the cached step
    more efficiently than the cold one."""
    new = CACHED_PROMPT - CACHED_TOKENS
    attention = pairs(new, CACHED_PROMPT) / pairs(CACHED_PROMPT, CACHED_PROMPT)
    return attention_share * attention + (1 - attention_share) * new / CACHED_PROMPT


class _TimedBackend:
    """An attention backend's stand-in that adds the seconds of its prefill calls to ``seconds`` (device work
    waited for on CUDA, so that the split is by time, not by launch)."""

    def __init__(self, backend: object, device: torch.device) -> None:
        self.backend, self.device, self.seconds = backend, device, 0.0

    def __getattr__(self, name: str) -> object:
        return getattr(self.backend, name)

    def prefill(self, *args: object, **kwargs: object) -> torch.Tensor:
        self._sync()
        start = time.perf_counter()
        out = self.backend.prefill(*args, **kwargs)
        self._sync()
        self.seconds += time.perf_counter() - start
        return out

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def cold_attention_share(runner: ModelRunner, rng: random.Random, vocab: int, pool: BlockCounter) -> float:
    """Median, over FLOOR_REPEATS cold CACHED_PROMPT-token steps, of the share of the step's time spent in the
    attention backend's prefill (the modules' path, which calls the backend, for the timed steps)."""
    layers = [layer.self_attn for layer in runner.model.model.layers]
    originals = [attn.backend for attn in layers]
    timed = _TimedBackend(originals[0], runner.loaded.device)
    direct = cpu_direct.enabled()
    shares = []
    try:
        cpu_direct.set_enabled(False)  # NOTE: the direct path calls the compiled kernel past the backend
        for attn in layers:
            attn.backend = timed
        for _ in range(FLOOR_REPEATS):
            cold, _ = cold_and_cached(rng, vocab, pool)
            timed.seconds = 0.0
            step = _timed(runner, cold)
            shares.append(timed.seconds / step)
    finally:
        cpu_direct.set_enabled(direct)
        for attn, backend in zip(layers, originals):
            attn.backend = backend
    return statistics.median(shares)


def bench_model(
    folder: Path,
    label: str,
    cpu_threads: int | None = None,
    dtype: str | None = None,
    device: str = "cpu",
    load_format: str = "safetensors",
) -> None:
    runner = build_runner(
        ShardConfig(
            model_dir=str(folder),
            device=device,
            dtype=dtype,
            attention_backend="auto",
            num_blocks=POOL_BLOCKS,
            block_size=BLOCK,
            cpu_threads=cpu_threads,
            load_format=load_format,
        )
    )
    params = sum(p.numel() for p in runner.model.parameters())
    vocab = runner.model.config.vocab_size
    rng, pool = random.Random(0), BlockCounter()
    runner.step([_request(0, _prompt(rng, 64, vocab), pool.take(65))])  # warm the allocator and kernels
    print(
        f"== {label}: {params / 1e6:.1f}M parameters, {runner.loaded.dtype}, "
        f"attention={runner.model.model.layers[0].self_attn.backend.name}, threads={runner.cpu_threads}"
    )
    print(
        f"prefill: {prefill_tokens_per_s(runner, rng, vocab, pool):10.0f} tokens/s "
        f"({PREFILL_BATCH} x {PREFILL_LEN} tokens)"
    )
    steps = 32 if params < 10e6 or runner.loaded.device.type == "cuda" else 8
    for b in DECODE_BATCHES:
        print(f"decode batch {b:>2}: {decode_tokens_per_s(runner, rng, vocab, pool, b, steps):7.1f} tokens/s")
    if runner.loaded.device.type == "cuda":
        runner.maybe_capture_graphs(POOL_BLOCKS * BLOCK)
        for b in DECODE_BATCHES if runner.graphs is not None else ():
            rate = decode_tokens_per_s(runner, rng, vocab, pool, b, steps)
            print(f"decode batch {b:>2}, CUDA graphs: {rate:7.1f} tokens/s")
        runner.device_choice = False
        rate = decode_tokens_per_s(runner, rng, vocab, pool, DECODE_BATCHES[-1], steps)
        print(f"decode batch {DECODE_BATCHES[-1]:>2}, greedy chosen on the host: {rate:7.1f} tokens/s")
        runner.device_choice = True
    cold, ratio = cached_prefill_ratio(runner, rng, vocab, pool)
    share = cold_attention_share(runner, rng, vocab, pool)
    print(
        f"{CACHED_PROMPT}-token prefill: cold {cold * 1000:.0f} ms; "
        f"90% cached / cold = {ratio:.3f} (target <= 0.15; proportional floor "
        f"{proportional_floor(share):.3f}: attention {share:.0%} of the cold step)"
    )


def run_bench(
    sizes: list[str],
    arch: str = "llama",
    workdir: str | None = None,
    cpu_threads: int | None = None,
    model_dir: str | None = None,
    dtype: str | None = None,
    vs_transformers: bool = False,
    device: str = "cpu",
    load_format: str = "safetensors",
) -> None:
    """Bench demo models of ``sizes`` (built under ``workdir``), or the folder ``model_dir``; with
    ``vs_transformers`` also the 2,001-token forward against transformers' (same dtype, interleaved).

    Everything runs on the shard's step thread, as the server's steps do: glibc's arena there keeps a step's
    freed pages for the next, where the main thread's heap hands them back (docs/performance.md, session 37),
    and the process holds one OpenMP team (shard.step_thread)."""
    args = (sizes, arch, workdir, cpu_threads, model_dir, dtype, vs_transformers, device, load_format)
    step_thread.EXECUTOR.submit(_run_bench, *args).result()


def _run_bench(
    sizes: list[str],
    arch: str,
    workdir: str | None,
    cpu_threads: int | None,
    model_dir: str | None,
    dtype: str | None,
    vs_transformers: bool,
    device: str,
    load_format: str,
) -> None:
    folders: list[tuple[Path, str]] = []
    if model_dir:
        folders.append((Path(model_dir), Path(model_dir).name))
    else:
        root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="prism-bench-"))
        for size in sizes:
            folder = root / f"{arch}-{size}"
            if not (folder / "model.safetensors").is_file():
                build_demo_model(folder, arch, size)
            folders.append((folder, f"{arch}-{size}"))
    for folder, label in folders:
        # NOTE: a CPU runner pins its step thread (this one here) to one CPU; restored, or the next model's
        # runner would see one core
        allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        bench_model(folder, label, cpu_threads, dtype, device, load_format)
        if allowed is not None:
            os.sched_setaffinity(0, allowed)
        if vs_transformers:
            from shard.bench_vs_hf import print_forward_vs_transformers

            print_forward_vs_transformers(
                folder, [dtype] if dtype else ["float32", "bfloat16"], threads=cpu_threads
            )
