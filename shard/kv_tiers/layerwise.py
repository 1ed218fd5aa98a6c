"""Layer-wise overlap of KV loads with the forward (PCR): while layer i computes, the KV of layer i+1 loads.

:func:`layerwise` swaps the pool's layer list for a :class:`LayerwiseKV` during one step: it yields layer i's
(key_cache, value_cache) only once layer i's loads have landed. On CUDA every load is queued on a side stream
at once with one event per layer, and the compute stream waits on layer i's event (copies of later layers
run under the compute of earlier ones); on a CPU a worker thread copies layer by layer and sets one flag per
layer.
The model code does not change: it iterates ``kv_caches`` as before.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from shard.kv_cache import KVCache
from shard.kv_tiers.tiers import load_block

# (block (layers, 2, bs, kv_heads, head_dim) in host memory, device block id)
Loads = list[tuple[torch.Tensor, int]]


class LayerwiseKV(list):
    """The pool's per-layer (key_cache, value_cache) pairs; reading layer i waits for layer i's loads."""

    def __init__(self, layers: list, ready) -> None:
        super().__init__(layers)
        self._ready = ready  # callable(layer) that returns once that layer's loads are usable

    def __iter__(self) -> Iterator:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, int):
            self._ready(i if i >= 0 else len(self) + i)
        return super().__getitem__(i)


@contextmanager
def layerwise(kv: KVCache, loads: Loads) -> Iterator[None]:
    """Within the block, ``kv.layers`` yields each layer once its part of ``loads`` is in the pool; on exit
    every load has landed and ``kv.layers`` is the plain list again."""
    if not loads:
        yield
        return
    plain = kv.layers
    if plain[0][0].device.type == "cuda":
        ready, finish = _cuda_loads(plain, loads)
    else:
        ready, finish = _thread_loads(plain, loads)
    kv.layers = LayerwiseKV(plain, ready)
    try:
        yield
    finally:
        kv.layers = plain
        finish()


def _cuda_loads(layers: list, loads: Loads):
    device = layers[0][0].device
    stream = torch.cuda.Stream(device)
    events = []
    with torch.cuda.stream(stream):
        for layer in range(len(layers)):
            for block, slot in loads:
                load_block(layers, block, slot, layer)
            events.append(torch.cuda.Event())
            events[-1].record(stream)

    def ready(layer: int) -> None:
        torch.cuda.current_stream(device).wait_event(events[layer])

    def finish() -> None:
        torch.cuda.current_stream(device).wait_stream(stream)

    return ready, finish


def _thread_loads(layers: list, loads: Loads):
    flags = [threading.Event() for _ in layers]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with torch.no_grad():
                for layer, flag in enumerate(flags):
                    for block, slot in loads:
                        load_block(layers, block, slot, layer)
                    flag.set()
        except BaseException as err:  # NOTE: reported to the step, which then fails
            errors.append(err)
            for flag in flags:
                flag.set()

    thread = threading.Thread(target=work, name="kv-layer-loads", daemon=True)
    thread.start()

    def ready(layer: int) -> None:
        flags[layer].wait()
        if errors:
            raise RuntimeError(f"loading KV layer {layer} failed: {errors[0]}")

    def finish() -> None:
        thread.join()

    return ready, finish
