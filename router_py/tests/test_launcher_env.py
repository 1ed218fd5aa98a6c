"""TGI's environment variables that used to be ignored now work or fail loudly, before anything starts:
``QUANTIZE`` (refused: no quantized kernels), ``CUDA_MEMORY_FRACTION`` (sizes the shard's KV pool),
``PREFIX_CACHING=0`` (prefix cache off in the router, reported off by the shard), and a
``MAX_BATCH_TOTAL_TOKENS`` below ``MAX_TOTAL_TOKENS`` or the prefill budget (TGI's messages)."""

from __future__ import annotations

from pathlib import Path

import pytest

from router_py import cli
from router_py.launch import launcher

NOTHING_SPAWNED = "spawn must not be reached"


@pytest.fixture
def no_spawn(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a, **kw):
        raise AssertionError(NOTHING_SPAWNED)

    monkeypatch.setattr(launcher.ProcessGroup, "spawn", refuse)


def run_launcher(tmp_path: Path, *extra: str) -> int:
    args = launcher.build_parser().parse_args(["--model-id", str(tmp_path), "--shard-uds-path",
                                               str(tmp_path / "s"), *extra])
    return launcher.run(args)


@pytest.mark.parametrize("value", ["awq", "gptq", "bitsandbytes-nf4", "fp8"])
def test_quantize_env_is_refused_loudly(monkeypatch, tmp_path, no_spawn, caplog, value) -> None:
    monkeypatch.setenv("QUANTIZE", value)
    assert run_launcher(tmp_path) == 1
    assert f"`--quantize {value}` (QUANTIZE) is not supported" in caplog.text


def test_unknown_quantize_value_is_a_usage_error(monkeypatch) -> None:
    monkeypatch.setenv("QUANTIZE", "int3")
    with pytest.raises(SystemExit) as e:
        launcher.build_parser()
    assert e.value.code == 2


def test_cuda_memory_fraction_sizes_the_shard_pool(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_MEMORY_FRACTION", "0.5")
    args = launcher.build_parser().parse_args([])
    assert launcher.check_args(args) is None
    cmd = launcher.shard_command(args, "/m")
    assert cmd[cmd.index("--memory-fraction") + 1] == "0.5"


@pytest.mark.parametrize(("env", "extra", "message"), [
    ({"CUDA_MEMORY_FRACTION": "1.5"}, [], "`--cuda-memory-fraction` must be in (0, 1]. Given: 1.5"),
    ({"CUDA_MEMORY_FRACTION": "0.9"}, ["--num-blocks", "64"], "not both"),
    ({"MAX_BATCH_TOTAL_TOKENS": "1000", "MAX_TOTAL_TOKENS": "2048"}, [],
     "`max_total_tokens` must be <= `max_batch_total_tokens`. Given: 2048 and 1000"),
])
def test_bad_combinations_stop_the_launcher_before_it_starts(monkeypatch, tmp_path, no_spawn, caplog,
                                                              env, extra, message) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert run_launcher(tmp_path, *extra) == 1
    assert message in caplog.text


@pytest.mark.parametrize("value", ["0", "false", "FALSE", "off"])
def test_prefix_caching_0_turns_the_cache_off(monkeypatch, value) -> None:
    monkeypatch.setenv("PREFIX_CACHING", value)
    args = launcher.build_parser().parse_args([])
    assert "--no-prefix-cache" in launcher.router_command(args, "/m", "m")
    assert launcher.shard_env(args, 0)["PREFIX_CACHING"] == "0"


def test_prefix_caching_default_and_true_keep_the_cache(monkeypatch) -> None:
    monkeypatch.setenv("PREFIX_CACHING", "1")
    args = launcher.build_parser().parse_args([])
    assert "--no-prefix-cache" not in launcher.router_command(args, "/m", "m")
    assert launcher.shard_env(args, 0)["PREFIX_CACHING"] == "1"  # inherited as given


def test_shards_get_huge_page_allocations_unless_the_user_says_otherwise(monkeypatch) -> None:
    monkeypatch.delenv(launcher.THP_ALLOC, raising=False)
    args = launcher.build_parser().parse_args([])
    assert launcher.shard_env(args, 0)[launcher.THP_ALLOC] == "1"
    monkeypatch.setenv(launcher.THP_ALLOC, "0")
    assert launcher.shard_env(args, 0)[launcher.THP_ALLOC] == "0"


def test_prefix_caching_junk_is_a_usage_error(monkeypatch, capsys) -> None:
    monkeypatch.setenv("PREFIX_CACHING", "maybe")
    with pytest.raises(SystemExit):
        launcher.build_parser()
    assert "PREFIX_CACHING='maybe'" in capsys.readouterr().err


@pytest.mark.parametrize(("env", "message"), [
    ({"MAX_BATCH_TOTAL_TOKENS": "1000", "MAX_TOTAL_TOKENS": "2048", "MAX_BATCH_PREFILL_TOKENS": "512"},
     "`max_total_tokens` must be <= `max_batch_total_tokens`. Given: 2048 and 1000"),
    ({"MAX_BATCH_TOTAL_TOKENS": "1000"},
     "`max_batch_prefill_tokens` must be <= `max_batch_total_tokens`. Given: 4096 and 1000"),
])
def test_router_refuses_a_batch_total_below_its_limits_at_start(monkeypatch, capsys, env, message) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as e:
        cli.parse_args([])
    assert e.value.code == 2 and message in capsys.readouterr().err
