"""Graph builders against dense computations on small inputs (docs/method.md, "The five base models")."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.graphs import (
    build_edge_index,
    build_knn_graph,
    build_norm_adj,
    graphs_in_memory,
    knn_adjacency,
    load_graphs,
    write_graphs,
)
from pipeline.models.freedom import (
    bipartite_norm_adj,
    degree_sensitive_adj,
    edge_norm_values,
    mixed_knn_adjacency,
    train_edges,
)


def dense_norm_adj(n_users: int, n_items: int, users, items) -> torch.Tensor:
    """D^{-1/2} A D^{-1/2} of the binary bipartite adjacency, float64, written out."""
    n = n_users + n_items
    a = torch.zeros(n, n, dtype=torch.float64)
    for u, i in zip(users, items):
        a[u, n_users + i] = 1.0
        a[n_users + i, u] = 1.0
    d = (a.sum(1) + 1e-7) ** -0.5
    return d[:, None] * a * d[None, :]


def to_dense(index: np.ndarray, value: np.ndarray, n: int) -> torch.Tensor:
    return torch.sparse_coo_tensor(
        torch.from_numpy(index), torch.from_numpy(value), (n, n), check_invariants=True
    ).to_dense().double()


def test_norm_adj_is_symmetric_normalised_and_collapses_duplicate_rows():
    # User 0 bought item 1 twice; user 2 has no train row; item 3 is never bought.
    users = np.array([0, 0, 0, 1, 1, 3])
    items = np.array([0, 1, 1, 1, 2, 0])
    index, value = build_norm_adj(4, 4, users, items)
    got = to_dense(index, value, 8)
    assert torch.allclose(got, dense_norm_adj(4, 4, users, items), rtol=1e-6, atol=0)
    assert torch.equal(got, got.T)
    assert index.shape[1] == 2 * 5  # 5 distinct pairs, both directions
    assert abs(got[0, 4 + 1].item() - 0.5) < 1e-6  # the duplicate counts once: deg(u0) = deg(i1) = 2
    assert got[2].abs().sum() == 0 and got[4 + 3].abs().sum() == 0


def test_edge_index_keeps_duplicates_and_offsets_items():
    users = np.array([0, 0, 0, 2])
    items = np.array([1, 1, 0, 2])
    edges = build_edge_index(3, users, items)
    assert edges.tolist() == [[0, 0, 0, 2], [4, 4, 3, 5]]


def exact_tie_features() -> np.ndarray:
    """Rows whose cosine similarities are exact in float32: unit vectors with entries 0, 0.5 or 1."""
    e = np.eye(4, dtype=np.float32)
    half = np.full(4, 0.5, dtype=np.float32)
    return np.stack([e[0], e[1], e[1], e[1], half, e[2]])


def test_knn_includes_self_and_breaks_ties_towards_lower_index():
    knn = build_knn_graph(exact_tie_features(), k=3)
    # item 0: self, then item 4 (cos 0.5), then the first of the tied zeros (items 1, 2, 3, 5) -> 1.
    assert knn[0].tolist() == [0, 4, 1]
    # items 1-3 are identical: self first, then the other two copies in index order.
    assert knn[1].tolist() == [1, 2, 3]
    assert knn[2].tolist() == [2, 1, 3]
    assert knn[3].tolist() == [3, 1, 2]
    assert knn[4].tolist() == [4, 0, 1]
    assert knn[5].tolist() == [5, 4, 0]


def test_knn_blockwise_equals_single_block():
    features = np.random.default_rng(0).standard_normal((53, 16)).astype(np.float32)
    whole = build_knn_graph(features, k=7, block_size=10_000)
    for block_size in (1, 5, 16):
        assert np.array_equal(build_knn_graph(features, k=7, block_size=block_size), whole)
    assert (whole[:, 0] == np.arange(53)).all()


def test_knn_adjacency_rows_have_k_entries_of_one_over_k():
    knn = torch.from_numpy(build_knn_graph(exact_tie_features(), k=3))
    adj = knn_adjacency(knn, 6).to_dense()
    expected = torch.zeros(6, 6)
    expected[torch.arange(6).repeat_interleave(3), knn.reshape(-1)] = 1.0 / 3
    assert torch.allclose(adj, expected, rtol=1e-6, atol=0)
    assert ((adj > 0).sum(1) == 3).all() and (adj.diagonal() > 0).all()


def test_mixed_knn_adjacency_weights_image_and_text():
    rng = np.random.default_rng(1)
    knn = {m: torch.from_numpy(build_knn_graph(rng.standard_normal((12, 5)).astype(np.float32), k=4))
           for m in ("image", "text")}
    dense = {}
    for m, idx in knn.items():
        a = torch.zeros(12, 12, dtype=torch.float64)
        a[torch.arange(12).repeat_interleave(4), idx.reshape(-1)] = 1.0
        d = (a.sum(1) + 1e-7) ** -0.5
        dense[m] = d[:, None] * a * d[None, :]
    got = mixed_knn_adjacency(knn, 12, image_weight=0.1).to_dense().double()
    assert torch.allclose(got, 0.1 * dense["image"] + 0.9 * dense["text"], rtol=1e-6, atol=0)
    # Shared neighbours get both contributions (1/k in total); the two graphs differ here.
    assert not torch.equal(knn["image"], knn["text"])


def test_graph_artefacts_round_trip_through_files(tmp_path, tiny_data):
    write_graphs(tmp_path, tiny_data, knn_k=5)
    loaded, direct = load_graphs(tmp_path), graphs_in_memory(tiny_data, knn_k=5)
    assert torch.equal(loaded.norm_adj.to_dense(), direct.norm_adj.to_dense())
    assert torch.equal(loaded.edge_index, direct.edge_index)
    assert all(torch.equal(loaded.knn[m], direct.knn[m]) for m in ("image", "text"))


def test_train_edges_are_the_distinct_pairs():
    users = np.array([0, 0, 0, 1, 1, 3])
    items = np.array([0, 1, 1, 1, 2, 0])
    index, value = build_norm_adj(4, 4, users, items)
    adj = torch.sparse_coo_tensor(torch.from_numpy(index), torch.from_numpy(value), (8, 8), check_invariants=True)
    adj = adj.coalesce()
    u, i = train_edges(adj, 4)
    assert list(zip(u.tolist(), i.tolist())) == [(0, 0), (0, 1), (1, 1), (1, 2), (3, 0)]
    assert torch.allclose(bipartite_norm_adj(u, i, 4, 4).to_dense().double(), dense_norm_adj(4, 4, users, items))


def hub_and_pairs() -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """A complete 10×10 bipartite block (every degree 10, edge weight 0.1) plus 10 disjoint
    user–item pairs (degrees 1, weight 1): both groups carry the same total weight."""
    hub_u, hub_i = torch.meshgrid(torch.arange(10), torch.arange(10), indexing="ij")
    users = torch.cat([hub_u.reshape(-1), torch.arange(10, 20)])
    items = torch.cat([hub_i.reshape(-1), torch.arange(10, 20)])
    return users, items, 20, 20


def test_degree_sensitive_pruning_keeps_exactly_n_edges_symmetric_and_renormalised():
    users, items, n_users, n_items = hub_and_pairs()
    weights = edge_norm_values(users, items, n_users, n_items)
    assert torch.allclose(weights[:100], torch.full((100,), 0.1)) and torch.allclose(weights[100:], torch.ones(10))
    for n_keep in (1, 17, 110):
        generator = torch.Generator().manual_seed(n_keep)
        adj = degree_sensitive_adj(users, items, weights, n_users, n_items, n_keep, generator)
        dense = adj.to_dense().double()
        assert adj._nnz() == 2 * n_keep
        assert torch.equal(dense, dense.T)
        kept = dense[:n_users, n_users:].nonzero()
        expected = dense_norm_adj(n_users, n_items, kept[:, 0].tolist(), kept[:, 1].tolist())
        assert torch.allclose(dense, expected, rtol=1e-6, atol=0)


def test_degree_sensitive_pruning_is_deterministic_and_favours_low_degree_edges():
    users, items, n_users, n_items = hub_and_pairs()
    weights = edge_norm_values(users, items, n_users, n_items)

    def kept_mask(seed: int) -> torch.Tensor:
        adj = degree_sensitive_adj(users, items, weights, n_users, n_items, 20, torch.Generator().manual_seed(seed))
        return adj.to_dense()[users, n_users + items] > 0

    assert torch.equal(kept_mask(3), kept_mask(3))
    rates = torch.stack([kept_mask(seed) for seed in range(200)]).float().mean(0)
    # Uniform sampling would keep every edge with rate 20/110 ≈ 0.18; weighted sampling keeps the
    # weight-1 pairs far more often than the weight-0.1 hub edges (≈ 0.7 vs ≈ 0.13).
    assert rates[100:].mean() > 0.5 and rates[:100].mean() < 0.25
    assert rates[100:].min() > rates[:100].max()
