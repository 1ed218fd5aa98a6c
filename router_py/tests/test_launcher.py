"""Router and launcher command lines (flags, env fallbacks, forwarding), model resolution and the process
supervision rules (a dying child stops everything with a non-zero exit)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from router_py import cli
from router_py.launch import launcher, model_source
from router_py.launch.model_source import ModelSourceError, resolve_model
from router_py.launch.process_group import ProcessGroup


def test_router_flags_read_env_and_command_line_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_INPUT_TOKENS", "100")
    monkeypatch.setenv("JSON_OUTPUT", "true")
    monkeypatch.setenv("SCHEDULER", "lpm")
    monkeypatch.setenv("SCHEDULER_PARAM", "hot_lane=0.5,window=8")
    args = cli.parse_args(["--scheduler", "fcfs", "--max-total-tokens", "300"])
    assert (args.max_input_tokens, args.max_total_tokens, args.json_output) == (100, 300, True)
    assert args.scheduler == "fcfs" and args.cache_policy == "dart"
    assert args.scheduler_params == {"hot_lane": 0.5, "window": 8.0}


@pytest.mark.parametrize(("env", "value"), [("MAX_BATCH_SIZE", "many"), ("CACHE_POLICY", "fifo")])
def test_bad_env_values_are_rejected(monkeypatch: pytest.MonkeyPatch, env: str, value: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SystemExit):
        cli.parse_args([])


@pytest.mark.parametrize("item", ["novalue", "=3", "k=abc"])
def test_scheduler_param_must_be_key_number(item: str) -> None:
    with pytest.raises(ValueError, match="KEY=NUMBER"):
        cli.parse_params([item])


def test_hostname_that_is_not_an_ip_binds_all_interfaces() -> None:
    assert cli.bind_host("3f2a9c1d0e7b") == "0.0.0.0"
    assert cli.bind_host("127.0.0.1") == "127.0.0.1" and cli.bind_host("::1") == "::1"


def test_launcher_forwards_router_and_shard_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_CONCURRENT_REQUESTS", "7")
    monkeypatch.setenv("VALIDATION_WORKERS", "3")  # TGI's variable
    args = launcher.build_parser().parse_args([
        "--port", "8080", "--num-shard", "2", "--shard-uds-path", "/tmp/x", "--num-blocks", "64",
        "--scheduler", "qas", "--no-prefix-cache", "--scheduler-param", "k=2", "--api-key", "secret",
    ])
    router = launcher.router_command(args, "/models/m", "org/m")
    joined = " ".join(router)
    for part in ("--master-shard-uds-path /tmp/x-0", "--tokenizer-name /models/m", "--served-model-name org/m",
                 "--port 8080", "--max-concurrent-requests 7", "--scheduler qas", "--no-prefix-cache",
                 "--scheduler-param k=2", "--api-key secret", "--waiting-served-ratio 0.3",
                 "--validation-workers 3"):
        assert part in joined
    shard = launcher.shard_command(args, "/models/m")
    assert shard[1:5] == ["serve", "/models/m", "--uds-path", "/tmp/x"] and "--num-blocks" in shard
    env = launcher.shard_env(args, 1)
    assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_PORT"]) == ("1", "2", "29500")
    assert launcher.socket_paths(args) == ["/tmp/x-0", "/tmp/x-1"]

    assert "LOCAL_RANK" not in env  # NOTE: one replica keeps TGI's rank-only device choice
    assert "MAX_BATCH_PREFILL_TOKENS" not in env and "MAX_TOTAL_TOKENS" not in env
    small = launcher.build_parser().parse_args(
        ["--max-batch-prefill-tokens", "256", "--max-total-tokens", "300"]
    )
    small_env = launcher.shard_env(small, 0)  # NOTE: the shard's KV pool floor follows these (kv_cache.py)
    assert (small_env["MAX_BATCH_PREFILL_TOKENS"], small_env["MAX_TOTAL_TOKENS"]) == ("256", "300")
    monkeypatch.setenv("LOCAL_RANK", "3")  # NOTE: a parent's (torchrun) is not passed on
    assert "LOCAL_RANK" not in launcher.shard_env(args, 1)


def test_tgi_flags_are_taken_as_tgi_takes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_INPUT_LENGTH", "100")  # TGI's former name of MAX_INPUT_TOKENS
    args = launcher.build_parser().parse_args([
        "--trust-remote-code", "--usage-stats", "off", "--prometheus-port", "9001", "--disable-custom-kernels",
    ])
    assert launcher.check_args(args) is None
    assert "--max-input-tokens 100" in " ".join(launcher.router_command(args, "/m", "m"))
    shard = launcher.shard_command(args, "/m")
    assert shard[shard.index("--attention-backend") + 1] == "sdpa"
    assert launcher.shard_env(args, 0)[launcher.CPU_KERNELS] == "0"
    parse = launcher.build_parser().parse_args
    chosen = parse(["--disable-custom-kernels", "--attention-backend", "reference"])
    assert "reference" in launcher.shard_command(chosen, "/m")
    monkeypatch.setenv("GRACEFUL_TERMINATION_TIMEOUT", "5")
    assert launcher.build_parser().parse_args([]).graceful_termination_timeout == 5.0
    assert launcher.check_args(parse(["--sharded", "true", "--num-shard", "2"])) is None
    assert "does not match" in launcher.check_args(parse(["--sharded", "true"]))
    assert "does not match" in launcher.check_args(parse(["--sharded", "false", "--num-shard", "2"]))
    both = launcher.build_parser().parse_args(["--max-input-tokens", "90"])
    assert "not both" in launcher.check_args(both)
    assert launcher.CPU_KERNELS not in launcher.shard_env(both, 0)


def test_launcher_passes_graph_and_load_flags_to_the_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = launcher.shard_command(launcher.build_parser().parse_args([]), "/m")
    assert not {"--cuda-graphs", "--load-format", "--enforce-eager"} & set(plain)
    monkeypatch.setenv("CUDA_GRAPHS", "1,2,8")  # TGI's variable
    args = launcher.build_parser().parse_args(["--load-format", "dummy", "--enforce-eager"])
    shard = " ".join(launcher.shard_command(args, "/m"))
    assert "--cuda-graphs 1,2,8" in shard and "--load-format dummy" in shard and "--enforce-eager" in shard


def test_tgi_rope_flags_become_the_shards_linear_rope_factor(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "--rope-factor" not in launcher.shard_command(launcher.build_parser().parse_args([]), "/m")
    linear = launcher.build_parser().parse_args(["--rope-scaling", "linear"])  # TGI: factor 1, nothing changes
    assert " --rope-factor 1.0" in " ".join(launcher.shard_command(linear, "/m"))
    monkeypatch.setenv("ROPE_FACTOR", "2")  # alone: linear by 2 (TGI)
    args = launcher.build_parser().parse_args([])
    assert launcher.check_args(args) is None
    assert " --rope-factor 2.0" in " ".join(launcher.shard_command(args, "/m"))


def test_data_parallel_starts_groups_with_their_own_sockets_ports_and_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATA_PARALLEL", "3")
    args = launcher.build_parser().parse_args(["--num-shard", "2", "--shard-uds-path", "/tmp/x"])
    assert args.data_parallel == 3
    assert launcher.socket_paths(args) == [f"/tmp/x-dp{g}-{r}" for g in range(3) for r in range(2)]
    assert launcher.shard_command(args, "/m", 2)[3:5] == ["--uds-path", "/tmp/x-dp2"]
    args.kv_disk_path = "/d"
    disk = [launcher.shard_command(args, "/m", g) for g in range(2)]
    assert [c[c.index("--kv-disk-path") + 1] for c in disk] == ["/d/dp0", "/d/dp1"]  # NOTE: one folder each
    env = launcher.shard_env(args, 1, 2)
    assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_PORT"], env["LOCAL_RANK"]) == ("1", "2", "29502", "5")
    # NOTE: CPU threads: the cores but the router's, split among the 3 x 2 shards (PRISM_SHARD_THREADS wins)
    monkeypatch.delenv("PRISM_SHARD_THREADS", raising=False)
    monkeypatch.setattr(launcher.env, "cpu_cores", lambda: 16)
    assert launcher.shard_env(args, 1, 2)["PRISM_SHARD_THREADS"] == "2"
    assert launcher.replica_threads(args) == (
        2, "16 cores, one left to the router, the rest split among 6 shards"
    )
    monkeypatch.setattr(launcher.env, "cpu_cores", lambda: 4)
    assert launcher.shard_env(args, 0, 0)["PRISM_SHARD_THREADS"] == "1"  # never 0
    monkeypatch.setenv("PRISM_SHARD_THREADS", "3")
    assert launcher.replica_threads(args) is None
    assert launcher.shard_env(args, 0, 0)["PRISM_SHARD_THREADS"] == "3"
    one = launcher.build_parser().parse_args(["--data-parallel", "1"])
    monkeypatch.delenv("PRISM_SHARD_THREADS")
    assert "PRISM_SHARD_THREADS" not in launcher.shard_env(one, 0)  # NOTE: one replica: the shard's own rule
    router = " ".join(launcher.router_command(args, "/m", "m"))
    assert "--master-shard-uds-path" not in router
    assert all(f"--replica-shard-uds-path /tmp/x-dp{g}-0" in router for g in range(3))
    alias = launcher.build_parser().parse_args(["--data-parallel-size", "2"])
    assert alias.data_parallel == 2 and launcher.check_args(alias) is None
    assert "must be >= 1" in str(launcher.check_args(launcher.build_parser().parse_args(["--data-parallel", "0"])))
    assert cli.parse_args(["--replica-shard-uds-path", "/a", "--replica-shard-uds-path", "/b"]
                          ).replica_shard_uds_path == ["/a", "/b"]

def test_local_folder_is_used_as_is(tmp_path: Path) -> None:
    assert resolve_model(str(tmp_path)) == (str(tmp_path.resolve()), str(tmp_path))


def test_hub_id_without_network_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="could not be downloaded from the Hugging Face Hub"):
        resolve_model("prism-test-org/no-such-model")


def test_hub_id_is_found_in_the_given_hub_cache_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "models--prism-test-org--cached"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    args = launcher.build_parser().parse_args(["--huggingface-hub-cache", str(tmp_path)])
    folder, model_id = resolve_model("prism-test-org/cached", None, args.huggingface_hub_cache)
    assert Path(folder) == snapshot and model_id == "prism-test-org/cached"


def test_missing_local_path_is_not_taken_for_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="neither a model folder nor a hub id"):
        resolve_model(str(tmp_path / "absent"))


def test_demo_model_is_built_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRISM_CACHE_DIR", str(tmp_path))
    built: list[list[str]] = []

    def fake_build(cmd: list[str], check: bool) -> None:
        built.append(cmd)
        Path(cmd[1]).mkdir()
        (Path(cmd[1]) / "config.json").write_text("{}")

    monkeypatch.setattr(model_source.subprocess, "run", fake_build)
    first = resolve_model(None)
    second = resolve_model(None)
    assert first == second == (str(tmp_path / "demo-llama-tiny"), "prism-demo-llama-tiny")
    assert len(built) == 1 and built[0][2:] == ["--arch", "llama", "--size", "tiny"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-llama-tiny"]


def test_child_exit_stops_the_group_with_its_code() -> None:
    group = ProcessGroup()
    sleeper = group.spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], {})
    group.spawn("dies", [sys.executable, "-c", "raise SystemExit(3)"], {})
    assert group.supervise() == 3
    group.shutdown()
    assert sleeper.returncode is not None


def test_dead_child_is_restarted_with_backoff_then_given_up(tmp_path: Path) -> None:
    """Each start appends a line and exits 5: 1 start + 2 restarts, after 0.05 then 0.1 s, then exit 5."""
    from router_py.launch.process_group import RestartPolicy

    starts = tmp_path / "starts"
    group = ProcessGroup()
    code = f"import time; open({str(starts)!r}, 'a').write(f'{{time.monotonic()}}\\n'); raise SystemExit(5)"
    group.spawn("flaky", [sys.executable, "-c", code], {})
    assert group.supervise(RestartPolicy(max_restarts=2, backoff_s=0.05, max_backoff_s=0.1)) == 5
    times = [float(t) for t in starts.read_text().split()]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.05 and times[2] - times[1] >= 0.1


def test_a_tensor_parallel_rank_is_not_restarted_alone() -> None:
    from router_py.launch.process_group import RestartPolicy

    group = ProcessGroup()
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    sleeper = group.spawn("shard-0", sleep, {}, restartable=False)
    group.spawn("shard-1", [sys.executable, "-c", "raise SystemExit(3)"], {}, restartable=False)
    start = time.monotonic()
    assert group.supervise(RestartPolicy(max_restarts=5, backoff_s=0.01)) == 3
    assert time.monotonic() - start < 1.0
    group.shutdown()
    assert sleeper.returncode is not None


def test_a_configuration_error_is_not_retried() -> None:
    from router_py.launch.process_group import RestartPolicy

    group = ProcessGroup()
    group.spawn("misconfigured", [sys.executable, "-c", "raise SystemExit(2)"], {})
    start = time.monotonic()
    assert group.supervise(RestartPolicy(max_restarts=5)) == 2
    assert time.monotonic() - start < 1.0


def test_router_startup_exit_codes() -> None:
    from router_py.shard_client.client import ShardError
    from router_py.engine.warmup import StartupError

    unreachable = StartupError("cannot reach the master shard")
    unreachable.__cause__ = ShardError("ServiceDiscovery", "failed to connect", "UNAVAILABLE")
    assert cli.startup_exit_code(unreachable) == 1
    assert cli.startup_exit_code(ShardError("Warmup", "needs more blocks", "INVALID_ARGUMENT")) == 2
    assert cli.startup_exit_code(StartupError("`max_input_tokens` must be < `max_total_tokens`")) == 2


def test_restarted_child_keeps_serving_and_stop_ends_supervision(tmp_path: Path) -> None:
    import threading

    from router_py.launch.process_group import RestartPolicy

    group = ProcessGroup()
    child = group.spawn("once", [sys.executable, "-c", "import time; time.sleep(0.2)"], {})
    first = child.proc.pid
    threading.Timer(1.5, lambda: setattr(group, "stopping", True)).start()
    assert group.supervise(RestartPolicy(max_restarts=10, backoff_s=0.05)) == 0
    assert child.proc.pid != first and child.restarts >= 1
    group.shutdown()


def fake_shard_script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "prism-shard"
    script.write_text(f"#!{sys.executable}\nimport sys, time\n{body}\n")
    script.chmod(0o755)
    return script


def test_launcher_fails_when_a_shard_dies_before_ready(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = fake_shard_script(tmp_path, "sys.exit(2)")
    monkeypatch.setattr(launcher, "executable", lambda name: str(script))
    args = launcher.build_parser().parse_args(["--model-id", str(tmp_path), "--shard-uds-path",
                                               str(tmp_path / "s")])
    assert launcher.run(args) == 1


def test_launcher_refuses_a_socket_path_a_running_shard_serves(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A second launcher on the first one's path would delete its socket, and the first router would then reach
    the second shard: refused before anything starts. A stale file (no listener) is still removed."""
    monkeypatch.setattr(launcher, "executable", lambda name: pytest.fail("nothing may start"))
    path = str(tmp_path / "s")
    args = launcher.build_parser().parse_args(["--model-id", str(tmp_path), "--shard-uds-path", path])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(f"{path}-0")
        live.listen()
        assert launcher.run(args) == 1
        assert launcher.serving_socket(f"{path}-0")
    assert f"a running shard already serves {path}-0" in caplog.text
    assert os.path.exists(f"{path}-0") and not launcher.serving_socket(f"{path}-0")


def test_launcher_stops_shards_when_the_router_dies(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The fake shard makes its socket path (a plain file), so the router starts and fails to connect."""
    script = fake_shard_script(tmp_path, "open(sys.argv[4] + '-0', 'w').close(); time.sleep(60)")
    monkeypatch.setattr(launcher, "executable", lambda name: str(script))
    args = launcher.build_parser().parse_args(["--model-id", str(tmp_path), "--shard-uds-path",
                                               str(tmp_path / "s"), "--port", "1"])
    assert launcher.run(args) == 2  # the router's configuration error (no tokenizer.json): not retried
    assert subprocess.run(["pgrep", "-f", str(script)], capture_output=True, text=True).stdout == ""
    assert not (tmp_path / "s-0").exists()  # the stopped shard's socket file is removed (before: left behind)


def test_router_wiring_builds_configs_from_flags_and_warmup() -> None:
    from router_py.backend_api import BackendInfo
    from router_py.shard_client.messages import ShardInfo

    args = cli.parse_args(["--tokenizer-name", "/m", "--no-prefix-cache", "--cors-allow-origin", "http://a,http://b",
                           "--scheduler", "lpm", "--cache-policy", "lfu", "--scheduler-param", "w=4",
                           "--validation-workers", "4"])
    info = BackendInfo(max_input_tokens=100, max_total_tokens=200, max_batch_total_tokens=3200, block_size=16,
                       requires_padding=False, dtype="f32", device_type="cpu", support_chunking=True,
                       use_prefix_caching=True)
    shard = ShardInfo(requires_padding=False, dtype="f32", device_type="cpu", window_size=None, speculate=0,
                      support_chunking=True, use_prefix_caching=True, attention_impl="paged", block_size=16)
    sched = cli.scheduler_config(args, info, shard)
    assert (sched.scheduler, sched.cache_policy, sched.num_blocks, sched.prefix_caching) == ("lpm", "lfu", 200, False)
    assert sched.params == {"w": 4.0}
    padded = cli.scheduler_config(args, info, ShardInfo(**{**shard.__dict__, "requires_padding": True}))
    assert padded.num_blocks is None
    router = cli.router_config(args, info)
    assert (router.model_id, router.max_input_tokens, router.max_total_tokens) == ("/m", 100, 200)
    assert router.cors_allow_origin == ("http://a", "http://b") and not router.prefix_caching
    assert router.validation_workers == 4
