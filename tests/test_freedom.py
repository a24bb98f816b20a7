"""FREEDOM (docs/method.md, "FREEDOM") against a dense written-out computation, and its graph handling."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import make_batch
from test_bm3 import dense_light_gcn
from pipeline.models import build_model


def dense_knn(knn: torch.Tensor, n_items: int) -> torch.Tensor:
    a = torch.zeros(n_items, n_items)
    a[torch.arange(n_items).repeat_interleave(knn.shape[1]), knn.reshape(-1)] = 1.0
    return a / knn.shape[1]


def dense_propagate(model, graphs, adj: torch.Tensor, image_weight: float):
    """(users, items) with dense matrices: mean of LightGCN layers; items + mm_adj^L · item ids."""
    mm = image_weight * dense_knn(graphs.knn["image"], graphs.n_items) + (1 - image_weight) * dense_knn(
        graphs.knn["text"], graphs.n_items
    )
    h = model.item_embedding
    for _ in range(model.n_mm_layers):
        h = mm @ h
    users, items = dense_light_gcn(adj, model.user_embedding, model.item_embedding, model.n_ui_layers)
    return users, items + h


def dense_loss(model, graphs, batch, image_weight: float):
    """BPR(Ē_u, Ē_p, Ē_n) + reg_weight·[BPR(Ē_u, T_p, T_n) + BPR(Ē_u, V_p, V_n)], T, V over all items."""
    users, items = dense_propagate(model, graphs, model.masked_adj.to_dense(), image_weight)
    u = users[batch.users]

    def bpr(table):
        return -F.logsigmoid((u * table[batch.pos_items]).sum(1) - (u * table[batch.neg_items]).sum(1)).mean()

    text = model.text_trs(model.text_features)
    image = model.image_trs(model.image_features)
    return bpr(items) + model.reg_weight * (bpr(text) + bpr(image))


def params_and_grads(loss, model):
    params = [p for p in model.parameters()]
    return torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("reg_weight", [1e-3, 0.5])
def test_loss_and_gradients_match_dense_computation_on_the_pruned_graph(
    reg_weight, tiny_data, tiny_graphs, make_config
):
    cfg = make_config("FREEDOM", model_params={"reg_weight": reg_weight, "mm_image_weight": 0.3})
    model = build_model(cfg, tiny_data, tiny_graphs)
    model.pre_epoch(torch.Generator().manual_seed(0))
    batch = make_batch(tiny_data)
    loss, expected = model.loss(batch), dense_loss(model, tiny_graphs, batch, image_weight=0.3)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for got, want in zip(params_and_grads(loss, model), params_and_grads(expected, model)):
        assert got is not None and torch.allclose(got, want, rtol=1e-4, atol=1e-8)


def test_pre_epoch_prunes_the_requested_share_of_distinct_edges(tiny_data, tiny_graphs, make_config):
    model = build_model(make_config("FREEDOM", model_params={"dropout": 0.8}), tiny_data, tiny_graphs)
    n_edges = len(np.unique(tiny_data.train.users * tiny_data.n_items + tiny_data.train.items))
    full = tiny_graphs.norm_adj.to_dense()
    assert torch.equal(model.masked_adj.to_dense(), full)  # before the first pre_epoch
    model.pre_epoch(torch.Generator().manual_seed(4))
    first = model.masked_adj.to_dense()
    assert (first != 0).sum().item() == 2 * int(n_edges * (1 - 0.8))
    assert torch.equal(first, first.T)
    assert ((first != 0) <= (full != 0)).all()  # kept edges are train edges
    model.pre_epoch(torch.Generator().manual_seed(4))
    assert torch.equal(model.masked_adj.to_dense(), first)
    model.pre_epoch(torch.Generator().manual_seed(5))
    assert not torch.equal(model.masked_adj.to_dense(), first)


def test_no_pruning_with_dropout_zero(tiny_data, tiny_graphs, make_config):
    model = build_model(make_config("FREEDOM", model_params={"dropout": 0.0}), tiny_data, tiny_graphs)
    model.pre_epoch(torch.Generator().manual_seed(0))
    assert torch.equal(model.masked_adj.to_dense(), tiny_graphs.norm_adj.to_dense())


def test_training_uses_the_pruned_graph_and_prediction_the_full_one(tiny_data, tiny_graphs, make_config):
    model = build_model(make_config("FREEDOM", model_params={"mm_image_weight": 0.1}), tiny_data, tiny_graphs)
    model.pre_epoch(torch.Generator().manual_seed(0))
    users = torch.arange(tiny_data.n_users)
    with torch.no_grad():
        full_u, full_i = dense_propagate(model, tiny_graphs, tiny_graphs.norm_adj.to_dense(), 0.1)
        pruned_u, pruned_i = dense_propagate(model, tiny_graphs, model.masked_adj.to_dense(), 0.1)
    scores = model.scorer()(users)
    assert torch.allclose(scores, full_u @ full_i.T, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(scores, pruned_u @ pruned_i.T, rtol=1e-4, atol=1e-6)


def test_reg_weight_zero_skips_the_feature_terms(tiny_data, tiny_graphs, make_config):
    cfg = make_config("FREEDOM", model_params={"reg_weight": 0.0, "mm_image_weight": 0.1})
    model = build_model(cfg, tiny_data, tiny_graphs)
    batch = make_batch(tiny_data)
    loss = model.loss(batch)
    assert loss.item() == pytest.approx(dense_loss(model, tiny_graphs, batch, 0.1).item(), rel=1e-6)
    loss.backward()
    for p in (model.text_features, model.image_features, *model.text_trs.parameters(), *model.image_trs.parameters()):
        assert p.grad is None


def test_dvib_views_are_all_item_projections_and_noisy_pass_is_the_feature_bpr(tiny_data, tiny_graphs, make_config):
    dvib = build_model(make_config("FREEDOMc", dvib={"noise_level": 0.0}), tiny_data, tiny_graphs)
    base = dvib.base
    assert list(dvib.sites) == ["text", "image"]
    batch = make_batch(tiny_data)
    hidden, context = base.encode(batch, "c")
    assert all(h.shape == (tiny_data.n_items, 64) for h in hidden.values())
    clean = base.decode(hidden, context, batch, noisy=False, with_views=True)
    noisy = base.decode(hidden, context, batch, noisy=True, with_views=True)
    assert [v.logits.shape for v in clean.views] == [(tiny_data.n_items, 64)] * 2 and all(v.grad for v in clean.views)
    assert (clean.loss - noisy.loss).item() == pytest.approx(context.main_loss.item(), rel=1e-5)
    # Separate noise networks per modality for variant a.
    assert sorted(build_model(make_config("FREEDOMa"), tiny_data, tiny_graphs).noise_nets) == ["image", "text"]


@pytest.mark.parametrize("variant", ["c", "a"])
def test_with_reg_weight_zero_dvib_cannot_reach_the_ranking(variant, tiny_data, tiny_graphs, make_config):
    """The documented limitation: with reg_weight = 0 only the projections see DVIB's terms, so the
    gradient on every embedding that scores is (1 - w) times the plain model's."""
    cfg = make_config("FREEDOM" + variant, dvib={"noise_level": 0.5}, model_params={"reg_weight": 0.0})
    torch.manual_seed(0)
    dvib = build_model(cfg, tiny_data, tiny_graphs)
    batch = make_batch(tiny_data)
    embeddings = [dvib.base.user_embedding, dvib.base.item_embedding]
    dvib_grads = torch.autograd.grad(dvib.loss(batch), embeddings)
    plain_grads = torch.autograd.grad(dvib.base.loss(batch), embeddings)
    w = cfg.dvib.consistency_weight
    for got, plain in zip(dvib_grads, plain_grads):
        assert torch.allclose(got, (1 - w) * plain, rtol=1e-5, atol=1e-9)


def test_needs_graphs(tiny_data, make_config):
    with pytest.raises(ValueError, match="graph"):
        build_model(make_config("FREEDOM"), tiny_data, None)
