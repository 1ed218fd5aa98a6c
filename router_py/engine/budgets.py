"""TGI's ``next_batch`` budgets (tgi-compat 2.4): what a new batch may take beside the running one.

Pure arithmetic, shared by the batcher and :mod:`bench.simulator`, so the two always offer the scheduler the
same budgets.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Budgets:
    """prefill: tokens the new batch may compute; tokens: tokens it may reserve (prompt + generation);
    max_size: requests it may hold (None: no limit)."""

    prefill: int
    tokens: int
    max_size: int | None


def admission_budgets(
    prefill_budget: int,
    max_batch_total_tokens: int,
    held_tokens: int,
    max_batch_size: int | None,
    running: int,
) -> Budgets | None:
    """Args: prefill_budget: the prefill tokens left this step; max_batch_total_tokens: the KV capacity in
    tokens; held_tokens: what the running batch reserves of it; max_batch_size: the batch size limit (None:
    none); running: requests in the running batch.

    Returns the budgets, or None when nothing can be admitted (a budget or the batch size is used up)."""
    max_size = max_batch_size
    if max_size is not None:
        max_size -= running
        if max_size <= 0:
            return None
    token_budget = max_batch_total_tokens - held_tokens
    if prefill_budget <= 0 or token_budget <= 0:
        return None
    return Budgets(prefill_budget, token_budget, max_size)
