"""GRCN: graph-refined convolution, content attention re-weighting an id graph (docs/method.md, "GRCN")."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from pipeline.dataset import InteractionData
from pipeline.dataset import MODALITIES
from pipeline.graphs import Graphs
from pipeline.models.base import Batch, DVIBSite, PassOutput, take_rows
from pipeline.models.graph_ops import NodeRepresentationModel, UndirectedEdges, node_bpr_with_id_reg


@dataclass
class GRCNContext:
    """What `decode` needs besides the DVIB site tensor: the unperturbed other half."""

    content: torch.Tensor | None  # [N, 2·latent_dim] when the site is the edge attention (variant c)
    id_rep: torch.Tensor | None  # [N, d] when the site is the content (base model, variant a)


class GRCN(NodeRepresentationModel):
    """score(u, i) = ⟨r_u, r_{U+i}⟩ with r = [id_rep ; out_image ; out_text] (64 + 2·64 wide).

    Reference settings: add aggregation, 'confid' edge weights, concat fusion, no activation,
    normalisation on, edge dropout 0. Per modality m: X_m = [normalise(P_m) ;
    normalise(LReLU(MLP_m(F_m)))], attention α over each node's incoming edges (softmax of
    ⟨X_target, X_source⟩), out_m = X_m + Σ α X_source. Edge weights w = ReLU(max_m α_m·conf_m[source]),
    id_rep = X0 + X1 + X2 with X0 = normalise(E_id), X_{k+1} = Σ w X_k[source].
    The reference's three user-preference "routing" steps aggregate over user → item edges only, so
    users receive nothing and the preferences are unchanged: they are skipped (identical result).
    Edges are the undirected train graph, repeated rows counted with their multiplicity; per-edge
    tensors are in target-major CSR order.

    Args:
        data: the dataset (id counts and item features).
        graphs: the graph artefacts (`edge_index`, u → U+i).
        embedding_size: d, the width of E_id and of the id channel (64).
        latent_dim: the width of each P_m and MLP_m output (the reference's `latent_embedding`, 64).
        reg_weight: λ of λ·[mean(E_id[u]² + E_id[item]²) + mean(P_image²) + mean(P_image[u]²) +
            mean(P_text[u]²)].
        cache_prediction: true reproduces the reference, whose scorer reuses the representation of
            the last clean training pass (stale by one optimiser step; computed afresh when there
            is none or the item features changed since); false recomputes it for scoring.
        noisy_edge_relu: DVIBc's noisy pass recomputes the edge weights from the perturbed
            attention; true applies the ReLU there as in the clean pass (the method), false skips
            it as the reference implementation does (an accident: negative weights can appear).
    DVIB sites: variant c perturbs the edge attention W = [α_image, α_text] [nnz, 2] and redoes the
    id channel with it; variant a perturbs the content half [out_image ; out_text] [N, 2·latent_dim].
    """

    def __init__(
        self,
        data: InteractionData,
        graphs: Graphs | None,
        *,
        embedding_size: int,
        latent_dim: int,
        reg_weight: float,
        cache_prediction: bool,
        noisy_edge_relu: bool,
    ):
        super().__init__()
        graphs = self.require_graphs(graphs, "edge_index")
        self.n_users, self.n_items = data.n_users, data.n_items
        self.latent_dim = latent_dim
        self.reg_weight = reg_weight
        self.cache_prediction = cache_prediction
        self.noisy_edge_relu = noisy_edge_relu
        n_nodes = data.n_users + data.n_items
        self.register_item_features(data, trainable=False)
        self.edges = UndirectedEdges(graphs.edge_index, n_nodes)
        self.id_embedding = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_nodes, embedding_size)))
        self.preferences = nn.ParameterDict(
            {m: nn.Parameter(nn.init.xavier_normal_(torch.empty(data.n_users, latent_dim))) for m in MODALITIES}
        )
        self.mlps = nn.ModuleDict({m: nn.Linear(f.shape[1], latent_dim) for m, f in self.item_features().items()})
        for mlp in self.mlps.values():
            nn.init.xavier_normal_(mlp.weight)
        self.confidence = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_nodes, len(MODALITIES))))

    def dvib_sites(self, variant: str) -> list[DVIBSite]:
        if variant == "c":
            return [DVIBSite("edge_attention", len(MODALITIES))]
        return [DVIBSite("content", len(MODALITIES) * self.latent_dim)]

    def modality_graph(self, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(out_m [N, d], attention α_m [nnz]) of one modality."""
        features = F.normalize(F.leaky_relu(self.mlps[modality](self.item_features()[modality])), dim=1)
        x = torch.cat([F.normalize(self.preferences[modality], dim=1), features])
        attention = self.edges.softmax(self.edges.edge_dot(x, x))
        return x + self.edges.aggregate(attention * self.edges.multiplicity, x), attention

    def edge_weights(self, attention: torch.Tensor, relu: bool) -> torch.Tensor:
        """w_e = max_m(W_em · conf[source_e, m]), through a ReLU when `relu`."""
        weights = (attention * take_rows(self.confidence, self.edges.source)).amax(dim=1)
        return F.relu(weights) if relu else weights

    def id_channel(self, weights: torch.Tensor) -> torch.Tensor:
        """X0 + X1 + X2 with X0 = normalise(E_id) and X_{k+1} = Σ_e w_e X_k[source_e]."""
        values = weights * self.edges.multiplicity
        x0 = F.normalize(self.id_embedding, dim=1)
        x1 = self.edges.aggregate(values, x0)
        return x0 + x1 + self.edges.aggregate(values, x1)

    def encode(self, batch: Batch | None, variant: str | None):
        outputs, attentions = zip(*(self.modality_graph(m) for m in MODALITIES))
        content = torch.cat(outputs, dim=1)
        attention = torch.stack(attentions, dim=1)
        if variant == "c":
            return {"edge_attention": attention}, GRCNContext(content=content, id_rep=None)
        id_rep = self.id_channel(self.edge_weights(attention, relu=True))
        return {"content": content}, GRCNContext(content=None, id_rep=id_rep)

    def representation_from(self, hidden: dict[str, torch.Tensor], context: GRCNContext, noisy: bool) -> torch.Tensor:
        """[id_rep ; content] [N, d + 2·latent_dim] from a site tensor and the context of `encode`."""
        if "edge_attention" in hidden:
            relu = self.noisy_edge_relu or not noisy
            id_rep = self.id_channel(self.edge_weights(hidden["edge_attention"], relu=relu))
            return torch.cat([id_rep, context.content], dim=1)
        return torch.cat([context.id_rep, hidden["content"]], dim=1)

    def decode(self, hidden, context: GRCNContext, batch: Batch, noisy: bool, with_views: bool) -> PassOutput:
        rep = self.representation_from(hidden, context, noisy)
        if not noisy:
            self.remember(rep)
        users, loss, reg = node_bpr_with_id_reg(
            rep, self.id_embedding, batch.users, batch.pos_items, batch.neg_items, self.n_users
        )
        image_pref, text_pref = self.preferences["image"], self.preferences["text"]
        reg = reg + image_pref.square().mean() + take_rows(image_pref, batch.users).square().mean()
        reg = reg + take_rows(text_pref, batch.users).square().mean()
        loss = loss + self.reg_weight * reg
        return PassOutput(loss, self.item_views(users, rep) if with_views else [])

    def fresh_representation(self) -> torch.Tensor:
        hidden, context = self.encode(None, None)
        return self.representation_from(hidden, context, noisy=False)
