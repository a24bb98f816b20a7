"""Building blocks shared by the message-passing models (MMGCN, GRCN).

- `UndirectedEdges`: the user–item train graph in both directions as one symmetric CSR pattern
  over the N = U + I nodes, with weighted neighbour sums, per-edge dot products and a softmax
  over each node's incoming edges. Products run as CSR sparse × dense kernels with hand-written
  backward passes (the transposed product reuses the same pattern, the value gradient is a
  sampled dense product; docs/speed.md, lever `spmm`); the same code runs on CUDA.
- `RepresentationCache`, `NodeRepresentationModel`: a model scored with one node representation
  [users ; items], by default the one of the last clean training pass, as the reference does
  (stale by one optimiser step).
- `to_csr`, `sparse_matmul`, `light_gcn`: products with a frozen sparse graph (Â, FREEDOM's kNN
  graph) and LightGCN propagation over it (BM3, FREEDOM).

Repeated train rows (u, i) become one entry with `multiplicity` m: every weighted sum counts the
entry m times and a softmax counts it m times in its denominator, which is exactly the reference's
message passing over an edge list that keeps duplicates.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from pipeline.models.base import Recommender, View, bpr_loss, take_rows


class UndirectedEdges(nn.Module):
    """Symmetric CSR pattern of the undirected train graph: entry (t, s) = an edge s → t.

    Entries are sorted by target then source (CSR order); per-entry tensors (`values` below,
    attention, edge weights) are [nnz] in that order. `source`/`target` give each entry's nodes.
    Index tensors are non-persistent buffers: they follow `.to(device)` and stay out of checkpoints.
    """

    def __init__(self, edge_index: torch.Tensor, n_nodes: int):
        super().__init__()
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index: expected shape [2, E], got {tuple(edge_index.shape)}")
        edge_index = edge_index.long()
        if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= n_nodes):
            raise ValueError(f"edge_index: node ids must lie in [0, {n_nodes})")
        if bool((edge_index[0] == edge_index[1]).any()):
            raise ValueError("edge_index: self-loops are not expected in a user–item graph")
        targets = torch.cat([edge_index[1], edge_index[0]])
        sources = torch.cat([edge_index[0], edge_index[1]])
        keys, counts = torch.unique(targets * n_nodes + sources, sorted=True, return_counts=True)
        target, source = keys // n_nodes, keys % n_nodes
        crow = torch.zeros(n_nodes + 1, dtype=torch.long, device=keys.device)
        crow[1:] = torch.bincount(target, minlength=n_nodes).cumsum(0)
        self.n_nodes = n_nodes
        self.register_buffer("crow", crow, persistent=False)
        self.register_buffer("source", source, persistent=False)
        self.register_buffer("target", target, persistent=False)
        self.register_buffer("multiplicity", counts.to(torch.float32), persistent=False)
        # Entry k of the transposed matrix sits where (source_k, target_k) sits in this one.
        self.register_buffer("transpose", torch.searchsorted(keys, source * n_nodes + target), persistent=False)

    @property
    def nnz(self) -> int:
        return self.source.numel()

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """The sparse CSR [N, N] matrix with `values` [nnz] on the pattern."""
        return torch.sparse_csr_tensor(
            self.crow, self.source, values.contiguous(), (self.n_nodes, self.n_nodes), dtype=values.dtype,
            check_invariants=False,  # built from a validated pattern; checking costs a pass over it
        )

    def in_degree(self) -> torch.Tensor:
        """Number of incoming edges of each node (multiplicities counted), [N]."""
        return torch.zeros(self.n_nodes, device=self.crow.device).index_add_(0, self.target, self.multiplicity)

    def aggregate(self, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """out_t = Σ_{entries (t, s)} values_ts · x_s, [N, d]; differentiable in both arguments."""
        return _Aggregate.apply(values, x, self)

    def edge_dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """⟨a_t, b_s⟩ for every entry (t, s), [nnz]; differentiable in both arguments."""
        return _EdgeDot.apply(a, b, self)

    def softmax(self, scores: torch.Tensor) -> torch.Tensor:
        """Softmax of `scores` [nnz] over the entries sharing a target (each counted m times).

        As the reference: subtract the group maximum (no gradient), exponentiate, divide by the
        group sum + 1e-16. Nodes without incoming edges have no entries.
        """
        shift = scores.detach().new_full((self.n_nodes,), -torch.inf)
        shift = shift.scatter_reduce(0, self.target, scores.detach(), reduce="amax")
        exp = (scores - shift[self.target]).exp()
        total = exp.new_zeros(self.n_nodes).index_add(0, self.target, exp * self.multiplicity.to(exp.dtype))
        return exp / (total[self.target] + 1e-16)


def _sampled_dot(edges: UndirectedEdges, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """⟨a_t, b_s⟩ on the pattern as one sampled dense product (no autograd)."""
    ones = edges.matrix(a.new_ones(edges.nnz))
    return torch.sparse.sampled_addmm(ones, a.contiguous(), b.contiguous().T, beta=0.0).values()


class _Aggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, x, edges):
        ctx.save_for_backward(values, x)
        ctx.edges = edges
        return edges.matrix(values) @ x.contiguous()

    @staticmethod
    def backward(ctx, grad):
        values, x = ctx.saved_tensors
        edges = ctx.edges
        grad = grad.contiguous()
        grad_values = _sampled_dot(edges, grad, x) if ctx.needs_input_grad[0] else None
        grad_x = edges.matrix(values[edges.transpose]) @ grad if ctx.needs_input_grad[1] else None
        return grad_values, grad_x, None


class _EdgeDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, edges):
        ctx.save_for_backward(a, b)
        ctx.edges = edges
        return _sampled_dot(edges, a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        edges = ctx.edges
        grad_a = edges.matrix(grad) @ b.contiguous() if ctx.needs_input_grad[0] else None
        grad_b = edges.matrix(grad[edges.transpose]) @ a.contiguous() if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, None


class RepresentationCache:
    """The node representation of the last clean training pass, as the reference scores with.

    An entry is valid only while the item feature tensors it was computed from are the same
    objects, unmodified (their in-place version counters unchanged): the robustness stage perturbs
    them in place and must never be scored with a representation of the clean features.
    """

    def __init__(self):
        self._value: torch.Tensor | None = None
        self._key: tuple | None = None

    @staticmethod
    def _features_key(features: dict[str, torch.Tensor]) -> tuple:
        return tuple((name, t.data_ptr(), t._version) for name, t in sorted(features.items()))

    def store(self, representation: torch.Tensor, features: dict[str, torch.Tensor]) -> None:
        """Remember `representation` (detached, not copied), computed from `features`."""
        self._value = representation.detach()
        self._key = self._features_key(features)

    def get(self, features: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The cached representation, or None when there is none or the features changed since."""
        if self._value is None or self._key != self._features_key(features):
            return None
        return self._value


class NodeRepresentationModel(Recommender):
    """A recommender whose scores are ⟨r_u, r_{U+i}⟩ of one node representation r [N, d] (MMGCN, GRCN).

    Subclasses set `n_users` and `cache_prediction` and implement `fresh_representation()`; their
    clean training pass hands its representation to `remember`. With `cache_prediction` the scorer
    reuses it, as the reference does, unless the item features changed since.
    """

    n_users: int
    cache_prediction: bool

    def __init__(self):
        super().__init__()
        self._cache = RepresentationCache()

    def fresh_representation(self) -> torch.Tensor:
        """The clean node representation [N, d] computed from the current weights and features."""
        raise NotImplementedError

    def remember(self, representation: torch.Tensor) -> None:
        """Keep the representation of a clean training pass for scoring."""
        self._cache.store(representation, self.item_features())

    def item_views(self, users: torch.Tensor, representation: torch.Tensor) -> list[View]:
        """The consistency view of a pass: the batch users' scores over every item."""
        return [View(users @ representation[self.n_users :].T)]

    def scorer(self):
        rep = self._cache.get(self.item_features()) if self.cache_prediction else None
        if rep is None:
            with torch.no_grad():
                rep = self.fresh_representation()
        users_rep, items_rep = rep[: self.n_users], rep[self.n_users :]
        return lambda users: users_rep[users] @ items_rep.T


def to_csr(adj: torch.Tensor) -> torch.Tensor:
    """A sparse matrix in CSR layout, for sparse × dense products (docs/speed.md, lever `spmm`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return adj.coalesce().to_sparse_csr()


class _FrozenSparseMatmul(torch.autograd.Function):
    """adj @ x for a constant sparse adj; the backward multiplies by a precomputed adjᵀ."""

    @staticmethod
    def forward(ctx, adj, adj_t, x):
        ctx.adj_t = adj_t
        return adj @ x

    @staticmethod
    def backward(ctx, grad):
        return None, None, ctx.adj_t @ grad


def sparse_matmul(adj: torch.Tensor, x: torch.Tensor, adj_t: torch.Tensor | None = None) -> torch.Tensor:
    """adj @ x with gradient to x only; `adj_t` is adjᵀ (default: adj, i.e. adj is symmetric).

    Autograd through a sparse CSR product would transpose the matrix on every backward; the graphs
    here are frozen, so the transpose is computed once (or is the matrix itself).
    """
    return _FrozenSparseMatmul.apply(adj, adj if adj_t is None else adj_t, x)


def light_gcn(
    adj: torch.Tensor, user_emb: torch.Tensor, item_emb: torch.Tensor, n_layers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """LightGCN over the symmetric [N, N] graph `adj`: mean of E⁰ … E^L with E^{l+1} = adj E^l."""
    layer = torch.cat([user_emb, item_emb])
    total = layer
    for _ in range(n_layers):
        layer = sparse_matmul(adj, layer)
        total = total + layer
    return (total / (n_layers + 1)).split([user_emb.shape[0], item_emb.shape[0]])


def node_bpr_with_id_reg(
    rep: torch.Tensor, id_embedding: torch.Tensor, users: torch.Tensor, pos_items: torch.Tensor,
    neg_items: torch.Tensor, n_users: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(users' rows of rep, BPR loss over node representations, the reference's id regulariser):
    the mean over the (user, item) pairs [u, pos], [u, neg] of E_u² + E_item² (MMGCN, GRCN)."""
    user_rep = take_rows(rep, users)
    pos_nodes, neg_nodes = pos_items + n_users, neg_items + n_users
    bpr = bpr_loss((user_rep * take_rows(rep, pos_nodes)).sum(1), (user_rep * take_rows(rep, neg_nodes)).sum(1))
    reg = take_rows(id_embedding, users).square().mean() + 0.5 * (
        take_rows(id_embedding, pos_nodes).square().mean() + take_rows(id_embedding, neg_nodes).square().mean()
    )
    return user_rep, bpr, reg
