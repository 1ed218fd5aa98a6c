"""Kernel tests run Triton in interpreter mode on CPU tensors: the variable must be set before triton is first
imported (``scripts/test.sh`` sets it for the whole run; this covers a bare ``pytest flash_kernels``)."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
