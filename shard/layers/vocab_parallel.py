"""Vocab-parallel embedding and LM head: each tensor-parallel rank holds ceil(vocab / world) table rows.

Rank r holds token ids [r * part, (r + 1) * part); the last rank's rows past ``vocab`` are zero padding, never
looked up, and their logit columns are cut off after the gather.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from shard.tensor_parallel import TensorParallel


class VocabParallelEmbedding(nn.Embedding):
    """ids (n,) int64 -> (n, hidden): a masked lookup in this rank's rows, then one all-reduce.

    The parameter is ``weight`` (part, hidden), as ``nn.Embedding``'s, so checkpoint names are unchanged.
    """

    def __init__(self, vocab: int, hidden: int, tp: TensorParallel) -> None:
        super().__init__(tp.vocab_part(vocab), hidden)
        self.tp, self.start = tp, tp.rank * self.num_embeddings

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        outside = (local < 0) | (local >= self.num_embeddings)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.tp.all_reduce(out.masked_fill(outside[:, None], 0.0))


def gather_logits(partial: torch.Tensor, vocab: int, tp: TensorParallel) -> torch.Tensor:
    """This rank's logit columns (m, part) -> every rank's (m, vocab) fp32, identical on all ranks (so every
    rank samples the same tokens)."""
    return tp.all_gather_last(partial.float())[:, :vocab].contiguous()
