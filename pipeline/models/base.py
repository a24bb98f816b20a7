"""The interface every base model implements, and the training batch it consumes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from pipeline.dataset import MODALITIES, InteractionData
from pipeline.graphs import Graphs

# BM3 and FREEDOM visit the modalities text first, as their reference code does: the order fixes the
# order of their random draws (DVIB noise, dropout masks), so it is kept for reproducibility.
TEXT_FIRST = tuple(sorted(MODALITIES, key=lambda m: m != "text"))


def take_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[index] along the first dimension: the same values as `x[index]`, but its backward is an
    `index_add` where advanced indexing's is an accumulating `index_put` (docs/speed.md, lever
    `gather`). Use it for every row gather that needs a gradient."""
    return x.index_select(0, index)


def linear_of_concat(layer: nn.Linear, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """layer([a ; b]) as a·W_aᵀ + b·W_bᵀ + bias: the same map without materialising the
    concatenation of the inputs (or splitting its gradient)."""
    split = a.shape[1]
    return torch.addmm(layer.bias, a, layer.weight[:, :split].T) + b @ layer.weight[:, split:].T


@dataclass(frozen=True)
class DVIBSite:
    """A hidden tensor `[rows, dim]` that DVIB perturbs.

    `noise_hidden` overrides the config's noise-network hidden sizes for this site; sites with the
    same `noise_net` share one network (BM3).
    """

    name: str
    dim: int
    noise_hidden: tuple[int, ...] | None = None
    noise_net: str | None = None


@dataclass
class View:
    """One score view of a pass: rows are softmaxed over the last dim for the consistency term.
    `grad=False` views (targets) contribute their value without gradient."""

    logits: torch.Tensor
    grad: bool = True


@dataclass
class PassOutput:
    """What a base model's `decode` returns: the pass's loss and its views."""

    loss: torch.Tensor
    views: list[View]


@dataclass
class Batch:
    """A training batch: users, their positive items and one sampled negative each (None for BM3)."""

    users: torch.Tensor
    pos_items: torch.Tensor
    neg_items: torch.Tensor | None


class Recommender(nn.Module):
    """Base class of the multimodal recommenders.

    The training loss is defined through an encode/decode split so that DVIB can perturb the
    hidden multimodal tensors between the two without knowing the model:
    - `dvib_sites(variant)`: the hidden tensors DVIB perturbs, with their widths;
    - `encode(batch, variant)`: (clean hidden tensors by site name, context for decode);
    - `decode(hidden, context, batch, noisy, with_views)`: the pass's loss and, when asked, its
      consistency views (score matrices whose row distributions DVIB distils).
    The plain model's loss is the clean pass. `scorer()` returns a function user ids -> scores over
    all items, computed with a single forward pass.
    """

    needs_negatives: bool = True

    def dvib_sites(self, variant: str) -> list[DVIBSite]:
        raise NotImplementedError

    def encode(self, batch: Batch, variant: str | None) -> tuple[dict[str, torch.Tensor], Any]:
        raise NotImplementedError

    def decode(
        self, hidden: dict[str, torch.Tensor], context: Any, batch: Batch, noisy: bool, with_views: bool
    ) -> PassOutput:
        raise NotImplementedError

    def loss(self, batch: Batch) -> torch.Tensor:
        """The base model's training loss on one batch (the clean pass)."""
        hidden, context = self.encode(batch, None)
        return self.decode(hidden, context, batch, noisy=False, with_views=False).loss

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.loss(batch)

    def pre_epoch(self, generator: torch.Generator) -> None:
        """Hook run before each training epoch (FREEDOM resamples its graph here)."""

    def scorer(self) -> Callable[[torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def require_graphs(self, graphs: Graphs | None, what: str) -> Graphs:
        """`graphs`, or a ValueError naming the model and `what` it reads from them when there are none."""
        if graphs is None:
            raise ValueError(f"{type(self).__name__} needs the graph artefacts ({what}); got graphs=None")
        return graphs

    def register_item_features(self, data: InteractionData, trainable: bool) -> None:
        """Copy the dataset's item features into the model as `<modality>_features`, [n_items, dim]:
        parameters when `trainable` (fine-tuned), else buffers kept out of checkpoints.

        Copies, so training never writes into the dataset's arrays.
        """
        for modality, features in data.features().items():
            tensor = torch.tensor(features)
            if trainable:
                self.register_parameter(f"{modality}_features", nn.Parameter(tensor))
            else:
                self.register_buffer(f"{modality}_features", tensor, persistent=False)

    def item_features(self) -> dict[str, torch.Tensor]:
        """The stored item feature tensors by modality, in `MODALITIES` order.

        The robustness stage perturbs them in place (noise, a removed modality) before scoring, so
        they are the tensors the model actually reads (buffers, or parameters when fine-tuned).
        """
        return {m: getattr(self, f"{m}_features") for m in MODALITIES}


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Bayesian personalised ranking loss: -mean log σ(s_pos - s_neg)."""
    return -torch.nn.functional.logsigmoid(pos_scores - neg_scores).mean()


def emb_loss(*tensors: torch.Tensor) -> torch.Tensor:
    """MMRec's EmbLoss: sum of the (not squared) Frobenius norms of the tensors, over batch rows."""
    return sum(t.norm(p=2) for t in tensors) / tensors[0].shape[0]
