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
