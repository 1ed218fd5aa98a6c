"""GPU benchmark of the attention backends and of a Qwen3-4B-sized decode step:
``python -m flash_kernels.bench``; ``--device cpu --tiny`` runs the same code on tiny shapes, to prove the
code path without a GPU."""
