"""The shard as the launcher starts it: a subprocess that logs "Server started at unix://..." and answers."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import pytest

from proto.generate.v3 import generate_pb2 as pb
from proto.generate.v3 import generate_pb2_grpc as pb_grpc

TGI_SERVE = "import sys; from shard.cli import tgi_main; sys.argv[0] = 'text-generation-server'; tgi_main()"


def _wait_started(proc: subprocess.Popen) -> list[str]:
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "Server started at unix://" in line:
            return lines
    raise AssertionError(f"shard exited before listening: {''.join(lines)}")


def test_tgi_cli_serves_on_rank_socket_with_json_logs(tiny_llama: Path) -> None:
    folder = tempfile.mkdtemp(prefix="cli-", dir="/tmp")
    uds = f"{folder}/tgi"
    Path(f"{uds}-1").write_text("stale")  # a stale socket file from an earlier run is removed
    cmd = [
        sys.executable,
        "-c",
        TGI_SERVE,
        "serve",
        str(tiny_llama),
        "--uds-path",
        uds,
        "--json-output",
        "--max-input-tokens",
        "100",
        "--trust-remote-code",
        "--logger-level",
        "INFO",
    ]
    # NOTE: rank 1 of a tensor-parallel group of 2 needs its rank 0 to start (they join one process group)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        group = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(s.getsockname()[1])}
    rank0 = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, **group, "RANK": "0"})
    env = {**os.environ, **group, "RANK": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        started = _wait_started(proc)[-1]
        assert json.loads(started)["text"] == f"Server started at unix://{uds}-1"
        with grpc.insecure_channel(f"unix://{uds}-1") as channel:
            stub = pb_grpc.TextGenerationServiceStub(channel)
            assert list(stub.ServiceDiscovery(pb.ServiceDiscoveryRequest()).urls) == [
                f"unix://{uds}-0",
                f"unix://{uds}-1",
            ]
            assert stub.Info(pb.InfoRequest()).block_size == 16
    finally:
        for p in (proc, rank0):
            p.terminate()
            p.wait(timeout=30)


def test_tgi_cli_refuses_quantization(tiny_llama: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", TGI_SERVE, "serve", str(tiny_llama), "--quantize", "gptq"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "--quantize gptq is not supported" in out.stderr


def test_serve_refuses_a_socket_a_running_server_listens_on(tiny_llama: Path) -> None:
    """Removing that socket file (as for a stale one) would leave its server unreachable: refused, untouched."""
    folder = tempfile.mkdtemp(prefix="cli-", dir="/tmp")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(f"{folder}/s-0")
        live.listen()
        out = subprocess.run(
            [sys.executable, "-c", TGI_SERVE, "serve", str(tiny_llama), "--uds-path", f"{folder}/s"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode != 0 and f"already listens on {folder}/s-0" in out.stderr
        live.settimeout(5)
        live.accept()[0].close()  # the refused shard's probe: the socket still serves


def test_dtype_defaults_to_bf16_only_on_bf16_native_cpus(monkeypatch) -> None:
    import torch

    from shard import factory
    from shard.config import ShardConfig
    from shard.cpu_features import native_bf16

    cpu = torch.device("cpu")
    assert native_bf16(frozenset({"avx512f", "avx512_bf16"})) == "avx512_bf16"
    assert native_bf16(frozenset({"amx_bf16", "amx_tile"})) == "amx_bf16"
    assert native_bf16(frozenset({"avx2", "avx512f"})) is None
    monkeypatch.setattr(factory, "native_bf16", lambda: "avx512_bf16")
    assert factory.pick_dtype(ShardConfig("m"), cpu) == (torch.bfloat16, "CPU has avx512_bf16")
    assert factory.pick_dtype(ShardConfig("m", dtype="float32"), cpu)[0] == torch.float32
    monkeypatch.setattr(factory, "native_bf16", lambda: None)
    assert factory.pick_dtype(ShardConfig("m"), cpu)[0] == torch.float32
    assert factory.pick_dtype(ShardConfig("m"), torch.device("cuda"))[0] == torch.bfloat16


def test_cpu_threads_flag_then_env_then_all_cores_for_prefill_and_all_but_one_for_decode(monkeypatch) -> None:
    import os

    from shard import factory
    from shard.config import ShardConfig

    from shard.model_runner import CpuThreads

    monkeypatch.setenv("PRISM_SHARD_THREADS", "3")
    assert factory.pick_cpu_threads(ShardConfig("m", cpu_threads=5))[0] == CpuThreads(5, 5)
    assert factory.pick_cpu_threads(ShardConfig("m")) == (CpuThreads(3, 3), "PRISM_SHARD_THREADS")
    monkeypatch.delenv("PRISM_SHARD_THREADS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    threads = factory.pick_cpu_threads(ShardConfig("m"))[0]
    assert threads == CpuThreads(3, 4, decode_kv_min=factory.STREAMED_WEIGHT_BYTES)
    assert threads.for_tokens(1) == 3 and threads.for_tokens(2001) == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert factory.pick_cpu_threads(ShardConfig("m"))[0] == CpuThreads(1, 1)


def test_every_core_for_every_step_when_the_weights_are_streamed(monkeypatch, tiny_model: Path) -> None:
    """Past STREAMED_WEIGHT_BYTES of weight, decode steps get the router's core too (on up to
    STREAMED_MAX_CORES cores); weight_bytes counts what the loaded model holds (less its norms), in the loaded
    dtype."""
    import os

    import torch

    from flash_kernels.api import get_backend
    from shard import factory
    from shard.config import ShardConfig
    from shard.loader import decoder_config, load_model
    from shard.model_runner import CpuThreads

    model = load_model(tiny_model, get_backend("reference"), torch.bfloat16, torch.device("cpu")).model
    held = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "norm" not in n)
    assert factory.weight_bytes(decoder_config(tiny_model), torch.bfloat16) == held
    assert factory.weight_bytes(decoder_config(tiny_model), torch.float32) == 2 * held
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    monkeypatch.delenv("PRISM_SHARD_THREADS", raising=False)
    limit = factory.STREAMED_WEIGHT_BYTES
    assert factory.pick_cpu_threads(ShardConfig("m"), limit)[0] == CpuThreads(1, 2, decode_kv_min=1)
    threads, why = factory.pick_cpu_threads(ShardConfig("m"), limit + 1)
    assert threads == CpuThreads(2, 2) and "streamed" in why
    assert factory.pick_cpu_threads(ShardConfig("m", cpu_threads=1), limit + 1)[0] == CpuThreads(1, 1)
    many = set(range(factory.STREAMED_MAX_CORES + 1))
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: many)
    assert factory.pick_cpu_threads(ShardConfig("m"), limit + 1)[0] == CpuThreads(len(many) - 1, len(many))


def test_step_size_counts_prompt_attention_over_a_cached_prefix() -> None:
    """A 208-token piece after 1,840 cached tokens is a large step (both cores); a cold 208-token prompt and
    decode rows over long contexts are not."""
    from shard.bench import _request
    from shard.model_runner import CpuThreads, step_size

    def request(prompt: int, cached: int, generated: int = 0):
        blocks = list(range(-(-(prompt + generated + 1) // 16)))
        r = _request(0, list(range(prompt)), blocks, cache_len=cached)
        r.token_ids.extend(range(generated))
        return r

    threads = CpuThreads(1, 2)
    assert step_size([request(2048, 1840)], hidden=256) == 208 + 208 * 1840 // 1536
    assert threads.for_tokens(step_size([request(2048, 1840)], hidden=256)) == 2
    assert threads.for_tokens(step_size([request(208, 0)], hidden=256)) == 1
    decodes = [request(2000, 2000 + 9, generated=10) for _ in range(128)]  # one new token each
    assert step_size(decodes, hidden=256) == 128


def test_decode_steps_reading_much_kv_take_every_core(monkeypatch) -> None:
    """On up to STREAMED_MAX_CORES cores a decode step whose rows read enough KV to bring the weights and KV
    it streams to STREAMED_WEIGHT_BYTES runs on every core; short contexts keep the router's core."""
    import os

    from shard import factory
    from shard.bench import _request
    from shard.config import ShardConfig
    from shard.model_runner import decode_kv_bytes, step_size

    def decoding(context: int):
        r = _request(0, list(range(context)), list(range(-(-(context + 2) // 16))), cache_len=context)
        r.token_ids.append(7)  # one token generated, not yet in the cache
        return r

    monkeypatch.delenv("PRISM_SHARD_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    weights, per_token = 8 << 20, 2048  # the peer model's order: 8 MiB, 2 KiB of K/V per token
    threads = factory.pick_cpu_threads(ShardConfig("m"), weights)[0]
    assert threads.decode_kv_min == factory.STREAMED_WEIGHT_BYTES - weights and "KV" in str(threads)

    def wanted(rows: int, context: int) -> int:
        reqs = [decoding(context) for _ in range(rows)]
        return threads.for_tokens(step_size(reqs, hidden=256), decode_kv_bytes(reqs, per_token))

    assert decode_kv_bytes([decoding(100), decoding(50)], per_token) == 150 * per_token
    assert wanted(32, 228) == 1  # the 32-client load: 14 MiB of KV
    assert wanted(8, 3000) == 2 and wanted(16, 1250) == 2  # 47 / 39 MiB
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(factory.STREAMED_MAX_CORES + 1)))
    assert factory.pick_cpu_threads(ShardConfig("m"), weights)[0].decode_kv_min == 0  # more cores: kept


def test_cuda_graphs_sizes_and_load_format_parse() -> None:
    from shard.cli import graph_sizes
    from shard.config import ShardConfig

    assert graph_sizes("8,1,2,2") == (1, 2, 8) and graph_sizes("0") == () and graph_sizes("") == ()
    with pytest.raises(argparse.ArgumentTypeError):
        graph_sizes("-1")
    with pytest.raises(ValueError, match="--load-format"):
        ShardConfig(model_dir="m", load_format="pickle")
    with pytest.raises(ValueError, match="--cuda-graphs"):
        ShardConfig(model_dir="m", cuda_graphs=())


def test_the_service_loads_its_model_on_the_step_thread(monkeypatch, tiny_llama: Path) -> None:
    """The step thread holds the only libgomp team: the model is loaded there, and the calling thread (the
    event loop's) is left with one intra-op thread."""
    import threading

    import torch

    from shard import factory, step_thread
    from shard.tests.helpers import make_config

    built_on: list[str] = []
    real = factory.build_runner

    def spy(config):  # noqa: ANN001, ANN202
        built_on.append(threading.current_thread().name)
        return real(config)

    monkeypatch.setattr(factory, "build_runner", spy)
    before = torch.get_num_threads()
    try:
        service = factory.build_service(make_config(tiny_llama))
        assert built_on and built_on[0].startswith("shard-step")
        assert torch.get_num_threads() == 1
        small = service.runner.cpu_threads.small
        assert step_thread.EXECUTOR.submit(torch.get_num_threads).result() == small
    finally:
        torch.set_num_threads(before)
