"""GRU4Rec-style network (torch; training and export only, never imported by the worker).

Why a GRU: its whole memory of a user is one hidden vector, so the worker keeps that
vector in the user's RocksDB session state and each new event costs one GRU step,
whatever the length of the history. Trained with full softmax cross-entropy over the
catalog (the loss that closes most of the gap to the best published results).
"""

from __future__ import annotations

import torch
from torch import nn

PAD = 0  # item index 0 is padding / unknown


class GRURec(nn.Module):
    def __init__(self, n_items: int, dim: int = 64, dropout: float = 0.2) -> None:
        super().__init__()
        self.n_items = n_items  # including PAD
        self.dim = dim
        self.emb = nn.Embedding(n_items, dim, padding_idx=PAD)
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.out = nn.Linear(dim, n_items)

    def encode(self, items: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        """items [B, L] (right-padded), h0 [B, H] -> hidden after each step [B, L, H]."""
        out, _ = self.gru(self.drop(self.emb(items)), h0.unsqueeze(0).contiguous())
        return out

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        scores = self.out(h)
        return scores.index_fill(-1, torch.tensor([PAD], device=h.device), float("-inf"))


class ServeGraph(nn.Module):
    """What is exported to ONNX: one call per worker batch.

    Inputs: ``items`` [B, L] new items per user (right-padded with 0), ``h0`` [B, H]
    each user's cached state (zeros for a user without one), ``gather`` [M] positions
    in the flattened [B, L+1] state sequence (position 0 of a row is ``h0``), one per
    event to answer, and ``exclude`` [M, X] items not to recommend (0-padded).
    Outputs: ``states`` [B, L+1, H], ``scores`` / ``top`` [M, K] best items (top-K
    is inside the graph).
    """

    def __init__(self, net: GRURec, k: int) -> None:
        super().__init__()
        self.net = net
        self.k = k

    def forward(self, items, h0, gather, exclude):
        out = self.net.encode(items, h0)
        states = torch.cat([h0.unsqueeze(1), out], dim=1)
        flat = states.reshape(-1, states.shape[-1])
        picked = flat.index_select(0, gather)
        scores = self.net.logits(picked)
        masked = scores.scatter(
            1, exclude, torch.full_like(exclude, 0, dtype=scores.dtype).fill_(float("-inf"))
        )
        top_scores, top = torch.topk(masked, self.k, dim=1)
        return states, top_scores, top
