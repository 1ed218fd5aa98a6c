"""Tensor parallelism on CPU (gloo, 2 ranks, fp32): the same greedy tokens as one rank, every rank choosing
them, each rank holding half of the attention, MLP, vocabulary and KV pool; a clear error for a model that
does not split; rank slices of checkpoint tensors (vocab padding included)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from flash_kernels.api import get_backend
from shard.factory import build_runner, build_service
from shard.models.llama import DecoderConfig, LlamaForCausalLM
from shard.loader import read_config
from shard.tensor_parallel import TensorParallel, check_divisible
from shard.tests.helpers import make_config
from shard.tests.tp_workload import run_workload
from shard.tp_loading import load_rank_weights

WORLD = 2
ODD_VOCAB = 1025
LOGPROB_TOL = 1e-4  # two partial sums per projection instead of one: fp32 rounding differs, tokens do not


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def odd_vocab_llama(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with a 1,025-row vocabulary (one zero row more, as checkpoints padded past their
    tokenizer): 513 rows per rank, rank 1's last embedding and LM-head row is padding."""
    from safetensors.torch import load_file

    folder = tmp_path_factory.mktemp("odd-vocab")
    for f in tiny_llama.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(folder / "model.safetensors"))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        w = weights[name]
        weights[name] = torch.cat([w, w.new_zeros(ODD_VOCAB - w.shape[0], w.shape[1])])
    save_file(weights, str(folder / "model.safetensors"))
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "vocab_size": ODD_VOCAB}))
    return folder


@pytest.fixture(scope="module")
def models(tiny_llama: Path, tiny_qwen3: Path, odd_vocab_llama: Path) -> list[str]:
    return [str(tiny_llama), str(tiny_qwen3), str(odd_vocab_llama)]  # qwen3: tied LM head, q/k norms


@pytest.fixture(scope="module")
def two_ranks(models: list[str], tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Each rank's workload results per model folder, from two gloo processes."""
    out = tmp_path_factory.mktemp("tp") / "result.json"
    port = str(_free_port())
    procs = []
    for rank in range(WORLD):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(WORLD), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port}
        cmd = [sys.executable, "-m", "shard.tests.tp_workload", str(out), *models]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for rank, p in enumerate(procs):
        log, _ = p.communicate(timeout=300)
        assert p.returncode == 0, f"rank {rank} failed:\n{log.decode()[-3000:]}"
    return [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(WORLD)]


@pytest.fixture(scope="module")
def one_rank(models: list[str]) -> dict:
    """The same workload on a single-rank shard (no process group) in this process."""
    results = {}
    for folder in models:
        config = dataclasses.replace(make_config(Path(folder), num_blocks=64), cpu_threads=1)
        results[folder] = asyncio.run(run_workload(build_service(config)))
    return results


def test_two_ranks_give_one_ranks_greedy_tokens(models, two_ranks, one_rank) -> None:
    for folder in models:
        one, tp = one_rank[folder], two_ranks[0][folder]
        assert sorted(one["tokens"]) == ["0", "1", "2", "9"]
        assert tp["tokens"] == one["tokens"], folder
        for rid, logprobs in one["logprobs"].items():
            assert tp["logprobs"][rid] == pytest.approx(logprobs, abs=LOGPROB_TOL), (folder, rid)
        assert len(one["prompt_logprobs"]) > 10
        assert tp["prompt_logprobs"][1:] == pytest.approx(one["prompt_logprobs"][1:], abs=LOGPROB_TOL)


def test_every_rank_chooses_the_tokens_and_rank_0_alone_reports_them(models, two_ranks, one_rank) -> None:
    for folder in models:
        sampled = [two_ranks[rank][folder]["sampled"] for rank in range(WORLD)]
        assert sampled == [one_rank[folder]["tokens"]] * WORLD
        assert two_ranks[1][folder]["tokens"] == {}


def test_each_rank_holds_half_of_attention_mlp_vocab_and_kv_pool(models, two_ranks, one_rank) -> None:
    column = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight", "up_proj.weight")
    row = ("o_proj.weight", "down_proj.weight")
    vocab = ("model.embed_tokens.weight", "lm_head.weight")
    for folder in models:
        full = one_rank[folder]["params"]
        c = DecoderConfig.from_hf(read_config(Path(folder)))
        for rank in range(WORLD):
            mine = two_ranks[rank][folder]["params"]
            assert mine.keys() == full.keys()
            for name, shape in full.items():
                if name in vocab:
                    want = [-(-shape[0] // WORLD), shape[1]]  # ceil: 1,025 rows -> 513 per rank
                elif name.endswith(column):
                    want = [shape[0] // WORLD, shape[1]]
                elif name.endswith(row):
                    want = [shape[0], shape[1] // WORLD]
                else:  # norms
                    want = shape
                assert mine[name] == want, (folder, rank, name)
            layer = "model.layers.0."
            assert mine[layer + "self_attn.q_proj.weight"] == [c.heads // WORLD * c.head_dim, c.hidden]
            assert mine[layer + "self_attn.k_proj.weight"] == [c.kv_heads // WORLD * c.head_dim, c.hidden]
            assert mine[layer + "mlp.down_proj.weight"] == [c.hidden, c.intermediate // WORLD]
            kv, kv_full = two_ranks[rank][folder], one_rank[folder]
            assert kv["kv_shape"] == [64, 16, c.kv_heads // WORLD, c.head_dim]
            assert kv_full["kv_shape"] == [64, 16, c.kv_heads, c.head_dim]
            assert kv["num_blocks"] == kv_full["num_blocks"] and kv["kv_bytes"] * WORLD == kv_full["kv_bytes"]


def test_a_model_that_does_not_split_fails_clearly_before_joining_a_group(tiny_llama: Path) -> None:
    config = dataclasses.replace(make_config(tiny_llama), rank=0, world_size=3)
    with pytest.raises(ValueError, match=r"--num-shard 3: the model's attention heads 4, KV heads 2, "
                                         r"intermediate size 128 not divisible by 3"):
        build_runner(config)  # NOTE: would hang in init_process_group if it joined a group of 3 first
    c = DecoderConfig.from_hf(read_config(tiny_llama))
    with pytest.raises(ValueError, match=r"the model's KV heads 2 not divisible by 4"):
        LlamaForCausalLM(c, get_backend("reference", "cpu"), TensorParallel(0, 4))
    check_divisible(c.heads, c.kv_heads, c.intermediate, 2)


def test_rank_slices_read_rows_columns_and_pad_the_last_vocab_rows(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    table, proj = torch.arange(20.0).view(10, 2), torch.arange(12.0).view(2, 6)
    save_file({"table": table, "proj": proj, "norm": torch.ones(3)}, str(path))
    m = torch.nn.Module()
    m.table = torch.nn.Parameter(torch.empty(4, 2))  # ceil(10 / 3) vocab rows
    m.proj = torch.nn.Parameter(torch.empty(2, 2))  # row-parallel: 6 / 3 columns
    m.norm = torch.nn.Parameter(torch.empty(3))
    load_rank_weights(m, [path], TensorParallel(2, 3))
    assert m.table.tolist() == [[16.0, 17.0], [18.0, 19.0], [0.0, 0.0], [0.0, 0.0]]
    assert m.proj.tolist() == proj[:, 4:6].tolist() and m.norm.tolist() == [1.0, 1.0, 1.0]
    m.proj = torch.nn.Parameter(torch.empty(2, 4))
    with pytest.raises(ValueError, match=r"proj: checkpoint dim 1 of 6 is not 3 x 4"):
        load_rank_weights(m, [path], TensorParallel(0, 3))
