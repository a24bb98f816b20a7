"""VBPR: visual Bayesian personalised ranking with text and image content (SPEC §5.1)."""
from __future__ import annotations

import torch
from torch import nn

from pipeline.dataset import InteractionData
from pipeline.dvib import DVIBSite, PassOutput, View
from pipeline.graphs import Graphs
from pipeline.models.base import Batch, Recommender, emb_loss


class VBPR(Recommender):
    """score(u, i) = ⟨θ_u, [γ_i ; W f_i]⟩ with f_i = [text_i ; image_i].

    Args:
        data: the dataset (id counts and item features).
        graphs: unused; accepted so every model is built the same way.
        embedding_size: d, the width of γ and of the content projection (θ has 2d).
        reg_weight: λ of the EmbLoss regulariser on (θ_u, item_pos, item_neg).
    DVIB perturbs the content projection W f [I, d] before its concatenation with γ.
    """

    def __init__(self, data: InteractionData, graphs: Graphs | None, *, embedding_size: int, reg_weight: float):
        super().__init__()
        self.reg_weight = reg_weight
        self.user_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.n_users, 2 * embedding_size)))
        self.item_embedding = nn.Parameter(nn.init.xavier_uniform_(torch.empty(data.n_items, embedding_size)))
        self.register_buffer("text_features", torch.from_numpy(data.text_features))
        self.register_buffer("image_features", torch.from_numpy(data.image_features))
        text_dim, image_dim = data.text_features.shape[1], data.image_features.shape[1]
        self.item_linear = nn.Linear(text_dim + image_dim, embedding_size)
        nn.init.xavier_normal_(self.item_linear.weight)
        nn.init.zeros_(self.item_linear.bias)
        self.embedding_size = embedding_size

    def dvib_sites(self, variant: str) -> list[DVIBSite]:
        return [DVIBSite("content", self.embedding_size)]

    def item_features(self) -> dict[str, torch.Tensor]:
        return {"image": self.image_features, "text": self.text_features}

    def content(self) -> torch.Tensor:
        """W [text ; image] + b for all items, without materialising the concatenation."""
        text_dim = self.text_features.shape[1]
        weight = self.item_linear.weight
        return torch.addmm(self.item_linear.bias, self.text_features, weight[:, :text_dim].T) + (
            self.image_features @ weight[:, text_dim:].T
        )

    def encode(self, batch: Batch, variant: str | None):
        return {"content": self.content()}, None

    def decode(self, hidden, context, batch: Batch, noisy: bool, with_views: bool) -> PassOutput:
        items = torch.cat([self.item_embedding, hidden["content"]], dim=1)
        users = self.user_embedding[batch.users]
        pos, neg = items[batch.pos_items], items[batch.neg_items]
        diff = (users * pos).sum(1) - (users * neg).sum(1)
        loss = -torch.log(1e-10 + torch.sigmoid(diff)).mean()
        loss = loss + self.reg_weight * emb_loss(users, pos, neg)
        views = [View(users @ items.T)] if with_views else []
        return PassOutput(loss, views)

    def scorer(self):
        with torch.no_grad():
            items = torch.cat([self.item_embedding, self.content()], dim=1)
        return lambda users: self.user_embedding[users].detach() @ items.T
