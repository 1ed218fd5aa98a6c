"""Attention and KV-store kernels behind a small interface (see :mod:`flash_kernels.api`)."""

from flash_kernels.api import AttentionBackend, available_backends, get_backend

__all__ = ["AttentionBackend", "available_backends", "get_backend"]
