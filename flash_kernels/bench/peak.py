"""The device's measured peaks, taken in the same run as the kernels they judge: dense matmul TFLOP/s in the
benchmark dtype and device-memory copy bandwidth."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flash_kernels.bench.timing import time_ms


@dataclass(frozen=True)
class Peaks:
    matmul_tflops: float
    copy_gbps: float
    matmul_n: int
    copy_bytes: int


def measure_peaks(
    device: torch.device, dtype: torch.dtype, matmul_n: int, copy_bytes: int, warmup: int, iters: int
) -> Peaks:
    """matmul_n: side of the square (n, n) @ (n, n) product; copy_bytes: size of the copied buffer. Copy
    bandwidth counts the read and the write (2 x copy_bytes per copy), as the decode figure counts reads."""
    a = torch.randn(matmul_n, matmul_n, device=device).to(dtype)
    b = torch.randn(matmul_n, matmul_n, device=device).to(dtype)
    ms = time_ms(lambda: torch.matmul(a, b), device, warmup, iters)
    tflops = 2 * matmul_n**3 / (ms * 1e-3) / 1e12
    src = torch.empty(copy_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, warmup, iters)
    gbps = 2 * copy_bytes / (ms * 1e-3) / 1e9
    return Peaks(tflops, gbps, matmul_n, copy_bytes)
