"""Layer-wise loading against loading first, for one Prefill that promotes its cached prefix from the host tier.

``python -m shard.kv_tiers.overlap_bench MODEL_DIR [--prompt 1024 --cached 960 --runs 5 --device cpu]``: the
median Prefill time with the promotions done before the forward and with them landing layer by layer during
it, and their ratio (below 1: overlap wins). Greedy tokens are checked equal. Prints; asserts nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from proto.generate.v3 import generate_pb2 as pb
from shard.config import ShardConfig
from shard.factory import build_runner
from shard.kv_tiers.copies import from_pb
from shard.kv_tiers.tiers import KvTiers, TierSizes
from shard.server import TextGenerationService


def _request(rid: int, ids_text: str, blocks: list[int], tokens: int, cache_len: int) -> pb.Request:
    bs = 16
    slots = [b * bs + o for b in blocks for o in range(bs)][:tokens]
    return pb.Request(
        id=rid, inputs=ids_text, input_chunks=pb.Input(chunks=[pb.InputChunk(text=ids_text)]),
        parameters=pb.NextTokenChooserParameters(
            temperature=1.0, top_p=1.0, typical_p=1.0, repetition_penalty=1.0
        ),
        stopping_parameters=pb.StoppingCriteriaParameters(max_new_tokens=1, ignore_eos_token=True),
        blocks=blocks, slots=slots, cache_len=cache_len, add_special_tokens=False,
    )


async def _prefill(service, rid: int, text: str, blocks: list[int], tokens: int, cache_len: int, copies):
    req = _request(rid, text, blocks, tokens, cache_len)
    batch = pb.Batch(id=rid, requests=[req], size=1, max_tokens=tokens, max_blocks=len(blocks))
    start = time.perf_counter()
    resp = await service.Prefill(pb.PrefillRequest(batch=batch, kv_copies=copies), None)
    elapsed = time.perf_counter() - start
    await service.ClearCache(pb.ClearCacheRequest(id=rid), None)
    return elapsed, [t for g in resp.generations for t in g.tokens.ids]


async def run(args: argparse.Namespace) -> None:
    bs, most = 16, -(-(3 * args.prompt) // 16)  # NOTE: text of N token ids may re-tokenize longer
    config = ShardConfig(model_dir=args.model_dir, uds_path="/tmp/unused", device=args.device,
                         num_blocks=2 * most + 2, block_size=bs)
    runner = build_runner(config)
    vocab = runner.loaded.model.config.vocab_size
    text = runner.detok.text([(7 * i + 3) % (vocab - 10) + 5 for i in range(args.prompt)])
    n = len(runner.detok.encode(text, False, 0))
    blocks_needed = -(-(n + 1) // bs)
    tiers = KvTiers(runner.kv, TierSizes(host_blocks=blocks_needed))
    service = TextGenerationService(runner, config, tiers=tiers)
    cached_blocks = min(args.cached, n - 1) // bs
    first = list(range(1, 1 + blocks_needed))
    _, cold = await _prefill(service, 1, text, first, n + 1, 0, [])
    demote = [pb.KvCopy(src_tier=0, src_slot=b, dst_tier=1, dst_slot=i, block_hash=i)
              for i, b in enumerate(first[:cached_blocks])]
    await asyncio.get_running_loop().run_in_executor(tiers.worker, tiers.run, from_pb(demote))
    target = list(range(1 + blocks_needed, 1 + 2 * blocks_needed))
    promote = [pb.KvCopy(src_tier=1, src_slot=i, dst_tier=0, dst_slot=target[i], block_hash=i)
               for i in range(cached_blocks)]
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.runs):
        for overlap in (False, True):
            tiers.overlap = overlap
            rid = 10 + 2 * r + overlap
            t, got = await _prefill(service, rid, text, target, n + 1, cached_blocks * bs, promote)
            assert got == cold, "a promoted prefix changed the greedy token"
            times[overlap].append(t)
    first_ms, overlap_ms = (statistics.median(times[o]) * 1e3 for o in (False, True))
    print(f"{n}-token prompt, {cached_blocks * bs} cached tokens promoted from host ({cached_blocks} blocks of "
          f"{tiers.block_bytes} bytes) on {runner.loaded.device}: load first {first_ms:.1f} ms, layer-wise "
          f"{overlap_ms:.1f} ms, ratio {overlap_ms / first_ms:.2f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m shard.kv_tiers.overlap_bench")
    p.add_argument("model_dir")
    p.add_argument("--prompt", type=int, default=1024)
    p.add_argument("--cached", type=int, default=960)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--device", default="cpu")
    asyncio.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    main()
