"""Pinning torch's intra-op threads to CPUs (``cpu_threads.cpp``, built with the CPU attention kernels by
:mod:`.cpu_decode`). ``shard.cpu_affinity`` decides when and where."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from flash_kernels.backends import cpu_decode


def pin_team(cpus: Sequence[int]) -> int:
    """Bind the calling thread's OpenMP team, thread i to ``cpus[i]`` (the team's size,
    ``torch.get_num_threads()``, must be ``len(cpus)``); later regions of any size reuse those threads, so the
    binding holds. Returns how many threads were bound: 0 when the extension is unavailable or off
    (``PRISM_CPU_DECODE_KERNEL=0``), fewer than ``len(cpus)`` when the team is smaller or a CPU is not
    allowed to the process."""
    if not cpus or not cpu_decode.load():
        return 0
    return int(torch.ops.prism_kernels.pin_team(list(cpus)))
