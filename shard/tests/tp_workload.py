"""The tensor-parallel tests' workload, run alike by one rank in the test process and by each of the ranks of
``python -m shard.tests.tp_workload`` (RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT from the environment): greedy
requests in one batch (one with prompt logprobs), then a request that reads a cached prefix from the pool.
What each rank saw (tokens, logprobs, parameter shapes, KV pool) is written as JSON."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from pathlib import Path

from proto.generate.v3 import generate_pb2 as pb
from shard.config import ShardConfig
from shard.factory import build_service
from shard.tests.helpers import Blocks, batch, make_config, request, run_to_end

PROMPTS = (
    "Long system prompts, retrieved passages and tool outputs often repeat from one request to the next.",
    "The quick brown fox",
    "Once upon a time there was a small village by the sea, and",
)
NEW = 8


async def run_workload(service) -> dict:
    """What the rank reported (tokens, logprobs per request id), what it sampled (every rank's steps, reported
    or not), its parameter shapes and KV pool."""
    sampled = _record_sampled(service.runner)
    blocks, encode = Blocks(), service.runner.detok.encode
    first: list[int] = []
    reqs = []
    for rid, text in enumerate(PROMPTS):
        b, s = blocks.take(len(encode(text, True, 0)) + NEW)
        first = first or b
        reqs.append(request(rid, text, b, s, max_new=NEW, prefill_logprobs=rid == 0))
    gens = await run_to_end(service, pb.PrefillRequest(batch=batch(0, reqs)), filter_finished=True)
    # NOTE: request 9 reads request 0's first block (16 prompt tokens) from the pool instead of computing it
    more, _ = blocks.take(len(encode(PROMPTS[0], True, 0)) + NEW - 16)
    ids = first[:1] + more
    slots = [b * 16 + o for b in ids for o in range(16)][: len(encode(PROMPTS[0], True, 0)) + NEW]
    cached = request(9, PROMPTS[0], ids, slots, max_new=NEW, cache_len=16)
    gens.update(await run_to_end(service, pb.PrefillRequest(batch=batch(1, [cached]))))
    runner = service.runner
    key = runner.kv.layers[0][0]
    return {
        "sampled": {str(r): ids for r, ids in sampled.items()},
        "tokens": {str(r): [t for g in gs for t in g.tokens.ids] for r, gs in gens.items()},
        "logprobs": {str(r): [lp for g in gs for lp in g.tokens.logprobs] for r, gs in gens.items()},
        "prompt_logprobs": list(gens[0][0].prefill_tokens.logprobs) if gens.get(0) else [],
        "params": {n: list(p.shape) for n, p in runner.model.named_parameters()},
        "kv_shape": list(key.shape),
        "kv_bytes": sum(t.numel() * t.element_size() for pair in runner.kv.layers for t in pair),
        "num_blocks": runner.kv.num_blocks,
    }


def _record_sampled(runner) -> dict[int, list[int]]:
    """Wrap ``runner.step`` to record every token the rank chooses, per request id."""
    sampled: dict[int, list[int]] = {}
    step = runner.step

    def recording_step(requests):
        out, times = step(requests)
        for g in out:
            sampled.setdefault(g.request_id, []).extend(g.tokens.ids)
        return out, times

    runner.step = recording_step
    return sampled


def rank_config(model_dir: Path) -> ShardConfig:
    """The tests' CPU fp32 shard for this process's RANK/WORLD_SIZE, one intra-op thread per rank."""
    rank, world = ShardConfig.env_rank()
    config = make_config(model_dir, num_blocks=64)
    return dataclasses.replace(config, rank=rank, world_size=world, cpu_threads=1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", help="JSON file; each rank writes OUT.RANK")
    p.add_argument("model_dirs", nargs="+")
    args = p.parse_args()
    results = {}
    for folder in args.model_dirs:
        config = rank_config(Path(folder))
        service = build_service(config)
        results[folder] = asyncio.run(run_workload(service))
    Path(f"{args.out}.{config.rank}").write_text(json.dumps(results))
    service.runner.model.tp.shutdown()


if __name__ == "__main__":
    main()
