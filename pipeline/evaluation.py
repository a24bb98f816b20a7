"""Full-sort top-K evaluation (docs/method.md, "Evaluation protocol"): Recall, NDCG, Precision and MAP at several K.

Every user of the split is scored against all items in batches on the training device; the user's
train items are masked to -inf (validation items stay unmasked on the test split, as MMRec does),
and hits come from a ground-truth mask gathered at the top-K positions: no Python loop over
users or ranks. The top K of each row come from `top_k_columns`, a grouped pre-selection in front of
torch.topk.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from pipeline.dataset import InteractionData, Split

Scorer = Callable[[torch.Tensor], torch.Tensor]  # user ids [B] -> scores [B, n_items]


def metrics_from_hits(hits: torch.Tensor, n_relevant: torch.Tensor, topk: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Per-metric sums over users from a hit matrix [B, maxK] (1 = relevant at that rank) and |GT| [B]."""
    hits = hits.to(torch.float64)
    n_relevant = n_relevant.to(torch.float64)
    max_k = hits.shape[1]
    ranks = torch.arange(1, max_k + 1, dtype=torch.float64, device=hits.device)
    discount = 1.0 / torch.log2(ranks + 1.0)
    cum_hits = hits.cumsum(1)
    cum_dcg = (hits * discount).cumsum(1)
    cum_ideal = discount.cumsum(0)
    cum_ap = (cum_hits / ranks * hits).cumsum(1)
    out = {}
    for k in topk:
        denom = torch.clamp(n_relevant, max=k)
        out[f"recall@{k}"] = (cum_hits[:, k - 1] / n_relevant).sum()
        out[f"precision@{k}"] = (cum_hits[:, k - 1] / k).sum()
        out[f"ndcg@{k}"] = (cum_dcg[:, k - 1] / cum_ideal[denom.long() - 1]).sum()
        out[f"map@{k}"] = (cum_ap[:, k - 1] / denom).sum()
    return out


def top_k_columns(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices of each row's k largest scores, best first: the values torch.topk selects.

    On CPU a row's first g·m columns form m groups of g (group j: columns j, j + m, j + 2m, ...;
    g ≈ √(n/k)); only the k groups with the largest maxima can hold the row's top k (any other
    element has k group maxima at least as large above it), so torch.topk runs on their k·g members
    (plus the n mod g leftover columns) instead of the whole row (docs/speed.md, lever `topk`). Tied
    scores may come out in another order than torch.topk's, which documents none. CUDA uses
    torch.topk directly.
    """
    n = scores.shape[1]
    group = max(2, round(math.sqrt(n / max(k, 1))))
    n_groups = n // group
    if scores.device.type != "cpu" or n_groups <= k:
        return scores.topk(k, dim=1).indices
    body = scores[:, : n_groups * group].unflatten(1, (group, n_groups))  # [B, g, m]: [b, r, j] = column r·m + j
    best_groups = body.amax(1).topk(k, dim=1, sorted=False).indices
    offsets = torch.arange(0, n_groups * group, n_groups, device=scores.device)
    columns = (best_groups.unsqueeze(1) + offsets.unsqueeze(1)).flatten(1)  # [B, g·k]
    if n_groups * group < n:  # leftover columns are in no group: always candidates
        tail = torch.arange(n_groups * group, n, device=scores.device).expand(scores.shape[0], -1)
        columns = torch.cat([columns, tail], dim=1)
    best = scores.gather(1, columns).topk(k, dim=1).indices
    return columns.gather(1, best)


@dataclass(frozen=True)
class _UserBatch:
    users: torch.Tensor  # [B]
    mask_rows: torch.Tensor  # batch-local row of each masked (train) item
    mask_cols: torch.Tensor
    truth_rows: torch.Tensor  # batch-local row of each ground-truth item
    truth_cols: torch.Tensor
    n_relevant: torch.Tensor  # [B]


def _group(users: np.ndarray, items: np.ndarray, batch_users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(batch-local row, item) of the pairs whose user is in `batch_users` (sorted)."""
    pos = np.searchsorted(batch_users, users)
    pos = np.clip(pos, 0, len(batch_users) - 1)
    keep = batch_users[pos] == users
    return pos[keep], items[keep]


class Evaluator:
    """Evaluates a scorer on one split of a dataset; batches and masks are prepared once."""

    def __init__(self, data: InteractionData, split: Split, topk: tuple[int, ...], batch_size: int, device):
        self.topk = tuple(sorted(topk))
        self.n_items = data.n_items
        users = np.unique(split.users)
        self.n_users = len(users)
        self.batches = []
        for start in range(0, len(users), batch_size):
            batch = users[start : start + batch_size]
            mask_rows, mask_cols = _group(data.train.users, data.train.items, batch)
            truth_rows, truth_cols = _group(split.users, split.items, batch)
            # Duplicate ground-truth rows count once (the hit matrix is a set membership).
            truth = np.unique(truth_rows.astype(np.int64) * data.n_items + truth_cols)
            truth_rows, truth_cols = truth // data.n_items, truth % data.n_items
            to = lambda a: torch.as_tensor(a, dtype=torch.long, device=device)  # noqa: E731
            self.batches.append(
                _UserBatch(
                    users=to(batch),
                    mask_rows=to(mask_rows),
                    mask_cols=to(mask_cols),
                    truth_rows=to(truth_rows),
                    truth_cols=to(truth_cols),
                    n_relevant=to(np.bincount(truth_rows, minlength=len(batch))),
                )
            )

    @torch.no_grad()
    def evaluate(self, scorer: Scorer) -> dict[str, float]:
        """Mean metric values over the split's users for the given scorer."""
        max_k = min(max(self.topk), self.n_items)
        totals: dict[str, torch.Tensor] = {}
        for b in self.batches:
            scores = scorer(b.users).float()
            scores[b.mask_rows, b.mask_cols] = -torch.inf
            top = top_k_columns(scores, max_k)
            truth = torch.zeros_like(scores, dtype=torch.bool)
            truth[b.truth_rows, b.truth_cols] = True
            hits = truth.gather(1, top)
            if max_k < self.topk[-1]:  # fewer items than K: the missing ranks are misses
                hits = torch.nn.functional.pad(hits, (0, self.topk[-1] - max_k))
            for name, value in metrics_from_hits(hits, b.n_relevant, self.topk).items():
                totals[name] = totals.get(name, 0.0) + value
        return {name: float(value) / self.n_users for name, value in sorted(totals.items())}
