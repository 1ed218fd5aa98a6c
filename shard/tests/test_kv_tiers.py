"""KV tiers in the shard: the disk tier's file checks and full disk, copies through every tier, and greedy
tokens (fp32) identical whether the prefix came from the device, host, disk, or was recomputed after a
corrupt disk block."""

from __future__ import annotations

import resource
import signal
from pathlib import Path

import pytest
import torch

from proto.generate.v3 import generate_pb2 as pb
from shard.errors import InvalidRequest
from shard.factory import build_runner
from shard.kv_cache import KVCache, KVShape
from shard.kv_tiers.copies import Copy, Tier
from shard.kv_tiers.disk_tier import HEADER, DiskTier
from shard.kv_tiers.tiers import KvTiers, TierSizes
from shard.server import TextGenerationService
from shard.tests.helpers import BLOCK, batch, make_config, request, slots_of, token_ids

D, H, DISK = Tier.DEVICE, Tier.HOST, Tier.DISK
SHAPE = (2, 2, 4, 2, 8)  # layers, K/V, block size, kv heads, head dim


def _disk(tmp_path: Path) -> DiskTier:
    return DiskTier(str(tmp_path), 4, SHAPE, torch.float32)


def test_disk_round_trip_and_every_bad_file_is_a_miss(tmp_path: Path) -> None:
    disk = _disk(tmp_path)
    block = torch.randn(SHAPE)
    assert disk.write(1, 77, block)
    assert torch.equal(disk.read(1, 77), block)
    assert disk.read(1, 78) is None  # foreign: another block's hash
    assert disk.read(2, 77) is None  # never written
    raw = disk.file(1).read_bytes()
    corrupt = bytearray(raw)
    corrupt[HEADER.size + 5] ^= 0x40
    for bad in (raw[:-3], raw[:10], bytes(corrupt), b"NOTMAGIC" + raw[8:], raw + b"x"):
        disk.file(1).write_bytes(bad)
        assert disk.read(1, 77) is None
    disk.file(1).write_bytes(raw)
    assert torch.equal(disk.read(1, 77), block)


def test_full_disk_fails_the_write_and_leaves_no_file(tmp_path: Path) -> None:
    disk = _disk(tmp_path)
    assert disk.write(0, 5, torch.randn(SHAPE))
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (HEADER.size + 100, old_limit[1]))  # a real EFBIG from the OS
    try:
        assert not disk.write(0, 6, torch.randn(SHAPE))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert disk.read(0, 5) is None and disk.read(0, 6) is None  # the slot's old content is not served either
    assert list(tmp_path.iterdir()) == []


def _tiers(tmp_path: Path, overlap: bool = False) -> KvTiers:
    layers, _, bs, heads, dim = SHAPE
    kv = KVCache(KVShape(layers, heads, dim, torch.float32), 8, bs, torch.device("cpu"))
    for k, v in kv.layers:
        k.normal_()
        v.normal_()
    return KvTiers(kv, TierSizes(4, 4, str(tmp_path)), overlap=overlap)


def _device_block(tiers: KvTiers, slot: int) -> torch.Tensor:
    return torch.stack([torch.stack((k[slot], v[slot])) for k, v in tiers.kv.layers])


def test_copies_through_every_tier_keep_the_bytes(tmp_path: Path) -> None:
    tiers = _tiers(tmp_path)
    want = _device_block(tiers, 3).clone()
    path = [Copy(D, 3, H, 0, 9), Copy(H, 0, DISK, 2, 9), Copy(DISK, 2, H, 1, 9), Copy(H, 1, D, 5, 9),
            Copy(DISK, 2, D, 6, 9)]
    out = tiers.run(path)
    assert out.failed == [] and not out.bad_device
    assert torch.equal(_device_block(tiers, 5), want) and torch.equal(_device_block(tiers, 6), want)


def test_a_failed_copy_poisons_what_reads_its_destination(tmp_path: Path) -> None:
    tiers = _tiers(tmp_path)
    tiers.run([Copy(D, 3, DISK, 1, 9)])
    tiers.disk.file(1).write_bytes(tiers.disk.file(1).read_bytes()[:-1])  # truncated
    out = tiers.run([Copy(DISK, 1, H, 2, 9), Copy(H, 2, D, 4, 9), Copy(D, 5, H, 2, 1), Copy(H, 2, D, 6, 1)])
    assert out.failed == [0, 1] and out.bad_device == {4}  # a later write to host 2 makes it good again


def test_bad_copies_are_refused_before_anything_runs(tmp_path: Path) -> None:
    tiers = _tiers(tmp_path)
    for bad in (Copy(D, 0, H, 0, 1), Copy(D, 8, H, 0, 1), Copy(H, 4, D, 1, 1), Copy(H, 1, H, 2, 1)):
        with pytest.raises(InvalidRequest):
            tiers.check([bad])


# ---- greedy tokens through the shard's Prefill, fp32 -------------------------------------------------------

PROMPT = ("A system prompt that every request of a session repeats, long enough to fill a few KV blocks of "
          "sixteen tokens each, with some more words about the weather and the sea, and then the question "
          "itself, which asks what the prompt was about.")
NEW = 10


@pytest.fixture(params=[False, True], ids=["plain", "layer-overlap"])
def service(request, tiny_llama: Path, tmp_path: Path) -> TextGenerationService:
    config = make_config(tiny_llama, num_blocks=64)
    runner = build_runner(config)
    tiers = KvTiers(runner.kv, TierSizes(8, 8, str(tmp_path)), overlap=request.param)
    return TextGenerationService(runner, config, tiers=tiers)


def _copies(copies) -> list[pb.KvCopy]:
    """(src tier, src slot, dst tier, dst slot, i): the prefix's block i, whose hash is 100 + i."""
    return [pb.KvCopy(src_tier=s, src_slot=a, dst_tier=d, dst_slot=b, block_hash=100 + i)
            for s, a, d, b, i in copies]


async def _generate(service, rid: int, blocks: list[int], cache_len: int = 0, copies=()):
    """(greedy token ids, indices of the copies that failed)."""
    n = len(service.runner.detok.encode(PROMPT, True, 0))
    req = request(rid, PROMPT, blocks, slots_of(blocks, n + NEW), max_new=NEW, cache_len=cache_len)
    first = await service.Prefill(pb.PrefillRequest(batch=batch(rid, [req]), kv_copies=_copies(copies)), None)
    failed = list(first.kv_failed)
    gens = list(first.generations)
    cached = first.batch if first.HasField("batch") else None
    while cached is not None:
        resp = await service.Decode(pb.DecodeRequest(batches=[cached]), None)
        gens += list(resp.generations)
        cached = resp.batch if resp.HasField("batch") else None
    return token_ids(gens), failed


async def test_greedy_tokens_equal_from_device_host_disk_and_recomputed(service) -> None:
    n = len(service.runner.detok.encode(PROMPT, True, 0))
    k = 3  # cached prefix blocks
    assert n > k * BLOCK
    blocks = list(range(1, 1 + -(-(n + NEW) // BLOCK)))
    cold, _ = await _generate(service, 1, blocks)
    prefix = blocks[:k]
    # device hit: the same prefix blocks, read in place
    fresh = list(range(20, 20 + len(blocks) - k))
    assert (await _generate(service, 2, prefix + fresh, k * BLOCK))[0] == cold
    # demote to host, then to disk; overwrite the device copies so nothing stale can be read
    _, failed = await _generate(service, 3, list(range(40, 40 + len(blocks))), 0,
                                [(D, b, H, i, i) for i, b in enumerate(prefix)]
                                + [(H, i, DISK, i, i) for i in range(k)])
    assert failed == []
    # host -> device promotion into new blocks
    promoted = [30, 31, 32]
    got, failed = await _generate(service, 4, promoted + fresh, k * BLOCK,
                                  [(H, i, D, promoted[i], i) for i in range(k)])
    assert failed == [] and got == cold
    # disk -> device promotion (new blocks again)
    promoted = [33, 34, 35]
    got, failed = await _generate(service, 5, promoted + fresh, k * BLOCK,
                                  [(DISK, i, D, promoted[i], i) for i in range(k)])
    assert failed == [] and got == cold
    # a corrupt disk block: reported as failed, recomputed by the shard, same tokens
    f = service.tiers.disk.file(1)
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0xFF
    f.write_bytes(bytes(raw))
    promoted = [36, 37, 38]
    got, failed = await _generate(service, 6, promoted + fresh, k * BLOCK,
                                  [(DISK, i, D, promoted[i], i) for i in range(k)])
    assert failed == [1] and got == cold


async def test_a_shard_without_tiers_refuses_copies(llama_service) -> None:
    req = request(1, PROMPT, [1, 2, 3, 4, 5, 6], slots_of([1, 2, 3, 4, 5, 6], 80), max_new=2)
    with pytest.raises(InvalidRequest, match="without KV tiers"):
        prefill = pb.PrefillRequest(batch=batch(1, [req]), kv_copies=_copies([(H, 0, D, 1, 0)]))
        await llama_service.Prefill(prefill, None)


async def test_transfer_over_the_socket(tiny_llama: Path, tmp_path: Path) -> None:
    """KvTierService answers on the shard's own socket beside TextGenerationService."""
    import grpc

    from proto.generate.v3 import generate_pb2_grpc as pb_grpc
    from shard.server import build_server

    config = make_config(tiny_llama, uds_path=str(tmp_path / "s"), num_blocks=16)
    runner = build_runner(config)
    service = TextGenerationService(runner, config, tiers=KvTiers(runner.kv, TierSizes(4, 0)))
    server = build_server(service, config)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"unix://{config.socket_path}") as channel:
            stub = pb_grpc.KvTierServiceStub(channel)
            ok = await stub.Transfer(pb.KvTransferRequest(copies=_copies([(D, 3, H, 1, 0), (H, 1, D, 4, 0)])))
            assert list(ok.failed) == []
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Transfer(pb.KvTransferRequest(copies=_copies([(D, 3, DISK, 1, 0)])))
            assert "no DISK tier" in err.value.details()
    finally:
        await server.stop(grace=None)
    assert torch.equal(runner.kv.layers[1][0][3], runner.kv.layers[1][0][4])


def test_tensor_parallel_ranks_agree_on_failed_copies() -> None:
    """A copy that failed on another rank counts as failed here too (every rank then recomputes alike)."""
    from shard.kv_tiers.tiers import Outcome, agree

    class OtherRankFailedCopy1:
        enabled = True

        def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
            x[1] += 1
            return x

    copies = [Copy(H, 0, D, 4, 1), Copy(DISK, 2, D, 5, 2), Copy(D, 6, H, 1, 3)]
    mine = Outcome(failed=[2], bad_device=set())
    agreed = agree(mine, copies, OtherRankFailedCopy1(), torch.device("cpu"))
    assert agreed.failed == [1, 2] and agreed.bad_device == {5}


def test_tier_flags_env_twins_and_checks(monkeypatch, tiny_llama: Path) -> None:
    import argparse

    from shard import cli
    from shard.config import ShardConfig

    monkeypatch.setenv("KV_HOST_TOKENS", "64")
    monkeypatch.setenv("KV_DISK_PATH", "/tmp/somewhere")
    parser = argparse.ArgumentParser()
    cli._serve_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "m", "--kv-disk-tokens", "32"])
    assert (args.kv_host_tokens, args.kv_disk_tokens, args.kv_disk_path) == (64, 32, "/tmp/somewhere")
    with pytest.raises(ValueError, match="needs --kv-disk-path"):
        ShardConfig(model_dir=str(tiny_llama), kv_disk_tokens=32)
    with pytest.raises(ValueError, match="at least 0"):
        ShardConfig(model_dir=str(tiny_llama), kv_host_tokens=-1)


def test_a_tier_below_one_block_is_refused_at_startup(monkeypatch, caplog) -> None:
    """A tier smaller than one block holds nothing (it was turned off without a word): the shard refuses to
    start, naming the flag, its value and the block size. 0 still means no tier; a size that is not a multiple
    of the block size is rounded down to whole blocks, with a log line."""
    import logging

    from shard import cli
    from shard.config import ShardConfig
    from shard.factory import build_tiers

    monkeypatch.setattr("shard.logs.setup_logging", lambda *args, **kwargs: None)  # keep caplog's handler
    for flag in ("--kv-host-tokens", "--kv-disk-tokens"):
        with pytest.raises(SystemExit, match=rf"^error: {flag} 8 is less than one KV block \(16 tokens"):
            cli.main(["serve", "m", flag, "8", "--kv-disk-path", "/tmp/unused"])
    with pytest.raises(ValueError, match="--kv-disk-tokens 3 is less than one KV block \\(4 tokens"):
        ShardConfig("m", block_size=4, kv_disk_tokens=3, kv_disk_path="/tmp/unused")
    assert build_tiers(ShardConfig("m", kv_host_tokens=0), None) is None  # type: ignore[arg-type]
    config = ShardConfig("m", block_size=4, kv_host_tokens=10)
    kv = KVCache(KVShape(1, 1, 2, torch.float32), 4, 4, torch.device("cpu"))
    with caplog.at_level(logging.INFO, logger="shard.factory"):
        tiers = build_tiers(config, kv)
    assert tiers is not None and tiers.sizes[Tier.HOST] == config.kv_host_blocks == 2
    assert "--kv-host-tokens 10 is not a multiple of the block size 4: the tier holds 2 blocks" in caplog.text
