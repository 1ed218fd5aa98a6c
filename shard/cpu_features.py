"""What the host CPU offers the shard: native bf16 arithmetic, and how many cores are ours.

Read from ``/proc/cpuinfo`` (Linux); elsewhere nothing is detected and the shard keeps fp32.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The ``flags`` of the first processor in /proc/cpuinfo; empty when unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(flags: frozenset[str] | None = None) -> str | None:
    """The flag that gives this CPU native bf16 matmuls (AVX512-BF16 or AMX), or None."""
    have = cpu_flags() if flags is None else flags
    return next((f for f in BF16_FLAGS if f in have), None)
