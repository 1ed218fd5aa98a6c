"""Pinning a CPU shard's step threads (shard.cpu_affinity, flash_kernels' pin_team)."""

from __future__ import annotations

import os
import subprocess
import sys

from shard import cpu_affinity
from shard.config import ShardConfig


def test_each_shard_on_the_host_takes_its_own_run_of_cpus(monkeypatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {4, 0, 2, 6, 1, 3, 5, 7})
    assert cpu_affinity.pin_cpus(3, 0)[0] == (0, 1, 2)
    assert cpu_affinity.pin_cpus(3, 1)[0] == (3, 4, 5)
    cpus, why = cpu_affinity.pin_cpus(3, 2)
    assert cpus == () and "too few" in why
    assert cpu_affinity.pin_cpus(8, None)[0] == tuple(range(8))  # a lone shard taking every CPU
    assert cpu_affinity.pin_cpus(3, None) == ((), "not pinned: 3 threads for 8 CPUs")  # --cpu-threads 3
    monkeypatch.setenv(cpu_affinity.ENV, "0")
    assert cpu_affinity.pin_cpus(3, 0) == ((), f"{cpu_affinity.ENV}=0")


def test_the_slot_is_the_replica_rank_then_the_tensor_parallel_rank(monkeypatch) -> None:
    from shard import factory
    from shard.model_runner import CpuThreads

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)))
    lone = factory.with_pinning(CpuThreads(7, 8), ShardConfig("m"))[0]
    assert lone == CpuThreads(7, 8, tuple(range(8)))
    assert factory.with_pinning(CpuThreads(4, 4), ShardConfig("m", cpu_threads=4))[0].cpus == ()
    rank = factory.with_pinning(CpuThreads(4, 4), ShardConfig("m", rank=1, world_size=2))[0]
    assert rank.cpus == (4, 5, 6, 7)
    replica = factory.with_pinning(CpuThreads(2, 2), ShardConfig("m", local_rank=2))[0]
    assert replica.cpus == (4, 5)


PIN_CHILD = """
import os, torch
from shard.cpu_affinity import TeamPinning
cpus = tuple(sorted(os.sched_getaffinity(0))[:2])
torch.set_num_threads(len(cpus))
pinning = TeamPinning(cpus)
pinning.maybe_pin(len(cpus) + 1)  # another team size: nothing happens
assert not pinning.done and os.sched_getaffinity(0) != {cpus[0]}
pinning.maybe_pin(len(cpus))
x = torch.randn(512, 512)
torch.set_num_threads(1); x @ x; torch.set_num_threads(len(cpus)); x @ x  # the binding outlives team changes
masks = []
for tid in os.listdir("/proc/self/task"):
    masks.append(os.sched_getaffinity(int(tid)))
assert os.sched_getaffinity(0) == {cpus[0]}, os.sched_getaffinity(0)
assert sorted(tuple(m) for m in masks if len(m) == 1) == [(c,) for c in cpus], masks
print("ok", cpus)
"""


def test_the_step_team_is_pinned_one_thread_per_cpu() -> None:
    """In a child process (threads started later inherit a pinned thread's CPUs): the calling thread gets the
    first CPU, the team's other thread the second, and the binding holds after the team shrinks and grows."""
    out = subprocess.run([sys.executable, "-c", PIN_CHILD], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")


def test_prism_shard_bench_gives_every_model_the_same_threads(tmp_path) -> None:
    """The bench pins its step thread with each model's runner; the next model's runner must still see
    every CPU, not the one the previous pinned it to (it benched 100m with one thread)."""
    cmd = [sys.executable, "-m", "shard.cli", "bench", "--model", "tiny,tiny", "--workdir", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    threads = [line.split("threads=")[1] for line in out.stdout.splitlines() if line.startswith("== ")]
    assert len(threads) == 2 and threads[0] == threads[1], threads
