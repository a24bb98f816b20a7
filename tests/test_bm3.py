"""BM3 (docs/method.md, "BM3") against a dense written-out computation, and its DVIB options."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.models import build_model
from pipeline.models.dvib import DVIB
from pipeline.models.base import Batch


def make_batch(data, size=96, seed=0) -> Batch:
    """Train rows (user, positive item) only: BM3 samples no negatives."""
    rows = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[:size]
    return Batch(torch.as_tensor(data.train.users)[rows], torch.as_tensor(data.train.items)[rows], None)


def dense_light_gcn(adj: torch.Tensor, users: torch.Tensor, items: torch.Tensor, n_layers: int):
    """(users, items): the mean of E⁰ … E^L with E^{l+1} = adj E^l, adj a dense [N, N] matrix."""
    layer = torch.cat([users, items])
    layers = [layer]
    for _ in range(n_layers):
        layer = adj @ layer
        layers.append(layer)
    return torch.stack(layers).mean(0).split([len(users), len(items)])


def dense_online(model, graphs):
    """(users, items) of the online network with a dense Â: mean of the LightGCN layers, items + ids."""
    users, items = dense_light_gcn(graphs.norm_adj.to_dense(), model.user_embedding, model.item_embedding,
                                   model.n_layers)
    return users, items + model.item_embedding


def dense_loss(model, graphs, batch, detach_targets=True):
    """BM3's loss (docs/method.md) with dropout 0 (eval mode), every term over full tables, then indexed."""
    target = (lambda x: x.detach()) if detach_targets else (lambda x: x)
    cos = lambda a, b: 1 - F.cosine_similarity(a, b, dim=-1).mean()  # noqa: E731
    users, items = dense_online(model, graphs)
    pred = model.predictor
    u, i = batch.users, batch.pos_items
    loss = cos(pred(users)[u], target(items)[i]) + cos(pred(items)[i], target(users)[u])
    loss = loss + model.reg_weight * (users.norm() + items.norm()) / items.shape[0]
    text = model.text_trs(model.text_features)
    image = model.image_trs(model.image_features)
    feature = 0.0
    for h in (text, image):
        feature = feature + cos(pred(h)[i], target(items)[i]) + cos(pred(h)[i], target(h)[i])
    return loss + model.cl_weight * feature


def grads(loss, model):
    return torch.autograd.grad(loss, [p for p in model.parameters()], allow_unused=True)


def test_needs_no_negatives(tiny_data, tiny_graphs, make_config):
    model = build_model(make_config("BM3"), tiny_data, tiny_graphs)
    assert model.needs_negatives is False
    assert build_model(make_config("BM3a"), tiny_data, tiny_graphs).needs_negatives is False
    assert torch.isfinite(model.loss(make_batch(tiny_data)))


@pytest.mark.parametrize("n_layers", [1, 2])
def test_loss_and_gradients_match_dense_computation_with_gradient_free_targets(
    n_layers, tiny_data, tiny_graphs, make_config
):
    model = build_model(make_config("BM3", model_params={"n_layers": n_layers}), tiny_data, tiny_graphs)
    model.eval()  # target dropout off: the loss is deterministic
    batch = make_batch(tiny_data)
    loss = model.loss(batch)
    expected = dense_loss(model, tiny_graphs, batch)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for got, want in zip(grads(loss, model), grads(expected, model)):
        assert got is not None and torch.allclose(got, want, rtol=1e-4, atol=1e-7)
    # The comparison can tell: gradients through the targets would differ.
    leaky = grads(dense_loss(model, tiny_graphs, batch, detach_targets=False), model)
    assert any(not torch.allclose(g, w, rtol=1e-4, atol=1e-7) for g, w in zip(grads(model.loss(batch), model), leaky))


def test_targets_are_dropped_out_in_training_only(tiny_data, tiny_graphs, make_config):
    model = build_model(make_config("BM3"), tiny_data, tiny_graphs)
    batch = make_batch(tiny_data)

    def loss_with_seed(seed):
        torch.manual_seed(seed)
        return model.loss(batch).item()

    model.train()
    assert loss_with_seed(1) == loss_with_seed(1) != loss_with_seed(2)
    model.eval()
    assert loss_with_seed(1) == loss_with_seed(2)


def test_scorer_is_predicted_users_times_predicted_items(tiny_data, tiny_graphs, make_config):
    model = build_model(make_config("BM3"), tiny_data, tiny_graphs)
    users = torch.arange(tiny_data.n_users)
    with torch.no_grad():
        u, i = dense_online(model, tiny_graphs)
        expected = model.predictor(u) @ model.predictor(i).T
    assert torch.allclose(model.scorer()(users), expected, rtol=1e-4, atol=1e-6)


def test_site_tensors_cover_batch_items_or_all_items_for_variant_a(tiny_data, tiny_graphs, make_config):
    batch = make_batch(tiny_data)
    n_distinct = len(torch.unique(batch.pos_items))
    for name, rows in (("BM3c", n_distinct), ("BM3a", tiny_data.n_items)):
        dvib = build_model(make_config(name), tiny_data, tiny_graphs)
        hidden, _ = dvib.base.encode(batch, name[-1])
        assert set(hidden) == set(dvib.sites) == {"text", "image"}
        assert all(h.shape == (rows, 64) for h in hidden.values()), name
    # One noise network shared by both modalities, as upstream.
    assert list(build_model(make_config("BM3a"), tiny_data, tiny_graphs).noise_nets) == ["modality"]


def test_variant_c_and_plain_give_the_same_clean_loss(tiny_data, tiny_graphs, make_config):
    """c projects the same batch items as the plain model; a projects all items and must agree too."""
    model = build_model(make_config("BM3"), tiny_data, tiny_graphs)
    model.eval()
    batch = make_batch(tiny_data)
    plain = model.loss(batch)
    for variant in ("c", "a"):
        hidden, context = model.encode(batch, variant)
        clean = model.decode(hidden, context, batch, noisy=False, with_views=False).loss
        assert clean.item() == pytest.approx(plain.item(), rel=1e-6)


def dvib_loss_by_hand(dvib: DVIB, batch, seed):
    """(1-w)(clean + noisy) and the consistency term, drawing the same random numbers as dvib.loss."""
    torch.manual_seed(seed)
    hidden, context = dvib.base.encode(batch, dvib.variant)
    clean = dvib.base.decode(hidden, context, batch, noisy=False, with_views=True)
    noisy_hidden, vib = dvib.perturb(hidden)
    noisy = dvib.base.decode(noisy_hidden, context, batch, noisy=True, with_views=True)
    w = dvib.cfg.consistency_weight
    return (1 - w) * (clean.loss + noisy.loss) + vib, dvib.consistency(clean, noisy), clean, noisy


@pytest.mark.parametrize("discard", [False, True])
def test_discard_consistency_option_for_variant_c(discard, tiny_data, tiny_graphs, make_config):
    cfg = make_config(
        "BM3c", dvib={"noise_level": 0.5, "consistency_weight": 0.5}, model_params={"discard_consistency": discard}
    )
    dvib = build_model(cfg, tiny_data, tiny_graphs)
    batch = make_batch(tiny_data)
    general, consistency, clean, noisy = dvib_loss_by_hand(dvib, batch, seed=5)
    torch.manual_seed(5)
    total = dvib.loss(batch)
    if discard:
        # The reference BM3c: the consistency term is not part of the loss.
        assert clean.views == [] and noisy.views == []
        assert total.item() == pytest.approx(general.item(), rel=1e-6)
    else:
        # Predicted features (with gradient) and targets (without) for text and image.
        assert [v.grad for v in clean.views] == [True, False, True, False]
        assert all(v.logits.shape == (len(batch.users), 64) for v in clean.views)
        assert consistency.item() > 1e-4
        assert total.item() == pytest.approx(general.item() + 0.5 * consistency.item(), rel=1e-6)


def test_discard_consistency_leaves_variant_a_alone(tiny_data, tiny_graphs, make_config):
    """The reference BM3a keeps its consistency term: the option reproduces BM3c only."""
    cfg = make_config("BM3a", model_params={"discard_consistency": True})
    dvib = build_model(cfg, tiny_data, tiny_graphs)
    _, consistency, clean, _ = dvib_loss_by_hand(dvib, make_batch(tiny_data), seed=0)
    assert len(clean.views) == 4 and consistency.item() > 0


def test_noisy_pass_has_only_the_weighted_feature_terms(tiny_data, tiny_graphs, make_config):
    """Noisy loss = cl_weight·(L_t + L_v + L_tv + L_vt) on T', V': the id terms appear once, in the clean pass."""
    dvib = build_model(make_config("BM3c", dvib={"noise_level": 0.0}), tiny_data, tiny_graphs)
    dvib.eval()
    base = dvib.base
    batch = make_batch(tiny_data)
    hidden, context = base.encode(batch, "c")
    clean = base.decode(hidden, context, batch, noisy=False, with_views=False).loss
    noisy = base.decode(hidden, context, batch, noisy=True, with_views=False).loss
    assert (clean - noisy).item() == pytest.approx(context.id_loss.item(), rel=1e-5)
    base.cl_weight = 0.0
    assert base.decode(hidden, context, batch, noisy=True, with_views=False).loss.item() == 0.0
