"""The shard's reading of TGI's environment variables."""

from __future__ import annotations

import pytest

from shard.config import ShardConfig


def test_shard_reads_prefix_caching(monkeypatch) -> None:
    monkeypatch.setenv("PREFIX_CACHING", "0")
    assert ShardConfig.env_prefix_caching() is False
    monkeypatch.setenv("PREFIX_CACHING", "true")
    assert ShardConfig.env_prefix_caching() is True
    monkeypatch.setenv("PREFIX_CACHING", "2")
    with pytest.raises(ValueError, match="PREFIX_CACHING must be 1/0/true/false"):
        ShardConfig.env_prefix_caching()


def test_local_rank_picks_the_cuda_device_of_a_data_parallel_replica(monkeypatch) -> None:
    import torch

    from shard.factory import pick_device

    monkeypatch.setenv("LOCAL_RANK", "3")
    assert ShardConfig.env_local_rank() == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    tp_rank = ShardConfig("m", rank=1, world_size=2)
    assert pick_device(tp_rank) == torch.device("cuda:1")  # tensor parallelism alone: cuda:RANK
    assert pick_device(ShardConfig("m", rank=1, world_size=2, local_rank=3)) == torch.device("cuda:3")
    assert pick_device(ShardConfig("m", device="cpu", local_rank=3)) == torch.device("cpu")
    assert pick_device(ShardConfig("m")) == torch.device("cuda")
    with pytest.raises(ValueError, match="needs cuda:5.*4 CUDA device"):
        pick_device(ShardConfig("m", local_rank=5))
