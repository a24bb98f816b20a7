"""BM3: bootstrapped multimodal latent representations, without negatives (docs/method.md, "BM3")."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from pipeline.dataset import InteractionData
from pipeline.graphs import Graphs
from pipeline.models.base import TEXT_FIRST, Batch, DVIBSite, PassOutput, Recommender, View, take_rows
from pipeline.models.graph_ops import light_gcn, to_csr


def cosine_loss(online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine similarity of matching rows."""
    return 1.0 - F.cosine_similarity(online, target, dim=-1).mean()


@dataclass
class _Context:
    """What BM3's encode hands to decode."""

    id_loss: torch.Tensor  # L_ui + L_iu + reg, the clean pass only
    item_targets: torch.Tensor  # [B, d] dropout targets of the batch's items (no gradient)
    site_rows: torch.Tensor | None  # rows of the batch's distinct items in the site tensors (None: all rows)
    rows: torch.Tensor  # [B] index of each batch item among the distinct ones
    keep_views: bool  # False reproduces the reference BM3c, which discards its consistency loss


class BM3(Recommender):
    """BM3 (Zhou et al., WWW 2023) as in MMRec: a LightGCN online network, a shared predictor and
    dropout targets instead of negatives; the raw text/image features are fine-tuned.

    Args:
        data: the dataset (id counts and the initial item features, copied into parameters).
        graphs: graph artefacts; BM3 reads the normalised user–item adjacency Â.
        embedding_size: d, the width of id embeddings, predictor and feature projections.
        n_layers: LightGCN layers over Â.
        reg_weight: weight of (‖Ē_users‖_F + ‖Ē_items‖_F) / n_items on the propagated embeddings.
        dropout: dropout rate of the (gradient-free) targets.
        cl_weight: weight of the multimodal terms L_t + L_v + L_tv + L_vt.
        discard_consistency: reproduce the reference BM3c, which computes the DVIB consistency
            term and then returns the loss without it (variant c only; the reference BM3a keeps
            it). Up to the factor (1 - consistency_weight), to which Adam is invariant, the loss
            is then the reference's.

    DVIB perturbs the projected features T = text_trs(text), V = image_trs(image) before the
    predictor, with one noise network shared by both (as upstream). Views: the batch items'
    predicted features and their targets, softmaxed over the d dimensions. The reference BM3a
    also adds 0.01·N(0, 1) to both id tables after initialisation; we do not (an init detail).
    Target dropout follows the module's training mode (the reference's is always on, but its
    loss only runs in training). Scores use id embeddings only: the features shape them through
    training, so perturbing `item_features()` after training leaves the scores unchanged.
    """

    needs_negatives = False

    def __init__(
        self,
        data: InteractionData,
        graphs: Graphs | None,
        *,
        embedding_size: int,
        n_layers: int,
        reg_weight: float,
        dropout: float,
        cl_weight: float,
        discard_consistency: bool,
    ):
        super().__init__()
        graphs = self.require_graphs(graphs, "the normalised adjacency")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"models.BM3.dropout: expected 0 <= dropout < 1, got {dropout}")
        if n_layers < 0:
            raise ValueError(f"models.BM3.n_layers: expected >= 0, got {n_layers}")
        self.embedding_size = embedding_size
        self.n_layers = n_layers
        self.reg_weight = reg_weight
        self.dropout = dropout
        self.cl_weight = cl_weight
        self.discard_consistency = discard_consistency
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.n_users, embedding_size)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.n_items, embedding_size)))
        self.predictor = nn.Linear(embedding_size, embedding_size)
        nn.init.xavier_normal_(self.predictor.weight)
        self.register_item_features(data, trainable=True)
        self.text_trs = nn.Linear(data.text_features.shape[1], embedding_size)
        self.image_trs = nn.Linear(data.image_features.shape[1], embedding_size)
        nn.init.xavier_normal_(self.text_trs.weight)
        nn.init.xavier_normal_(self.image_trs.weight)
        self.register_buffer("norm_adj", to_csr(graphs.norm_adj), persistent=False)

    def dvib_sites(self, variant: str) -> list[DVIBSite]:
        return [DVIBSite(m, self.embedding_size, noise_net="modality") for m in TEXT_FIRST]

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Online representations: LightGCN users, LightGCN items + item id embeddings."""
        users, items = light_gcn(self.norm_adj, self.user_embedding, self.item_embedding, self.n_layers)
        return users, items + self.item_embedding

    def _targets(self, x: torch.Tensor) -> torch.Tensor:
        """Gradient-free dropout copies of the rows of x (the "target network" of BM3)."""
        with torch.no_grad():
            return F.dropout(x.detach(), self.dropout, training=self.training)

    def encode(self, batch: Batch, variant: str | None):
        # Only the batch's distinct users and items enter the loss (reg aside); dropout masks are
        # drawn per distinct row, so repeated rows share one, as when the reference drops out
        # whole tables and then indexes them.
        users, user_rows = torch.unique(batch.users, return_inverse=True)
        items, item_rows = torch.unique(batch.pos_items, return_inverse=True)
        users_all, items_all = self.propagate()
        online_users, online_items = take_rows(users_all, users), take_rows(items_all, items)
        user_targets = self._targets(online_users)[user_rows]
        item_targets = self._targets(online_items)[item_rows]
        id_loss = cosine_loss(take_rows(self.predictor(online_users), user_rows), item_targets) + cosine_loss(
            take_rows(self.predictor(online_items), item_rows), user_targets
        )
        id_loss = id_loss + self.reg_weight * (users_all.norm() + items_all.norm()) / items_all.shape[0]
        text, image = self.text_features, self.image_features
        if variant == "a":
            # The noise network and the VIB term see every item's projection, as upstream.
            site_rows = items
        else:
            # Only the batch's items enter the loss: projecting just those is exact and cheaper.
            site_rows, text, image = None, take_rows(text, items), take_rows(image, items)
        hidden = {"text": self.text_trs(text), "image": self.image_trs(image)}
        keep_views = not (self.discard_consistency and variant == "c")
        return hidden, _Context(id_loss, item_targets, site_rows, item_rows, keep_views)

    def decode(self, hidden, context: _Context, batch: Batch, noisy: bool, with_views: bool) -> PassOutput:
        feature_loss = hidden["text"].new_zeros(())
        views = []
        for m in TEXT_FIRST:
            h = hidden[m] if context.site_rows is None else take_rows(hidden[m], context.site_rows)
            target = self._targets(h)[context.rows]
            online = take_rows(self.predictor(h), context.rows)
            feature_loss = feature_loss + cosine_loss(online, context.item_targets) + cosine_loss(online, target)
            views += [View(online), View(target, grad=False)]
        loss = self.cl_weight * feature_loss
        if not noisy:
            loss = context.id_loss + loss
        return PassOutput(loss, views if with_views and context.keep_views else [])

    def scorer(self):
        with torch.no_grad():
            users, items = self.propagate()
            users, items = self.predictor(users), self.predictor(items)
        return lambda ids: users[ids] @ items.T
