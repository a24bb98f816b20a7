"""MMGCN (docs/method.md, "MMGCN"): mean aggregation, layer sizes, the two reference quirks both ways, DVIB sites."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from pipeline.models import build_model
from pipeline.models.dvib import DVIB
from pipeline.models.mmgcn import MMGCN
from test_models import fresh_scores, make_batch, train_step


def with_duplicates_and_an_isolated_item(graphs, n=7):
    """The tiny graphs without item 0's train rows and with the first `n` rows repeated (edge lists
    keep duplicates; items seen only in valid/test have no edges)."""
    edges = graphs.edge_index[:, graphs.edge_index[1] != graphs.n_users]
    return dataclasses.replace(graphs, edge_index=torch.cat([edges, edges[:, :n]], dim=1))


def dense_mean_matrix(edge_index: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """Row-normalised adjacency of the edge list in both directions, one count per listed edge."""
    a = torch.zeros(n_nodes, n_nodes, dtype=torch.float64)
    users, items = edge_index
    a.index_put_((items, users), torch.ones(len(users), dtype=torch.float64), accumulate=True)
    a.index_put_((users, items), torch.ones(len(users), dtype=torch.float64), accumulate=True)
    return a / a.sum(1, keepdim=True).clamp_min(1)


def mmgcn(make_config, data, graphs, **model_params) -> MMGCN:
    torch.manual_seed(0)
    return build_model(make_config("MMGCN", model_params=model_params), data, graphs)


def test_mean_aggregation_matches_dense_computation(tiny_data, tiny_graphs, make_config):
    graphs = with_duplicates_and_an_isolated_item(tiny_graphs)
    model = mmgcn(make_config, tiny_data, graphs)
    n_nodes = tiny_data.n_users + tiny_data.n_items
    dense = dense_mean_matrix(graphs.edge_index, n_nodes)
    isolated = dense.sum(1) == 0
    assert isolated[tiny_data.n_users] and isolated.sum() == 1
    x = torch.randn(n_nodes, 5, dtype=torch.float64, requires_grad=True)
    out = model.edges.aggregate(model.mean_weights.double(), x)
    expected = dense @ x
    assert torch.allclose(out, expected, atol=1e-6)  # the model's weights are float32
    assert (out[isolated] == 0).all()
    upstream = torch.randn(n_nodes, 5, dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * upstream).sum(), x)
    assert torch.allclose(grad, dense.T @ upstream, atol=1e-6)


def test_representation_matches_dense_reference(tiny_data, tiny_graphs, make_config):
    """The whole forward against a direct transcription of docs/method.md, "MMGCN", with a dense mean matrix."""
    graphs = with_duplicates_and_an_isolated_item(tiny_graphs)
    model = mmgcn(make_config, tiny_data, graphs)
    n_nodes = tiny_data.n_users + tiny_data.n_items
    mean = dense_mean_matrix(graphs.edge_index, n_nodes).float()
    lrelu = lambda t: F.leaky_relu(t, 0.01)  # noqa: E731

    def gcn(net, features):
        items = net.projection(features) if net.projection is not None else features
        x = F.normalize(torch.cat([net.preference, items]))
        for w, lin, g in zip(net.conv_weights, net.linears, net.gates):
            h = lrelu(mean @ (x @ w))
            x_hat = lrelu(lin(x)) + model.id_embedding
            x = lrelu(g(torch.cat([h, x_hat], 1)))
        return x

    with torch.no_grad():
        expected = (gcn(model.image_gcn, model.image_features) + gcn(model.text_gcn, model.text_features)) / 2
        got = model.representation(model.image_features, model.text_features)
    assert torch.allclose(got, expected, atol=1e-5)


def test_layer_sizes_follow_the_spec(tiny_data, tiny_graphs, make_config):
    model = mmgcn(make_config, tiny_data, tiny_graphs)
    image_dim, text_dim = tiny_data.image_features.shape[1], tiny_data.text_features.shape[1]
    assert model.image_gcn.projection.weight.shape == (256, image_dim)
    assert model.image_gcn.preference.shape == (tiny_data.n_users, 256)
    assert model.text_gcn.projection is None
    assert model.text_gcn.preference.shape == (tiny_data.n_users, text_dim)
    assert [tuple(w.shape) for w in model.text_gcn.conv_weights] == [(text_dim, text_dim), (64, 64), (64, 64)]
    assert [g.in_features for g in model.image_gcn.gates] == [256 + 64, 128, 128]
    assert [lin.in_features for lin in model.text_gcn.linears] == [text_dim, 64, 64]
    assert model.id_embedding.shape == (tiny_data.n_users + tiny_data.n_items, 64)


def test_frozen_id_and_preference_never_change_and_reg_has_no_gradient(tiny_data, tiny_graphs, make_config):
    batch = make_batch(tiny_data)
    model = mmgcn(make_config, tiny_data, tiny_graphs, trainable_id_and_preference=False, reg_weight=1.0)
    frozen = [model.id_embedding, model.image_gcn.preference, model.text_gcn.preference]
    names = {name for name, _ in model.named_parameters()}
    assert not {"id_embedding", "image_gcn.preference", "text_gcn.preference"} & names
    assert {"id_embedding", "image_gcn.preference"} <= set(model.state_dict())  # saved with the model
    before = [t.clone() for t in frozen]
    train_step(model, batch)
    assert all(torch.equal(a, b) for a, b in zip(before, frozen))

    grads = {}
    for reg in (0.0, 1.0):
        model = mmgcn(make_config, tiny_data, tiny_graphs, trainable_id_and_preference=False, reg_weight=reg)
        model.loss(batch).backward()
        grads[reg] = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(torch.equal(grads[0.0][n], grads[1.0][n]) for n in grads[0.0])


def test_trainable_id_and_preference_learn_and_feel_the_regulariser(tiny_data, tiny_graphs, make_config):
    batch = make_batch(tiny_data)
    model = mmgcn(make_config, tiny_data, tiny_graphs, trainable_id_and_preference=True, reg_weight=1.0)
    trained = [model.id_embedding, model.image_gcn.preference, model.text_gcn.preference]
    assert all(isinstance(t, torch.nn.Parameter) for t in trained)
    before = [t.detach().clone() for t in trained]
    train_step(model, batch)
    assert all(not torch.equal(a, b) for a, b in zip(before, trained))

    grads = {}
    for reg in (0.0, 1.0):
        model = mmgcn(make_config, tiny_data, tiny_graphs, trainable_id_and_preference=True, reg_weight=reg)
        model.loss(batch).backward()
        grads[reg] = (model.id_embedding.grad.clone(), model.image_gcn.preference.grad.clone())
    assert not torch.allclose(grads[0.0][0], grads[1.0][0])
    assert not torch.allclose(grads[0.0][1], grads[1.0][1])


def test_dvib_sites_are_the_raw_features_with_the_reference_noise_networks(tiny_data, tiny_graphs, make_config):
    torch.manual_seed(0)
    dvib = build_model(make_config("MMGCNa"), tiny_data, tiny_graphs)
    assert isinstance(dvib, DVIB)
    image_dim, text_dim = tiny_data.image_features.shape[1], tiny_data.text_features.shape[1]
    widths = {
        name: [(m.in_features, m.out_features) for m in net.net if isinstance(m, torch.nn.Linear)]
        for name, net in dvib.noise_nets.items()
    }
    assert widths == {
        "image": [(image_dim, 2048), (2048, 1024), (1024, 1)],
        "text": [(text_dim, 192), (192, 96), (96, 1)],
    }
    batch = make_batch(tiny_data)
    hidden, context = dvib.base.encode(batch, "a")
    assert hidden["image"] is dvib.base.image_features and hidden["text"] is dvib.base.text_features
    noisy_hidden, _ = dvib.perturb(hidden)
    clean = dvib.base.decode(hidden, context, batch, noisy=False, with_views=True)
    noisy = dvib.base.decode(noisy_hidden, context, batch, noisy=True, with_views=True)
    assert clean.views[0].logits.shape == noisy.views[0].logits.shape == (len(batch.users), tiny_data.n_items)
    assert not torch.allclose(clean.loss, noisy.loss)
    # The scorer's cache holds the clean pass, never the noisy one.
    users = torch.arange(tiny_data.n_users)
    assert torch.equal(dvib.scorer()(users), fresh_scores("MMGCN", dvib.base, users))


def test_graphs_of_another_dataset_are_rejected(tiny_data, tiny_graphs, make_config):
    other = dataclasses.replace(tiny_graphs, n_items=tiny_graphs.n_items + 1)
    with pytest.raises(ValueError, match="rebuild the graphs stage"):
        build_model(make_config("MMGCN"), tiny_data, other)
