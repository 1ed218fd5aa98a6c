"""Every environment variable the router and the launcher read, in one place (TGI's names where TGI has them).

Read at call time, never cached in module globals, so a test's ``monkeypatch.setenv`` takes effect. Flags with
an environment fallback (``--max-input-tokens`` <- ``MAX_INPUT_TOKENS``) read through :func:`flag_value`.
"""

from __future__ import annotations

import os

SHARD_THREADS = "PRISM_SHARD_THREADS"  # the shard's (shard/factory.py); the launcher may set it


def flag_value(name: str) -> str | None:
    """The raw value of a flag's UPPER_SNAKE variable (None when unset)."""
    return os.environ.get(name)


def compute_type() -> str:
    """``COMPUTE_TYPE``: reported in the ``x-compute-type`` header (TGI's default)."""
    return os.environ.get("COMPUTE_TYPE", "gpu+optimized")


def docker_label() -> str | None:
    """``DOCKER_LABEL``: reported in ``/info``."""
    return os.environ.get("DOCKER_LABEL")


def log_level() -> str:
    """``LOG_LEVEL`` (default ``info``), upper-cased."""
    return os.environ.get("LOG_LEVEL", "info").upper()


def prism_cache_dir() -> str | None:
    """``PRISM_CACHE_DIR``: where the launcher builds the demo model (None or empty: the default)."""
    return os.environ.get("PRISM_CACHE_DIR")


def hub_token() -> str | None:
    """The Hugging Face token for downloads: ``HF_TOKEN``, else TGI's former ``HF_API_TOKEN`` (which TGI's
    launcher passes on as ``HF_TOKEN``; huggingface_hub itself does not read it). None: huggingface_hub's own
    lookup (``HUGGING_FACE_HUB_TOKEN``, the token file)."""
    return os.environ.get("HF_TOKEN") or os.environ.get("HF_API_TOKEN") or None


def shard_threads() -> str | None:
    """``PRISM_SHARD_THREADS``: torch threads of every CPU shard (the shard reads it; the launcher sets it for
    data-parallel replicas when it is not set already). None when unset or empty."""
    return os.environ.get(SHARD_THREADS) or None


def uvloop_wanted() -> bool:
    """``PRISM_UVLOOP``: ``0`` runs the router on asyncio's own event loop instead of uvloop's."""
    return os.environ.get("PRISM_UVLOOP", "1") != "0"


def prompt_prefix_reuse() -> bool:
    """``PRISM_TOKEN_REUSE``: ``0`` tokenizes every prompt whole instead of reusing the ids of an opening text
    tokenized before (``router_py/prefix_tokens.py``)."""
    return os.environ.get("PRISM_TOKEN_REUSE", "1") != "0"


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, as the shard counts them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def inherited() -> dict[str, str]:
    """The whole environment, for the launcher's children to inherit."""
    return dict(os.environ)
