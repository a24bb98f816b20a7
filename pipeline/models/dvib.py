"""The DVIB mechanism, written once for every base model (docs/method.md, "The method").

A base model opts in by implementing three methods of `pipeline.models.base.Recommender`:
`dvib_sites(variant)` names the hidden tensors to perturb, `encode(batch, variant)` computes them
(clean), and `decode(hidden, context, batch, noisy, with_views)` turns (possibly perturbed) hidden tensors into
a loss and the score views whose clean/noisy distributions are distilled. `DVIB` wraps the model:

    L = (1 - w) (L_clean + L_noisy) + w Σ_views D(clean view, noisy view) [+ L_VIB for variant a]

- variant `c`: ε ~ N(0, noise_level²) per element, fresh every pass;
- variant `a`: σ per row from a small network on the clean tensor, plus the KL term
  KL(N(h, σ²) ‖ N(0, 0.5²)) weighted by `vib_weight`.
Test time always uses the clean model.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from pipeline.config import DVIBConfig
from pipeline.model_names import VARIANTS
from pipeline.models.base import PassOutput, Recommender
from pipeline.models.divergences import DIVERGENCE_FUNCTIONS

PRIOR_STD = 0.5


class NoiseLevelNetwork(nn.Module):
    """Per-row noise scale σ ∈ (sigma_min, 1): Linear → ReLU → … → Linear(→1) → Sigmoid."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], sigma_min: float):
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.ReLU()]
            in_dim = width
        layers.append(nn.Linear(in_dim, 1))
        self.net = nn.Sequential(*layers)
        self.log_sigma_min = math.log(sigma_min)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (σ, log σ), each [rows, 1]; log σ comes from logsigmoid, so it is finite."""
        log_sigma = F.logsigmoid(self.net(h)).clamp_min(self.log_sigma_min)
        return log_sigma.exp(), log_sigma


def gaussian_kl_to_prior(mu: torch.Tensor, sigma: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """Mean over elements of KL(N(μ, σ²) ‖ N(0, PRIOR_STD²)), with σ, log σ [rows, 1] per row of μ.

    σ is constant along a row, so the element mean splits into a mean over rows of the σ terms
    plus mean(μ²) / (2·PRIOR_STD²), taken as one dot product: no [rows, dim] temporaries (μ is
    MMGCN's raw 7,050 × 4,096 image features).
    """
    row_terms = math.log(PRIOR_STD) - log_sigma + sigma.square() / (2 * PRIOR_STD**2) - 0.5
    flat = mu.reshape(-1)
    return row_terms.mean() + torch.dot(flat, flat) / (flat.numel() * 2 * PRIOR_STD**2)


class DVIB(nn.Module):
    """Trains `base` with DVIB variant `variant` ('c' or 'a'); scoring uses the clean base model."""

    def __init__(self, base: Recommender, variant: str, cfg: DVIBConfig):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown DVIB variant {variant!r}; expected one of {VARIANTS}")
        self.base = base
        self.needs_negatives = base.needs_negatives
        self.variant = variant
        self.cfg = cfg
        self.sites = {site.name: site for site in base.dvib_sites(variant)}
        self.divergence = DIVERGENCE_FUNCTIONS[cfg.divergence]
        self.noise_nets = nn.ModuleDict()
        if variant == "a":
            for site in self.sites.values():
                key = site.noise_net or site.name
                if key not in self.noise_nets:
                    hidden = site.noise_hidden if site.noise_hidden is not None else cfg.noise_hidden
                    self.noise_nets[key] = NoiseLevelNetwork(site.dim, hidden, cfg.sigma_min)

    def perturb(self, hidden: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Noisy copies of the site tensors, and the VIB term (0 for variant c)."""
        noisy = dict(hidden)
        vib = hidden[next(iter(self.sites))].new_zeros(())
        for name, site in self.sites.items():
            h = hidden[name]
            if self.variant == "c":
                # In place on the fresh draw: the same values as h + level·ε, one [rows, dim] temporary.
                noisy[name] = torch.randn_like(h).mul_(self.cfg.noise_level).add_(h)
            else:
                sigma, log_sigma = self.noise_nets[site.noise_net or name](h)
                noisy[name] = torch.addcmul(h, sigma, torch.randn_like(h))  # h + σ·ε, no σ·ε temporary
                vib = vib + self.cfg.vib_weight * gaussian_kl_to_prior(h, sigma, log_sigma)
        return noisy, vib

    def consistency(self, clean: PassOutput, noisy: PassOutput) -> torch.Tensor:
        """Sum of the configured divergence between matching clean and noisy views."""
        if len(clean.views) != len(noisy.views):
            raise RuntimeError("clean and noisy passes returned different numbers of views")
        total = clean.loss.new_zeros(())
        for a, b in zip(clean.views, noisy.views):
            if a.grad and b.grad:
                total = total + self.divergence(a.logits, b.logits)
            else:
                with torch.no_grad():
                    total = total + self.divergence(a.logits, b.logits)
        return total

    def forward(self, batch) -> torch.Tensor:
        return self.loss(batch)

    def loss(self, batch) -> torch.Tensor:
        """The DVIB training objective on one batch."""
        hidden, context = self.base.encode(batch, self.variant)
        clean = self.base.decode(hidden, context, batch, noisy=False, with_views=True)
        noisy_hidden, vib = self.perturb(hidden)
        noisy = self.base.decode(noisy_hidden, context, batch, noisy=True, with_views=True)
        w = self.cfg.consistency_weight
        return (1 - w) * (clean.loss + noisy.loss) + w * self.consistency(clean, noisy) + vib

    def pre_epoch(self, generator: torch.Generator) -> None:
        self.base.pre_epoch(generator)

    def scorer(self):
        """Scoring function of the clean base model (noise is a training-time device only)."""
        return self.base.scorer()
