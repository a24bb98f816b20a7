"""VBPR: visual Bayesian personalised ranking with text and image content (docs/method.md, "VBPR")."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.dataset import InteractionData
from pipeline.graphs import Graphs
from pipeline.models.base import Batch, DVIBSite, PassOutput, Recommender, View, emb_loss, linear_of_concat, take_rows


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
        self.register_item_features(data, trainable=False)
        text_dim, image_dim = data.text_features.shape[1], data.image_features.shape[1]
        self.item_linear = nn.Linear(text_dim + image_dim, embedding_size)
        nn.init.xavier_normal_(self.item_linear.weight)
        nn.init.zeros_(self.item_linear.bias)
        self.embedding_size = embedding_size

    def dvib_sites(self, variant: str) -> list[DVIBSite]:
        return [DVIBSite("content", self.embedding_size)]

    def content(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """W [text ; image] + b for `items` (all items when None), without materialising the concatenation."""
        text, image = self.text_features, self.image_features
        if items is not None:
            text, image = take_rows(text, items), take_rows(image, items)
        return linear_of_concat(self.item_linear, text, image)

    def encode(self, batch: Batch, variant: str | None):
        users = take_rows(self.user_embedding, batch.users)
        if variant is None:
            # The plain loss reads only the batch's positive and negative items: project each once.
            items, rows = torch.unique(torch.cat([batch.pos_items, batch.neg_items]), return_inverse=True)
            return {"content": self.content(items)}, _Context(users, rows)
        # DVIB's views score every item, so every item's content is needed.
        return {"content": self.content()}, _Context(users, None)

    def decode(self, hidden, context: "_Context", batch: Batch, noisy: bool, with_views: bool) -> PassOutput:
        content, users, n = hidden["content"], context.users, len(batch.users)
        if context.item_rows is None:  # content of every item
            pos_content, neg_content = take_rows(content, batch.pos_items), take_rows(content, batch.neg_items)
        else:  # content of the batch's distinct items; item_rows maps [pos_items ; neg_items] into it
            pos_content = take_rows(content, context.item_rows[:n])
            neg_content = take_rows(content, context.item_rows[n:])
        pos = torch.cat([take_rows(self.item_embedding, batch.pos_items), pos_content], dim=1)
        neg = torch.cat([take_rows(self.item_embedding, batch.neg_items), neg_content], dim=1)
        diff = (users * pos).sum(1) - (users * neg).sum(1)
        loss = -torch.log(1e-10 + torch.sigmoid(diff)).mean()
        loss = loss + self.reg_weight * emb_loss(users, pos, neg)
        views = []
        if with_views:
            if context.item_rows is not None:
                raise RuntimeError("VBPR: score views need encode() with a DVIB variant (all items' content)")
            # One [B, 2d] @ [2d, I] product: sharing the γ half between the clean and noisy views saves
            # a quarter of the FLOPs but costs an extra B × I accumulation (docs/speed.md, lever `vbpr_views`).
            views = [View(users @ torch.cat([self.item_embedding, content], dim=1).T)]
        return PassOutput(loss, views)

    def scorer(self):
        with torch.no_grad():
            items = torch.cat([self.item_embedding, self.content()], dim=1)
        return lambda users: self.user_embedding[users].detach() @ items.T


@dataclass
class _Context:
    """What VBPR's decode needs besides the content: batch users' θ and where [pos_items ; neg_items]
    sit in `content` (None: it holds every item)."""

    users: torch.Tensor
    item_rows: torch.Tensor | None
