"""Ranking: turn a batch of session states into ranked items with reasons.

One call per batch (``rank_batch``) so a model backend can run a single inference for
the whole batch. Today the backend is the co-occurrence model; the sequential ONNX
model plugs in behind the same call and keeps this one as its fallback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .baseline import CooccurrenceModel
from .state import SessionState


@dataclass(frozen=True, slots=True)
class RankRequest:
    user_id: str
    state: SessionState


class Ranker:
    def __init__(self, model: CooccurrenceModel, top_k: int = 10) -> None:
        self.model = model
        self.top_k = top_k

    @classmethod
    def from_path(cls, path: str | Path, top_k: int = 10) -> Ranker:
        return cls(CooccurrenceModel.load(path), top_k)

    @property
    def version(self) -> str:
        return self.model.version

    def rank_batch(self, requests: Sequence[RankRequest]) -> list[list[dict[str, Any]]]:
        out = []
        titles = self.model.titles
        for req in requests:
            history = [(e[0], e[1]) for e in req.state.entries if e[0] is not None]
            recs = self.model.recommend(history, k=self.top_k, exclude=req.state.seen())
            items = []
            for r in recs:
                item: dict[str, Any] = {
                    "item_id": r.item_id,
                    "score": r.score,
                    "reasons": r.reasons,
                }
                title = titles.get(r.item_id)
                if title:
                    item["title"] = title
                items.append(item)
            out.append(items)
        return out
