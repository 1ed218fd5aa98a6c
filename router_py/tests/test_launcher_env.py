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
    # TGI's launcher refuses these before it starts anything (before: the shard loaded, then Warmup failed)
    ({"MAX_INPUT_TOKENS": "300", "MAX_TOTAL_TOKENS": "200"}, [],
     "`max_input_tokens`(300) must be < `max_total_tokens`(200)"),
    ({"MAX_TOTAL_TOKENS": "300"}, ["--max-input-length", "300"],
     "`max_input_tokens`(300) must be < `max_total_tokens`(300)"),
    # TGI options this stack lacks: refused as variables too (before: silently not read)
    ({"SPECULATE": "2"}, [], "not supported by this launcher: SPECULATE='2' (--speculate)"),
    ({"LORA_ADAPTERS": "org/adapter"}, [], "LORA_ADAPTERS='org/adapter' (--lora-adapters)"),
    ({"ROPE_SCALING": "dynamic"}, [], "`--rope-scaling dynamic` (ROPE_SCALING) is not supported"),
    ({"ROPE_FACTOR": "0"}, [], "`--rope-factor` must be positive. Given: 0.0"),
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


def test_tgi_short_flags_version_and_env(monkeypatch, capsys) -> None:
    """``-p``, ``-e``/``--env`` and ``-V``/``--version`` are TGI's too (before: "unrecognized arguments")."""
    args = launcher.build_parser().parse_args(["-p", "8080", "-e"])
    assert args.port == 8080 and args.env
    assert "--port 8080" in " ".join(launcher.router_command(args, "/m", "m"))
    monkeypatch.setenv("ENV", "1")  # NOTE: TGI's --env reads no variable
    assert not launcher.build_parser().parse_args([]).env
    for flag in ("--version", "-V"):
        with pytest.raises(SystemExit) as e:
            launcher.build_parser().parse_args([flag])
        assert e.value.code == 0 and "3.3.6-dev0" in capsys.readouterr().out
    assert "nvidia-smi" in launcher.describe()


def test_command_line_replaces_a_list_from_the_environment(monkeypatch) -> None:
    """clap: the flag wins over its variable; a repeatable flag does not add to the variable's list."""
    monkeypatch.setenv("CORS_ALLOW_ORIGIN", "http://a,http://c")
    assert launcher.build_parser().parse_args([]).cors_allow_origin == ["http://a", "http://c"]
    args = launcher.build_parser().parse_args(
        ["--cors-allow-origin", "http://b", "--cors-allow-origin", "http://d"]
    )
    assert args.cors_allow_origin == ["http://b", "http://d"]
    router = cli.parse_args(["--cors-allow-origin", "http://b"])  # the router reads the same variable
    assert router.cors_allow_origin == ["http://b"]


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("true", True), ("TRUE", True), ("0", False),
                                                 ("false", False), ("off", False)])
def test_boolean_variables_take_tgi_values(monkeypatch, value, expected) -> None:
    monkeypatch.setenv("JSON_OUTPUT", value)
    assert launcher.build_parser().parse_args([]).json_output is expected


def test_boolean_variable_junk_is_a_usage_error(monkeypatch, capsys) -> None:
    monkeypatch.setenv("DISABLE_GRAMMAR_SUPPORT", "maybe")  # before: silently false
    with pytest.raises(SystemExit) as e:
        launcher.build_parser()
    assert e.value.code == 2 and "DISABLE_GRAMMAR_SUPPORT='maybe'" in capsys.readouterr().err


def test_prefix_caching_flag_wins_over_the_variable(monkeypatch) -> None:
    monkeypatch.setenv("PREFIX_CACHING", "0")
    args = launcher.build_parser().parse_args(["--prefix-caching", "true"])
    assert "--no-prefix-cache" not in launcher.router_command(args, "/m", "m")
    assert launcher.shard_env(args, 0)["PREFIX_CACHING"] == "1"  # before: the inherited 0 turned it off


@pytest.mark.parametrize(("log_level", "shard_level"), [("debug", "DEBUG"), ("warn", "WARN"), (None, "INFO"),
                                                        ("text_generation_launcher=debug", "INFO")])
def test_log_level_reaches_the_shards(monkeypatch, log_level, shard_level) -> None:
    """TGI's launcher starts its shards at the level LOG_LEVEL sets (before: always INFO)."""
    if log_level is None:
        monkeypatch.delenv("LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("LOG_LEVEL", log_level)
    cmd = launcher.shard_command(launcher.build_parser().parse_args([]), "/m")
    assert cmd[cmd.index("--logger-level") + 1] == shard_level
    cmd = launcher.shard_command(launcher.build_parser().parse_args(["--logger-level", "ERROR"]), "/m")
    assert cmd[cmd.index("--logger-level") + 1] == "ERROR"


def test_hf_api_token_is_used_for_hub_downloads(monkeypatch, tmp_path) -> None:
    """TGI passes its former HF_API_TOKEN on as HF_TOKEN; huggingface_hub reads only HF_TOKEN."""
    import huggingface_hub

    from router_py.launch import model_source

    seen: list[str | None] = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda *a, token=None, **kw: seen.append(token) or str(tmp_path))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_API_TOKEN", "hf_old")
    model_source.download("org/model", None)
    monkeypatch.setenv("HF_TOKEN", "hf_new")
    model_source.download("org/model", None)
    assert seen == ["hf_old", "hf_new"]
