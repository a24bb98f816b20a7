"""Metric values computed by hand (docs/method.md, "Evaluation protocol"), for the hit-matrix formulas and the full evaluator."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.dataset import InteractionData, Split
from pipeline.evaluation import Evaluator, metrics_from_hits, top_k_columns

L3 = 1 / math.log2(3)  # discount at rank 2
L4 = 1 / math.log2(4)  # discount at rank 3 (= 0.5)


def test_metrics_from_hits_single_user():
    # GT of size 2, relevant items at ranks 1 and 3.
    out = metrics_from_hits(torch.tensor([[1, 0, 1, 0, 0]]), torch.tensor([2]), (1, 5))
    assert out["recall@1"].item() == pytest.approx(0.5)
    assert out["precision@1"].item() == pytest.approx(1.0)
    assert out["ndcg@1"].item() == pytest.approx(1.0)
    assert out["map@1"].item() == pytest.approx(1.0)
    assert out["recall@5"].item() == pytest.approx(1.0)
    assert out["precision@5"].item() == pytest.approx(0.4)
    assert out["ndcg@5"].item() == pytest.approx((1 + L4) / (1 + L3))
    assert out["map@5"].item() == pytest.approx((1 + 2 / 3) / 2)


def test_metrics_when_ground_truth_exceeds_k():
    # |GT| = 4 > K: IDCG and the MAP denominator use min(|GT|, K).
    out = metrics_from_hits(torch.tensor([[0, 1, 1]]), torch.tensor([4]), (2, 3))
    assert out["recall@2"].item() == pytest.approx(1 / 4)
    assert out["precision@2"].item() == pytest.approx(1 / 2)
    assert out["ndcg@2"].item() == pytest.approx(L3 / (1 + L3))
    assert out["map@2"].item() == pytest.approx(0.5 / 2)
    assert out["recall@3"].item() == pytest.approx(2 / 4)
    assert out["precision@3"].item() == pytest.approx(2 / 3)
    assert out["ndcg@3"].item() == pytest.approx((L3 + L4) / (1 + L3 + L4))
    assert out["map@3"].item() == pytest.approx((1 / 2 + 2 / 3) / 3)


def _toy_data() -> InteractionData:
    split = lambda pairs: Split(np.array([u for u, _ in pairs]), np.array([i for _, i in pairs]))  # noqa: E731
    return InteractionData(
        name="toy",
        n_users=2,
        n_items=6,
        train=split([(0, 0), (1, 5)]),
        valid=split([(0, 2), (1, 4)]),
        test=split([(0, 1), (0, 3), (1, 2)]),
        text_features=np.zeros((6, 2), np.float32),
        image_features=np.zeros((6, 2), np.float32),
    )


def test_evaluator_masks_train_items_only_and_averages_users():
    scores = torch.tensor(
        [
            [10.0, 9.0, 1.0, 8.0, 0.0, -1.0],  # item 0 is train: masked -> ranking 1, 3, 2, 4, 5
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # item 5 masked; valid item 4 stays -> ranking 4, 3, 2, ...
        ]
    )
    evaluator = Evaluator(_toy_data(), _toy_data().test, (1, 2, 5), batch_size=1, device="cpu")
    out = evaluator.evaluate(lambda users: scores[users])
    assert out["recall@1"] == pytest.approx((0.5 + 0) / 2)
    assert out["recall@2"] == pytest.approx((1.0 + 0) / 2)
    assert out["recall@5"] == pytest.approx((1.0 + 1.0) / 2)
    assert out["precision@5"] == pytest.approx((2 / 5 + 1 / 5) / 2)
    assert out["ndcg@2"] == pytest.approx((1.0 + 0.0) / 2)
    assert out["ndcg@5"] == pytest.approx((1.0 + L4) / 2)
    assert out["map@5"] == pytest.approx((1.0 + 1 / 3) / 2)


def test_evaluator_batching_does_not_change_results(tiny_data):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(tiny_data.n_users, tiny_data.n_items, generator=g)
    scorer = lambda users: scores[users]  # noqa: E731
    one = Evaluator(tiny_data, tiny_data.test, (5, 10, 20, 50), 4096, "cpu").evaluate(scorer)
    many = Evaluator(tiny_data, tiny_data.test, (5, 10, 20, 50), 7, "cpu").evaluate(scorer)
    assert one == pytest.approx(many, rel=1e-12)


@pytest.mark.parametrize("n_items, k", [(6960, 50), (1003, 20), (997, 1), (120, 50), (90, 50)])
def test_top_k_columns_equals_torch_topk_without_ties(n_items, k):
    # Continuous scores (no ties) with masked -inf entries. Groups of 12 (6960), 7 with 2 leftover
    # columns (1003), 32 with 5 leftover (997), 2 (120: 60 groups for k = 50); 90 items leave fewer
    # groups than k and fall back to torch.topk.
    g = torch.Generator().manual_seed(n_items + k)
    scores = torch.randn(64, n_items, generator=g) + torch.randn(1, n_items, generator=g)
    scores[torch.rand(64, n_items, generator=g) < 0.05] = -torch.inf
    scores[3, : n_items // 2] = -torch.inf  # a row with its first half masked
    scores[5, n_items - 1] = 1e9  # the row's best item is its last column (a leftover one where n mod g > 0)
    assert torch.equal(top_k_columns(scores, k), scores.topk(k, dim=1).indices)


def test_top_k_columns_keeps_the_top_values_under_ties_and_nan():
    # Integer scores tie everywhere: the chosen columns may differ from torch.topk's, but they are
    # k distinct columns holding exactly the k largest values, best first; NaN ranks first as in topk.
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 30, (200, 2000), generator=g).float()
    scores[7, 11] = torch.nan
    top = top_k_columns(scores, 50)
    expected = scores.topk(50, dim=1).values
    assert torch.equal(scores.gather(1, top).nan_to_num(99.0), expected.nan_to_num(99.0))
    assert top[7, 0] == 11
    assert all(len(set(row.tolist())) == 50 for row in top)
