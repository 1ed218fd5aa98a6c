"""``python scripts/cold_pad_ab.py MODEL_DIR PROMPTS [SEED]``: cold prefill steps of the shard at new prompt
lengths (1,200-2,000 tokens, as real traffic has), with torch's flash kernel called on rows padded to a multiple
of 64 (``sdpa.PAD_MIN_ROWS``, the default) against unpadded, in one process.

Each length is stepped once per path, in alternating order, with a fresh prompt and 0.1 s between steps (as a
server's requests arrive), so that a shared machine's load and the shapes the other path already built hit both
alike. Steps run on the shard's step thread. The first 4 steps of each path are dropped; prints the median, P90
and mean per path; asserts nothing. For bf16 on torch's flash kernel: run it with PRISM_CPU_PREFILL_KERNEL=0
(else the compiled prefill kernel takes these steps and the padding is not used).
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import time

from flash_kernels.backends import sdpa
from shard import step_thread
from shard.bench import BLOCK, POOL_BLOCKS, BlockCounter, _prompt, _request
from shard.config import ShardConfig
from shard.factory import build_runner


def main() -> None:
    model_dir, prompts = sys.argv[1], int(sys.argv[2])
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    runner = build_runner(ShardConfig(model_dir=model_dir, num_blocks=POOL_BLOCKS, block_size=BLOCK))
    gc.collect()
    gc.freeze()
    vocab, padded_from = runner.model.config.vocab_size, sdpa.PAD_MIN_ROWS
    times: dict[bool, list[float]] = {True: [], False: []}

    def run() -> None:
        for i in range(prompts):
            n = rng.randrange(1200, 2000)
            for pad in (True, False) if i % 2 else (False, True):
                sdpa.PAD_MIN_ROWS = padded_from if pad else 1 << 62
                request = _request(0, _prompt(rng, n, vocab), BlockCounter().take(n + 1))
                start = time.perf_counter()
                runner.step([request])
                times[pad].append((time.perf_counter() - start) * 1e3)
                time.sleep(0.1)

    step_thread.EXECUTOR.submit(run).result()
    for pad in (False, True):
        kept = sorted(times[pad][4:])
        print(f"{'padded' if pad else 'unpadded':9s} median {statistics.median(kept):.1f} ms, "
              f"P90 {kept[int(0.9 * len(kept))]:.1f}, mean {statistics.mean(kept):.1f} ({len(kept)} steps)")


if __name__ == "__main__":
    main()
