"""MMGCN: one graph convolution network per modality over the user–item graph (docs/method.md, "MMGCN")."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from pipeline.dataset import InteractionData
from pipeline.graphs import Graphs
from pipeline.models.base import Batch, DVIBSite, PassOutput, linear_of_concat
from pipeline.models.graph_ops import NodeRepresentationModel, UndirectedEdges, node_bpr_with_id_reg

LEAKY_SLOPE = 0.01
N_LAYERS = 3  # the reference always builds three layers, whatever its `n_layers` setting says


def _xavier_normal_linear(in_dim: int, out_dim: int) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    nn.init.xavier_normal_(layer.weight)
    return layer


class ModalityGCN(nn.Module):
    """One modality's three-layer MMGCN network over X = normalise([P ; item features]).

    Layer l: h = LReLU(MeanAgg(X) W_l), x̂ = LReLU(Lin_l(X)) + E_id, X = LReLU(G_l([h ; x̂])).
    MeanAgg(X W) is computed as MeanAgg(X) W (the same linear map; it skips the sparse backward
    product whenever X needs no gradient).
    """

    def __init__(
        self, n_users: int, feature_dim: int, latent_dim: int | None, embedding_size: int, trainable_preference: bool
    ):
        super().__init__()
        self.projection = nn.Linear(feature_dim, latent_dim) if latent_dim else None
        in_dim = latent_dim or feature_dim
        preference = nn.init.xavier_normal_(torch.empty(n_users, in_dim))
        if trainable_preference:
            self.preference = nn.Parameter(preference)
        else:
            self.register_buffer("preference", preference)
        widths = [in_dim] + [embedding_size] * (N_LAYERS - 1)
        self.conv_weights = nn.ParameterList(
            nn.Parameter(nn.init.xavier_normal_(torch.empty(w, w))) for w in widths
        )
        self.linears = nn.ModuleList(_xavier_normal_linear(w, embedding_size) for w in widths)
        # As the reference: only the first gate gets the xavier init, the others keep torch's default.
        self.gates = nn.ModuleList(
            [_xavier_normal_linear(widths[0] + embedding_size, embedding_size)]
            + [nn.Linear(w + embedding_size, embedding_size) for w in widths[1:]]
        )

    def forward(
        self, features: torch.Tensor, id_embedding: torch.Tensor, edges: UndirectedEdges, mean_weights: torch.Tensor
    ) -> torch.Tensor:
        """Node representations [N, d] from item features [I, feature_dim]."""
        items = self.projection(features) if self.projection is not None else features
        x = F.normalize(torch.cat([self.preference, items]), dim=1)
        for weight, linear, gate in zip(self.conv_weights, self.linears, self.gates):
            h = F.leaky_relu(edges.aggregate(mean_weights, x) @ weight, LEAKY_SLOPE)
            x_hat = F.leaky_relu(linear(x), LEAKY_SLOPE) + id_embedding
            x = F.leaky_relu(linear_of_concat(gate, h, x_hat), LEAKY_SLOPE)
        return x


class MMGCN(NodeRepresentationModel):
    """Multimodal graph convolution network: R = (R_image + R_text) / 2, score(u, i) = ⟨R_u, R_{U+i}⟩.

    Args:
        data: the dataset (id counts and item features, any widths).
        graphs: the graph artefacts; `edge_index` (u → U+i) is used in both directions. Repeated
            train rows count with their multiplicity in the neighbour means, as in the reference.
        embedding_size: d, the width of E_id and of every layer's output (64).
        image_latent_dim: width of the image projection Linear(image_dim → 256) and of P_image.
        reg_weight: λ of λ·[mean(E_id[u]² + E_id[item]²) + mean(P_image²)] (E_id rows paired as
            the reference pairs them: each user once per pos and neg item).
        trainable_id_and_preference: false reproduces the reference, whose E_id and P_m are plain
            tensors, never optimised (frozen random values, so the regulariser is a constant);
            true makes them parameters.
        cache_prediction: true reproduces the reference, whose scorer reuses the representation of
            the last clean training pass (stale by one optimiser step; computed afresh when there
            is none or the item features changed since); false recomputes it for scoring.
        image_noise_hidden, text_noise_hidden: hidden sizes of DVIBa's noise networks on the raw
            image and text features (reference: 4096→2048→1024→1 and 384→192→96→1).
    DVIB perturbs the raw input features (sites 'image' and 'text'); the noisy pass runs both
    modality networks again, with the same weights, on the noisy features.
    """

    def __init__(
        self,
        data: InteractionData,
        graphs: Graphs | None,
        *,
        embedding_size: int,
        image_latent_dim: int,
        reg_weight: float,
        trainable_id_and_preference: bool,
        cache_prediction: bool,
        image_noise_hidden: list[int],
        text_noise_hidden: list[int],
    ):
        super().__init__()
        graphs = self.require_graphs(graphs, "edge_index")
        self.n_users, self.n_items = data.n_users, data.n_items
        self.reg_weight = reg_weight
        self.cache_prediction = cache_prediction
        self.noise_hidden = {"image": tuple(image_noise_hidden), "text": tuple(text_noise_hidden)}
        self.register_item_features(data, trainable=False)
        n_nodes = data.n_users + data.n_items
        id_embedding = nn.init.xavier_normal_(torch.empty(n_nodes, embedding_size))
        if trainable_id_and_preference:
            self.id_embedding = nn.Parameter(id_embedding)
        else:
            self.register_buffer("id_embedding", id_embedding)
        self.edges = UndirectedEdges(graphs.edge_index, n_nodes)
        # Mean over incoming neighbours: each entry weighs multiplicity / in-degree of its target.
        mean_weights = self.edges.multiplicity / self.edges.in_degree()[self.edges.target]
        self.register_buffer("mean_weights", mean_weights, persistent=False)
        self.image_gcn = ModalityGCN(
            data.n_users, data.image_features.shape[1], image_latent_dim, embedding_size, trainable_id_and_preference
        )
        self.text_gcn = ModalityGCN(
            data.n_users, data.text_features.shape[1], None, embedding_size, trainable_id_and_preference
        )

    def dvib_sites(self, variant: str) -> list[DVIBSite]:
        return [
            DVIBSite("image", self.image_features.shape[1], noise_hidden=self.noise_hidden["image"]),
            DVIBSite("text", self.text_features.shape[1], noise_hidden=self.noise_hidden["text"]),
        ]

    def representation(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Node representations [N, d] from (possibly perturbed) raw image and text features."""
        r_image = self.image_gcn(image, self.id_embedding, self.edges, self.mean_weights)
        r_text = self.text_gcn(text, self.id_embedding, self.edges, self.mean_weights)
        return (r_image + r_text) / 2

    def encode(self, batch: Batch, variant: str | None):
        return {"image": self.image_features, "text": self.text_features}, None

    def decode(self, hidden, context, batch: Batch, noisy: bool, with_views: bool) -> PassOutput:
        rep = self.representation(hidden["image"], hidden["text"])
        if not noisy:
            self.remember(rep)
        users, loss, reg = node_bpr_with_id_reg(
            rep, self.id_embedding, batch.users, batch.pos_items, batch.neg_items, self.n_users
        )
        reg = reg + self.image_gcn.preference.square().mean()
        loss = loss + self.reg_weight * reg
        return PassOutput(loss, self.item_views(users, rep) if with_views else [])

    def fresh_representation(self) -> torch.Tensor:
        return self.representation(self.image_features, self.text_features)
