"""KV tiers end to end (docs/kv-tiers-wire.md): the launcher with a tiny device pool, a host and a disk tier.
Greedy outputs (fp32) are identical whether a prompt's prefix is computed cold, hit on the device, promoted
from host memory or from disk, recomputed because its disk files were corrupted, or left cached in part by a
client that gave up mid-prefill; /metrics shows each path was taken."""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import Stack, generated_or_gone

WORDS = ("river stone cloud window garden letter silver morning candle forest harbor lantern meadow "
         "thunder pencil orchard valley mirror feather island").split()


def prompt(seed: int, words: int = 40) -> str:
    """A prompt of its own for each seed (no shared prefix blocks between seeds, in practice)."""
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))


def launch(*extra: str) -> Iterator[tuple[Stack, Path]]:
    """A 20-block device pool (LRU, so that a flood evicts the target: DART keeps a prompt seen twice), a host
    and a disk tier that never fills."""
    disk = Path(tempfile.mkdtemp(prefix="prism-kv-disk-"))
    s = Stack(["--dtype", "float32", "--cache-policy", "lru", "--num-blocks", "20",
               "--max-batch-prefill-tokens", "256", "--max-total-tokens", "200", "--max-input-tokens", "180",
               "--kv-disk-tokens", "8192", "--kv-disk-path", str(disk), *extra]).wait_healthy()
    yield s, disk
    code = s.close()
    shutil.rmtree(disk, ignore_errors=True)
    assert code == 0, "the launcher did not shut down cleanly on SIGTERM"


@pytest.fixture
def stack() -> Iterator[tuple[Stack, Path]]:
    """Tiers placed by DART (the default), a 10-block host tier."""
    yield from launch("--kv-host-tokens", "160")


@pytest.fixture
def chunked_stack() -> Iterator[tuple[Stack, Path]]:
    """DART and QAS (the defaults), a 32-block host tier, prompts prefilled 16 tokens a step."""
    yield from launch("--cache-policy", "dart", "--kv-host-tokens", "512", "--max-batch-prefill-tokens", "16")


@pytest.fixture
def lru_stack() -> Iterator[tuple[Stack, Path]]:
    """Write-through LRU tiers (placement that does not depend on wall time, unlike DART's decayed heat), a
    64-block host tier."""
    yield from launch("--kv-host-tokens", "1024", "--kv-tier-policy", "lru-offload")


def generate(s: Stack, text: str, cold: bool = False) -> str:
    """Greedy, 8 tokens; ``cold``: past the prefix cache (``decoder_input_details``, TGI's rule)."""
    body = {"inputs": text, "parameters": {"max_new_tokens": 8, "do_sample": False, "decoder_input_details": cold}}
    r = httpx.post(f"{s.url}/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["generated_text"]


def tier_hits(s: Stack, tier: str) -> float:
    return s.metric(f'prism_prefix_cache_tier_hit_tokens{{tier="{tier}"}}')


def test_outputs_equal_from_every_tier_and_after_corrupt_disk_files(stack) -> None:
    s, disk = stack
    target = prompt(0)
    cold = generate(s, target)
    assert generate(s, target) == cold
    assert tier_hits(s, "device") > 0
    for flood in (range(1, 4), range(4, 14)):  # a little traffic: back from host; a lot: back from disk
        for i in flood:
            generate(s, prompt(i))
        assert generate(s, target) == cold
    assert tier_hits(s, "host") > 0 and tier_hits(s, "disk") > 0, httpx.get(f"{s.url}/metrics").text
    for i in range(14, 24):
        generate(s, prompt(i))
    files = list(disk.rglob("kvblock-*"))
    assert files
    for f in files:  # flip a byte of every block on disk: each read is a checksum miss, never served
        raw = bytearray(f.read_bytes())
        raw[-1] ^= 0xFF
        f.write_bytes(bytes(raw))
    assert generate(s, target) == cold
    assert s.metric("prism_kv_tier_failed_copies") > 0
    total = sum(tier_hits(s, t) for t in ("device", "host", "disk"))
    assert total == s.metric("prism_prefix_cache_hit_tokens")
    assert s.metric('prism_kv_tier_bytes_moved{direction="device_to_host"}') > 0
    assert s.metric('prism_kv_tier_blocks{tier="disk"}') > 0


def test_a_waiting_request_is_prefetched_from_disk(lru_stack) -> None:
    """A long generation holds 13 of the 19 device blocks; a request of 8 blocks whose prefix is on disk waits
    for it, its blocks come up to host memory meanwhile (KvTierService.Transfer), and it is served from there."""
    s, _ = lru_stack
    target = prompt(50)
    cold = generate(s, target)
    for i in range(51, 64):  # 13 x 8 blocks through a 64-block host: the target's blocks end on disk
        generate(s, prompt(i))
    before = s.metric("prism_kv_tier_prefetch_hits")

    started = threading.Event()

    def long() -> int:
        """Stream a long generation (a prompt whose greedy continuation has no EOS on the demo model); set
        ``started`` at its first token, so that the target surely arrives while it runs."""
        body = {"inputs": " ".join(["stone"] * 15) + " 1", "parameters": {"max_new_tokens": 150}}
        tokens = 0
        with httpx.stream("POST", f"{s.url}/generate_stream", json=body, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    tokens += 1
                    started.set()
        return tokens

    hits = {t: tier_hits(s, t) for t in ("device", "host", "disk")}
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(long)
        assert started.wait(60)
        assert generate(s, target) == cold
        still_running = not running.done()
        assert running.result() == 150
    text = httpx.get(f"{s.url}/metrics").text
    state = "\n".join(line for line in text.splitlines() if "tier" in line and not line.startswith("#"))
    state += f"\nbefore the target {hits}; the long one still ran when the target ended: {still_running}"
    assert s.metric("prism_kv_tier_prefetched_blocks") > 0, state
    assert s.metric("prism_kv_tier_prefetch_hits") > before, state


def test_clients_giving_up_mid_prefill_over_the_tiers_change_no_answer(chunked_stack) -> None:
    """Two rounds of 36 concurrent greedy requests over three shared prefixes, a third of them given up at a
    random point (queued, mid-prefill: its computed chunks are cached, or later): every answer equals the
    cold one, prefixes came back from the host tier, and the pool is idle after."""
    s, _ = chunked_stack
    prompts = [f"{prompt(100 + i % 3)} {prompt(200 + i % 12, 4 + i % 12)}" for i in range(36)]  # 100-140 tokens
    cold = {p: generate(s, p, cold=True) for p in set(prompts)}
    rng = random.Random(7)

    async def one(client: httpx.AsyncClient, i: int) -> str | None:
        body = {"inputs": prompts[i], "parameters": {"max_new_tokens": 8, "do_sample": False}}
        await asyncio.sleep(rng.random() * 2)
        return await generated_or_gone(client, s.url, body, rng.random() * 0.3 if i % 3 == 1 else None)

    async def storm() -> list[str | None]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(one(client, i) for i in range(36)))

    for _ in range(2):
        texts = asyncio.run(storm())
        assert [t for t in texts if t is not None] == [cold[p] for p, t in zip(prompts, texts) if t is not None]
    assert tier_hits(s, "host") > 0, httpx.get(f"{s.url}/metrics").text
    deadline = time.monotonic() + 10
    while s.metric('prism_prefix_cache_blocks{state="in_use"}') != 0:
        assert time.monotonic() < deadline, "blocks still held after the storm"
        time.sleep(0.1)
