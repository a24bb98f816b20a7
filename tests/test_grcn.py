"""GRCN (docs/method.md, "GRCN") and the shared sparse edge operators: attention softmax, the whole forward
against a per-edge transcription, the noisy-pass ReLU option, DVIB sites (the cached scorer: tests/test_models.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.dataset import MODALITIES
from pipeline.models import build_model
from pipeline.models.dvib import DVIB
from pipeline.models.graph_ops import UndirectedEdges
from pipeline.models.grcn import GRCN
from test_mmgcn import with_duplicates_and_an_isolated_item
from test_models import fresh_scores, make_batch

# A 3-user, 3-item graph (items are nodes 3..5): user 0 rated item 3 twice, item 5 has no edges.
SMALL_EDGES = torch.tensor([[0, 0, 1, 2, 0], [3, 4, 3, 4, 3]])


def directed(edge_index):
    """(source, target) of every listed edge in both directions, duplicates kept."""
    return torch.cat([edge_index[0], edge_index[1]]), torch.cat([edge_index[1], edge_index[0]])


def per_edge_softmax(scores, target, n_nodes):
    """Softmax over the edges sharing a target, one plain softmax per node."""
    out = torch.zeros_like(scores)
    for node in range(n_nodes):
        mask = target == node
        if mask.any():
            out[mask] = torch.softmax(scores[mask], dim=0)
    return out


def entry_of_each_edge(edges: UndirectedEdges, source, target):
    """Index of the pattern entry holding each listed directed edge."""
    keys = edges.target * edges.n_nodes + edges.source
    return torch.searchsorted(keys, target * edges.n_nodes + source)


def test_edge_operators_match_dense_and_have_correct_gradients():
    torch.manual_seed(0)
    edges = UndirectedEdges(SMALL_EDGES, 6)
    assert edges.nnz == 8 and edges.multiplicity.tolist().count(2.0) == 2
    values = torch.randn(edges.nnz, dtype=torch.float64, requires_grad=True)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    dense = torch.zeros(6, 6, dtype=torch.float64).index_put((edges.target, edges.source), values.detach())
    assert torch.allclose(edges.aggregate(values, x), dense @ x)
    assert torch.allclose(edges.edge_dot(x, y), (x[edges.target] * y[edges.source]).sum(1))
    assert torch.autograd.gradcheck(edges.aggregate, (values, x))
    assert torch.autograd.gradcheck(edges.edge_dot, (x, y))


def test_attention_softmax_sums_to_one_per_target_and_matches_dense():
    torch.manual_seed(0)
    n_nodes = 6
    edges = UndirectedEdges(SMALL_EDGES, n_nodes)
    x = F.normalize(torch.randn(n_nodes, 4, dtype=torch.float64), dim=1)
    alpha = edges.softmax(edges.edge_dot(x, x))
    sums = torch.zeros(n_nodes, dtype=torch.float64).index_add(0, edges.target, alpha * edges.multiplicity.double())
    assert torch.allclose(sums[:5], torch.ones(5, dtype=torch.float64))
    assert sums[5] == 0  # no incoming edges
    source, target = directed(SMALL_EDGES)
    expected = per_edge_softmax((x[target] * x[source]).sum(1), target, n_nodes)
    assert torch.allclose(alpha[entry_of_each_edge(edges, source, target)], expected)
    out = x + edges.aggregate(alpha * edges.multiplicity.double(), x)
    dense_out = x + torch.zeros_like(x).index_add(0, target, expected[:, None] * x[source])
    assert torch.allclose(out, dense_out)


def grcn(make_config, data, graphs, **model_params) -> GRCN:
    torch.manual_seed(0)
    return build_model(make_config("GRCN", model_params=model_params), data, graphs)


def per_edge_representation(model: GRCN, edge_index, relu=True):
    """docs/method.md's GRCN transcribed over the listed directed edges (duplicates kept), no sparse pattern."""
    source, target = directed(edge_index)
    n_nodes = model.n_users + model.n_items
    outputs, attention = [], []
    for m in MODALITIES:
        feats = F.normalize(F.leaky_relu(model.mlps[m](model.item_features()[m])), dim=1)
        x = torch.cat([F.normalize(model.preferences[m], dim=1), feats])
        alpha = per_edge_softmax((x[target] * x[source]).sum(1), target, n_nodes)
        outputs.append(x + torch.zeros_like(x).index_add(0, target, alpha[:, None] * x[source]))
        attention.append(alpha)
    w = (torch.stack(attention, 1) * model.confidence[source]).max(1).values
    w = F.relu(w) if relu else w
    x0 = F.normalize(model.id_embedding, dim=1)
    x1 = torch.zeros_like(x0).index_add(0, target, w[:, None] * x0[source])
    x2 = torch.zeros_like(x0).index_add(0, target, w[:, None] * x1[source])
    return torch.cat([x0 + x1 + x2, *outputs], 1), torch.stack(attention, 1)


def model_representation(model: GRCN):
    with torch.no_grad():
        hidden, context = model.encode(None, None)
        return model.representation_from(hidden, context, noisy=False)


def test_representation_matches_per_edge_transcription(tiny_data, tiny_graphs, make_config):
    graphs = with_duplicates_and_an_isolated_item(tiny_graphs)
    model = grcn(make_config, tiny_data, graphs, cache_prediction=False)
    with torch.no_grad():
        model.confidence.normal_()  # the xavier init is tiny; make the id channel matter
        expected, _ = per_edge_representation(model, graphs.edge_index)
    got = model_representation(model)
    assert got.shape == (tiny_data.n_users + tiny_data.n_items, 192)
    assert torch.allclose(got, expected, atol=1e-5)
    users = torch.arange(tiny_data.n_users)
    assert torch.allclose(model.scorer()(users), expected[users] @ expected[tiny_data.n_users :].T, atol=1e-5)


@pytest.mark.parametrize("noisy_edge_relu", [True, False])
def test_noisy_edge_relu_option(noisy_edge_relu, tiny_data, tiny_graphs, make_config):
    model = grcn(make_config, tiny_data, tiny_graphs, noisy_edge_relu=noisy_edge_relu)
    with torch.no_grad():
        model.confidence.normal_()
    batch = make_batch(tiny_data)
    hidden, context = model.encode(batch, "c")
    attention = hidden["edge_attention"]
    assert attention.shape == (model.edges.nnz, 2)
    flipped = {"edge_attention": -attention}  # perturbed attention whose edge weights go negative
    source, target = model.edges.source, model.edges.target
    with torch.no_grad():
        clean_pass = model.representation_from(flipped, context, noisy=False)
        noisy_pass = model.representation_from(flipped, context, noisy=True)
        raw = (-attention * model.confidence[source]).amax(1)
        assert (raw < 0).any() and (raw > 0).any()
        x0 = F.normalize(model.id_embedding, dim=1)

        def id_rep(w):
            values = w * model.edges.multiplicity
            x1 = torch.zeros_like(x0).index_add(0, target, values[:, None] * x0[source])
            return x0 + x1 + torch.zeros_like(x0).index_add(0, target, values[:, None] * x1[source])

    # The clean pass always applies the ReLU; the noisy pass only when asked.
    assert torch.allclose(clean_pass[:, :64], id_rep(F.relu(raw)), atol=1e-5)
    expected = id_rep(F.relu(raw)) if noisy_edge_relu else id_rep(raw)
    assert torch.allclose(noisy_pass[:, :64], expected, atol=1e-5)
    assert torch.equal(noisy_pass[:, 64:], clean_pass[:, 64:])  # content untouched by variant c


def test_regulariser_terms(tiny_data, tiny_graphs, make_config):
    """reg = mean(E[u]² + E[item]²) over the (u, pos), (u, neg) pairs
    + mean(P_v²) + mean(P_v[u]²) + mean(P_t[u]²)."""
    batch = make_batch(tiny_data)
    losses = {}
    for reg in (0.0, 1.0):
        model = grcn(make_config, tiny_data, tiny_graphs, reg_weight=reg)
        losses[reg] = model.loss(batch).item()
    e, pv, pt = model.id_embedding, model.preferences["image"], model.preferences["text"]
    users = batch.users.repeat_interleave(2)
    items = torch.stack([batch.pos_items, batch.neg_items], 1).reshape(-1) + tiny_data.n_users
    expected = (e[users] ** 2 + e[items] ** 2).mean() + (pv**2).mean()
    expected = expected + (pv[users] ** 2).mean() + (pt[users] ** 2).mean()
    assert losses[1.0] - losses[0.0] == pytest.approx(expected.item(), rel=1e-4)


def test_dvib_sites_per_variant(tiny_data, tiny_graphs, make_config):
    batch = make_batch(tiny_data)
    torch.manual_seed(0)
    dvib_c = build_model(make_config("GRCNc"), tiny_data, tiny_graphs)
    assert [(s.name, s.dim) for s in dvib_c.base.dvib_sites("c")] == [("edge_attention", 2)]
    torch.manual_seed(0)
    dvib_a = build_model(make_config("GRCNa"), tiny_data, tiny_graphs)
    assert isinstance(dvib_a, DVIB)
    net = dvib_a.noise_nets["content"].net
    widths = [(m.in_features, m.out_features) for m in net if isinstance(m, torch.nn.Linear)]
    assert widths == [(128, 32), (32, 32), (32, 1)]
    hidden, context = dvib_a.base.encode(batch, "a")
    assert hidden["content"].shape == (tiny_data.n_users + tiny_data.n_items, 128)
    noisy_hidden, vib = dvib_a.perturb(hidden)
    assert vib.item() > 0
    clean = dvib_a.base.decode(hidden, context, batch, noisy=False, with_views=True)
    noisy = dvib_a.base.decode(noisy_hidden, context, batch, noisy=True, with_views=True)
    assert clean.views[0].logits.shape == (len(batch.users), tiny_data.n_items)
    assert not torch.allclose(clean.views[0].logits, noisy.views[0].logits)
    users = torch.arange(tiny_data.n_users)
    # The scorer's cache holds the clean pass, never the noisy one.
    assert torch.equal(dvib_a.scorer()(users), fresh_scores("GRCN", dvib_a.base, users))
