"""FREEDOM: a frozen multimodal item graph and a degree-pruned user–item graph (MMRec's version; docs/method.md, "FREEDOM")."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.dataset import InteractionData
from pipeline.graphs import Graphs, knn_adjacency
from pipeline.models.base import TEXT_FIRST, Batch, DVIBSite, PassOutput, Recommender, View, bpr_loss, take_rows
from pipeline.models.graph_ops import light_gcn, sparse_matmul, to_csr


def train_edges(norm_adj: torch.Tensor, n_users: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct train (user, item) pairs, read from the user rows of Â (sorted by user, item)."""
    rows, cols = norm_adj.coalesce().indices()
    user_rows = rows < n_users
    return rows[user_rows], cols[user_rows] - n_users


def edge_norm_values(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int) -> torch.Tensor:
    """1/√(deg_u · deg_i) per edge, degrees counted over the given edges (+ 1e-7, as upstream)."""
    user_degree = torch.bincount(users, minlength=n_users).float() + 1e-7
    item_degree = torch.bincount(items, minlength=n_items).float() + 1e-7
    return user_degree.rsqrt()[users] * item_degree.rsqrt()[items]


def bipartite_norm_adj(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int) -> torch.Tensor:
    """Symmetric normalised adjacency [N, N] (sparse COO, coalesced) of distinct (user, item) edges."""
    values = edge_norm_values(users, items, n_users, n_items)
    rows = torch.cat([users, items + n_users])
    cols = torch.cat([items + n_users, users])
    n_nodes = n_users + n_items
    return torch.sparse_coo_tensor(
        torch.stack([rows, cols]), torch.cat([values, values]), (n_nodes, n_nodes), check_invariants=True
    ).coalesce()


def degree_sensitive_adj(
    users: torch.Tensor,
    items: torch.Tensor,
    weights: torch.Tensor,
    n_users: int,
    n_items: int,
    n_keep: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """FREEDOM's pruned graph: keep `n_keep` distinct edges drawn without replacement with probability
    ∝ `weights` (1/√(deg_u·deg_i): edges between low-degree nodes survive more often), then
    renormalise with the kept degrees. Returns a symmetric sparse COO [N, N]."""
    kept = torch.multinomial(weights, n_keep, replacement=False, generator=generator)
    return bipartite_norm_adj(users[kept], items[kept], n_users, n_items)


def mixed_knn_adjacency(knn: dict[str, torch.Tensor], n_items: int, image_weight: float) -> torch.Tensor:
    """mm_adj = w·A_image + (1 - w)·A_text of the normalised kNN item graphs (sparse COO [I, I])."""
    image = knn_adjacency(knn["image"], n_items)
    text = knn_adjacency(knn["text"], n_items)
    return (image_weight * image + (1.0 - image_weight) * text).coalesce()


@dataclass
class _Context:
    """What FREEDOM's encode hands to decode."""

    main_loss: torch.Tensor  # BPR on the propagated id embeddings (clean pass only)
    users: torch.Tensor  # [B, d] propagated embeddings of the batch users
    pos_rows: torch.Tensor  # [B] rows of the positives in the site tensors
    neg_rows: torch.Tensor  # [B] rows of the negatives


class FREEDOM(Recommender):
    """FREEDOM (Zhou & Shen, MM 2023) as in MMRec.

    Items: Ē_i + h with h = mm_adj^L · item ids over the frozen kNN item graph; users: Ē_u, from
    LightGCN over the degree-pruned graph (training, resampled in `pre_epoch`) or the full Â
    (prediction). The fine-tuned raw features reach the ranking only through the auxiliary loss
    reg_weight·[BPR(Ē_u, T_p, T_n) + BPR(Ē_u, V_p, V_n)], T/V = text_trs/image_trs(raw), and the
    kNN graph built once from the initial features: perturbing `item_features()` after training
    leaves the scores unchanged.

    Args:
        data: the dataset (id counts and the initial item features, copied into parameters).
        graphs: graph artefacts: Â, and the kNN item graphs (their k is `graphs.knn_k`).
        embedding_size: d of id embeddings and feature projections.
        reg_weight: weight of the feature BPR terms. With reg_weight = 0 the features never reach
            the ranking, so the DVIB variants cannot change predictions either (their noisy loss
            is 0 and their consistency term only trains the projections).
        dropout: share of distinct train edges pruned before each epoch (0.8 keeps 20%).
        mm_image_weight: w in mm_adj = w·A_image + (1 - w)·A_text.
        n_mm_layers: propagation steps over mm_adj.
        n_ui_layers: LightGCN layers over the user–item graph.

    DVIB perturbs T and V [I, d] (all items: the views are every item's projection softmaxed over
    the d dimensions), with a separate noise network per modality.
    """

    def __init__(
        self,
        data: InteractionData,
        graphs: Graphs | None,
        *,
        embedding_size: int,
        reg_weight: float,
        dropout: float,
        mm_image_weight: float,
        n_mm_layers: int,
        n_ui_layers: int,
    ):
        super().__init__()
        graphs = self.require_graphs(graphs, "Â and the kNN item graphs")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"models.FREEDOM.dropout: expected 0 <= dropout < 1, got {dropout}")
        if not 0.0 <= mm_image_weight <= 1.0:
            raise ValueError(f"models.FREEDOM.mm_image_weight: expected a value in [0, 1], got {mm_image_weight}")
        if n_mm_layers < 0 or n_ui_layers < 0:
            raise ValueError(f"models.FREEDOM: layer counts must be >= 0, got {n_mm_layers}, {n_ui_layers}")
        self.n_users, self.n_items = data.n_users, data.n_items
        self.embedding_size = embedding_size
        self.reg_weight = reg_weight
        self.n_mm_layers = n_mm_layers
        self.n_ui_layers = n_ui_layers
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.n_users, embedding_size)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.n_items, embedding_size)))
        self.register_item_features(data, trainable=True)
        self.text_trs = nn.Linear(data.text_features.shape[1], embedding_size)  # torch's default init, as MMRec
        self.image_trs = nn.Linear(data.image_features.shape[1], embedding_size)

        users, items = train_edges(graphs.norm_adj, data.n_users)
        self.n_keep = int(len(users) * (1.0 - dropout))
        self.register_buffer("edge_users", users, persistent=False)
        self.register_buffer("edge_items", items, persistent=False)
        weights = edge_norm_values(users, items, data.n_users, data.n_items)  # pruning odds ∝ 1/√(deg_u·deg_i)
        self.register_buffer("edge_weights", weights, persistent=False)
        self.register_buffer("norm_adj", to_csr(graphs.norm_adj), persistent=False)
        # Training uses the full Â until the first `pre_epoch` prunes it.
        self.register_buffer("masked_adj", self.norm_adj, persistent=False)
        mm_adj = mixed_knn_adjacency(graphs.knn, data.n_items, mm_image_weight)
        self.register_buffer("mm_adj", to_csr(mm_adj), persistent=False)
        self.register_buffer("mm_adj_t", to_csr(mm_adj.t()), persistent=False)

    def dvib_sites(self, variant: str) -> list[DVIBSite]:
        return [DVIBSite(m, self.embedding_size) for m in TEXT_FIRST]

    def pre_epoch(self, generator: torch.Generator) -> None:
        """Degree-sensitive edge pruning: a fresh masked graph for the coming epoch."""
        if self.n_keep == len(self.edge_users):
            self.masked_adj = self.norm_adj
            return
        adj = degree_sensitive_adj(
            self.edge_users, self.edge_items, self.edge_weights, self.n_users, self.n_items, self.n_keep, generator
        )
        self.masked_adj = to_csr(adj)

    def propagate(self, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(users Ē_u, items Ē_i + h) with LightGCN over `adj` and h from the frozen item graph."""
        h = self.item_embedding
        for _ in range(self.n_mm_layers):
            h = sparse_matmul(self.mm_adj, h, self.mm_adj_t)
        users, items = light_gcn(adj, self.user_embedding, self.item_embedding, self.n_ui_layers)
        return users, items + h

    def encode(self, batch: Batch, variant: str | None):
        users_all, items_all = self.propagate(self.masked_adj)
        users = take_rows(users_all, batch.users)
        pos, neg = take_rows(items_all, batch.pos_items), take_rows(items_all, batch.neg_items)
        main = bpr_loss((users * pos).sum(1), (users * neg).sum(1))
        if variant is not None:
            # DVIB's views and noise networks cover every item's projection.
            hidden = {"text": self.text_trs(self.text_features), "image": self.image_trs(self.image_features)}
            return hidden, _Context(main, users, batch.pos_items, batch.neg_items)
        if self.reg_weight == 0:
            # The feature terms are multiplied by 0; leaving them out leaves their gradients None,
            # which Adam (weight_decay 0) treats like the all-zero gradients the reference computes.
            return {}, _Context(main, users, batch.pos_items, batch.neg_items)
        # Only the batch's items enter the feature BPR: projecting just those is exact and cheaper.
        items, rows = torch.unique(torch.cat([batch.pos_items, batch.neg_items]), return_inverse=True)
        hidden = {
            "text": self.text_trs(take_rows(self.text_features, items)),
            "image": self.image_trs(take_rows(self.image_features, items)),
        }
        pos_rows, neg_rows = rows.split(len(batch.pos_items))
        return hidden, _Context(main, users, pos_rows, neg_rows)

    def decode(self, hidden, context: _Context, batch: Batch, noisy: bool, with_views: bool) -> PassOutput:
        feature_loss = context.main_loss.new_zeros(())
        for h in hidden.values():
            pos = (context.users * take_rows(h, context.pos_rows)).sum(1)
            neg = (context.users * take_rows(h, context.neg_rows)).sum(1)
            feature_loss = feature_loss + bpr_loss(pos, neg)
        loss = self.reg_weight * feature_loss
        if not noisy:
            loss = context.main_loss + loss
        views = [View(hidden[m]) for m in TEXT_FIRST] if with_views else []
        return PassOutput(loss, views)

    def scorer(self):
        with torch.no_grad():
            users, items = self.propagate(self.norm_adj)
        return lambda ids: users[ids] @ items.T
