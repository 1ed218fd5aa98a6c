"""Where the launcher's model comes from: a local folder, a hub id (downloaded when a network is there), or
the built-in demo model, built once into ``${PRISM_CACHE_DIR:-~/.cache/prism-serve}/demo-llama-tiny``."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from router_py import env
from router_py.launch.process_group import executable

DEMO_NAME = "demo-llama-tiny"
DEMO_MODEL_ID = "prism-demo-llama-tiny"


class ModelSourceError(Exception):
    """The model cannot be found, built or downloaded; the message says what to do."""


def cache_dir() -> Path:
    return Path(env.prism_cache_dir() or "~/.cache/prism-serve").expanduser()


def resolve_model(
    model_id: str | None, revision: str | None = None, hub_cache: str | None = None
) -> tuple[str, str]:
    """Returns (local folder, model id to report); a hub id is looked up in (or downloaded into)
    ``hub_cache``, default the Hugging Face cache. Raises ModelSourceError."""
    if model_id is None:
        return str(demo_model()), DEMO_MODEL_ID
    local = Path(model_id).expanduser()
    if local.is_dir():
        return str(local.resolve()), model_id
    if local.exists() or model_id.startswith((".", "/", "~")) or model_id.count("/") > 1:
        raise ModelSourceError(f"MODEL_ID {model_id!r} is neither a model folder nor a hub id")
    return download(model_id, revision, hub_cache), model_id


def demo_model() -> Path:
    """The demo model folder, built on first use (concurrent launchers race safely: one rename wins)."""
    target = cache_dir() / DEMO_NAME
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    cmd = [executable("prism-demo-model"), str(scratch / "model"), "--arch", "llama", "--size", "tiny"]
    try:
        subprocess.run(cmd, check=True)
        os.rename(scratch / "model", target)
    except subprocess.CalledProcessError as e:
        raise ModelSourceError(f"building the demo model failed ({' '.join(cmd)}: exit {e.returncode})") from e
    except OSError:
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def download(model_id: str, revision: str | None, hub_cache: str | None = None) -> str:
    """Download a hub repository's files (weights, config, tokenizer) into ``hub_cache`` (None: the HF
    cache), or find them there offline (``HF_HUB_OFFLINE=1``)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ModelSourceError(
            f"MODEL_ID {model_id!r} is not a local folder, and huggingface_hub is not installed to download it"
        ) from e
    try:
        return snapshot_download(model_id, revision=revision, cache_dir=hub_cache, token=env.hub_token())
    except Exception as e:  # NOTE: any hub/network failure ends the same way: a clear message, exit 1
        raise ModelSourceError(
            f"MODEL_ID {model_id!r} is not a local folder and could not be downloaded from the Hugging Face Hub "
            f"({type(e).__name__}: {e}). Without a network, pass a local model folder as --model-id/MODEL_ID."
        ) from e
