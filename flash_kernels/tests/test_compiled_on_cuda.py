"""On a CUDA host, the Triton and reference suites again with compiled kernels on the GPU.

The test run sets TRITON_INTERPRET=1 process-wide (and triton reads it at import), so the compiled run needs a
fresh interpreter: a child pytest with TRITON_INTERPRET=0 and the cases moved to CUDA."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_kernels_match_the_reference_on_cuda() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "0", "FLASH_KERNELS_TEST_DEVICE": "cuda"}
    suites = [str(HERE / "test_triton_paged.py"), str(HERE / "test_reference.py")]
    # NOTE: each case compiles its own kernel specialization (seconds each): spread them over workers
    workers = ["-n", str(min(8, os.cpu_count() or 1))] if importlib.util.find_spec("xdist") else []
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *workers, *suites],
        env=env,
        cwd=HERE.parent.parent,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
