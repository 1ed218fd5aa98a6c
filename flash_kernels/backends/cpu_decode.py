"""The compiled CPU decode kernel (``cpu_decode.cpp``): built once per machine with torch's C++ extension
loader, then loaded from its cache (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``). The same
extension carries the bf16 prefill kernels (``cpu_prefill.cpp``, ``cpu_prefill_amx.cpp``, used through
:mod:`.cpu_prefill`), the fused pointwise ops (:mod:`.cpu_pointwise`), the thread pinning (:mod:`.cpu_threads`)
and the AMX linears (:mod:`.cpu_linear`).

It reads K/V in place through the block table, where the SDPA path first gathers every request's context into
a padded copy and then pays torch's flash kernel's per-(request, head) setup, which dominates for one query
row per KV head group (docs/performance.md has the numbers). Without a C++ compiler or ninja, or with
``PRISM_CPU_DECODE_KERNEL=0``, :func:`load` returns False and the SDPA path serves decode and prefill (logged
once). Built with OpenMP, so that ``at::parallel_for`` in it uses torch's intra-op threads.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger(__name__)
_PARTS = ("prefill", "prefill_amx", "prefill_avx2", "pointwise", "threads", "linear", "panels")
SOURCES = [Path(__file__).with_suffix(".cpp")] + [Path(__file__).with_name(f"cpu_{part}.cpp") for part in _PARTS]
# included by SOURCES: part of the build's name
HEADERS = [Path(__file__).with_name(f"cpu_{part}.h")
           for part in ("simd", "simd_avx2", "amx", "prefill_args", "shapes", "rows", "decode_avx2")]
ENV = "PRISM_CPU_DECODE_KERNEL"
CFLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp")
_state: dict[str, bool] = {}  # "built": the build's outcome (once per process); "off": set_enabled(False)


def load() -> bool:
    """Build (first time on this machine: 15-40 s on 2 cores) or load the kernel; True when
    ``torch.ops.prism_kernels.paged_decode`` is usable and not switched off. Cached per process; never
    raises."""
    if "built" not in _state:
        _state["built"] = _load()
    return _state["built"] and not _state.get("off", False)


def set_enabled(on: bool) -> None:
    """Use the kernel (when it built) or the SDPA path from now on, in this process: for A/B benchmarks."""
    _state["off"] = not on


def _load() -> bool:
    if os.environ.get(ENV, "1") == "0":
        log.info("compiled CPU decode kernel off (%s=0): decode attention on SDPA", ENV)
        return False
    try:
        from torch.utils.cpp_extension import load as build

        # NOTE: -march=native code must not be reused on another CPU: the CPU's flags name the build; so do
        # the sources, so that checkouts with other kernels beside each other do not rebuild one another's.
        name = f"prism_paged_decode_{_cpu_tag()}"
        folder = _build_folder(name)
        with _build_lock(folder):
            build(name=name, sources=[str(p) for p in SOURCES], build_directory=str(folder),
                  extra_cflags=list(CFLAGS), extra_ldflags=["-fopenmp"],
                  is_python_module=False)
    except Exception as err:  # no compiler / ninja / headers: fall back, never fail the shard
        log.warning("compiled CPU decode kernel unavailable (%s: %s); decode attention on SDPA",
                    type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return False
    log.info("compiled CPU decode kernel loaded (%s=0 turns it off)", ENV)
    return True


def _build_folder(name: str) -> Path:
    """Where torch's loader itself would build ``name``: TORCH_EXTENSIONS_DIR or its default root, per Python."""
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    folder = Path(root) / f"py{sys.version_info.major}{sys.version_info.minor}_cpu" / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """Hold an OS file lock on ``folder`` while torch's loader builds or loads there. torch guards a build with
    a ``lock`` file that a build killed midway leaves behind, and every later loader then waits on it forever
    (a shard that never starts). Every loader of ours takes this lock first, and the OS releases it when its
    holder dies, so a ``lock`` file found while holding it is a dead build's: removed."""
    with open(folder / "prism-build.flock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        stale = folder / "lock"
        if stale.exists():
            log.warning("removing %s, left by a kernel build that did not finish", stale)
            stale.unlink(missing_ok=True)
        yield


def _cpu_tag() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        flags = next(line for line in lines if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = os.uname().machine
    sources = b"".join(p.read_bytes() for p in SOURCES + HEADERS)
    return hashlib.sha1(flags.encode() + torch.__version__.encode() + sources).hexdigest()[:10]


def decode(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seqlens_k: torch.Tensor,
    max_seqlen_k: int,
    softmax_scale: float,
) -> torch.Tensor:
    """``AttentionBackend.decode`` on the compiled kernel (call :func:`load` first): q (b, h, d) ->
    (b, h, d); caches (nb, bs, hk, d) contiguous; block_tables (b, mb) int32; seqlens_k (b,) int32.
    ``max_seqlen_k`` is unused (the kernel reads each request's own length), kept for the contract."""
    q = q.contiguous()
    out = torch.empty_like(q)
    torch.ops.prism_kernels.paged_decode(
        q, key_cache, value_cache, block_tables.to(torch.int32), seqlens_k.to(torch.int32), softmax_scale, out
    )
    return out
