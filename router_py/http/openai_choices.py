"""OpenAI's ``n``: choices per prompt on ``/v1/chat/completions`` and ``/v1/completions``.

Each choice is a sequence of its own (vLLM's parallel sampling): the prompt is validated and scheduled once
per choice, and the choices after the first find it in the prefix cache. With a ``seed``, choice ``j``
samples with ``seed + j`` (mod 2^64), as vLLM's child requests do, so the choices differ and a call is
reproducible; without one each gets its own random seed (validation). Greedy choices are equal, as in
vLLM. Completions' choice indices run over the prompts: prompt ``i``'s choice ``j`` is ``i * n + j``.
"""

from __future__ import annotations

from dataclasses import replace

from router_py.http.errors import validation_error
from router_py.http.validation import GenerateRequest

_SEEDS = 1 << 64  # TGI's seed is a u64


def choice_count(n: int | None, prompts: int, max_sequences: int) -> int:
    """``n`` (absent or null: 1). Raises HttpError 422 (validation) when it is below 1, or when the call's
    sequences (``prompts`` x ``n``) exceed ``max_sequences`` (the router's ``max_concurrent_requests``: each
    holds a permit while it runs, so such a call could never be served)."""
    count = 1 if n is None else n
    if count < 1:
        raise validation_error(f"`n` must be at least 1. Given: {n}")
    if prompts * count > max_sequences:
        raise validation_error(
            f"`n` x prompts must be <= max_concurrent_requests ({max_sequences}). Given: {count} x {prompts}"
        )
    return count


def choice_requests(req: GenerateRequest, n: int) -> list[GenerateRequest]:
    """The ``n`` choices' requests of one prompt's ``req``: seeds as the module says; only the first keeps
    the request's session (the others are alternatives of one turn, not turns of it)."""
    if n == 1:
        return [req]
    seed = req.parameters.seed
    return [
        replace(
            req,
            parameters=replace(req.parameters, seed=(seed + j) % _SEEDS) if seed is not None else req.parameters,
            session=req.session if j == 0 else None,
        )
        for j in range(n)
    ]
