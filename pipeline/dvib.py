"""The DVIB mechanism, written once for every base model (SPEC §6).

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
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from pipeline.config import DVIBConfig

PRIOR_STD = 0.5
VARIANTS = ("c", "a")


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


LOG_2 = math.log(2.0)


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Row softmax of `logits`.

    Not `log_softmax(...).exp()`: on CPU, element-wise exp takes a slow path wherever its result
    is below the smallest normal float (an argument under -87.3), 20-100x slower there, and a
    peaked score row over thousands of items is mostly such entries; softmax's kernel has no
    such path (benchmarks/levers.py `exp`).
    """
    return F.softmax(logits, dim=-1)


def _js_parts(p_logits: torch.Tensor, q_logits: torch.Tensor):
    """Value of the JS divergence and what its gradient needs: P, Q, D_P = log P - L, D_Q = log Q - L
    and the row sums ⟨P, D_P⟩, ⟨Q, D_Q⟩, with L = logaddexp(log P, log Q) = log M + log 2.

    KL(P‖M) = ⟨P, D_P⟩ + log 2 (P sums to 1): the log 2 is added to the value once instead of
    subtracted from every element, and cancels in the gradient. Every term is finite.
    """
    log_p = F.log_softmax(p_logits, dim=-1)
    log_q = F.log_softmax(q_logits, dim=-1)
    shifted_log_m = torch.logaddexp(log_p, log_q)
    p, q = _probabilities(p_logits), _probabilities(q_logits)
    d_p, d_q = log_p.sub_(shifted_log_m), log_q.sub_(shifted_log_m)  # in place: the logs are not needed again
    kl_p = torch.linalg.vecdot(p, d_p, dim=-1).unsqueeze(-1)
    kl_q = torch.linalg.vecdot(q, d_q, dim=-1).unsqueeze(-1)
    value = 0.5 * (kl_p.sum() + kl_q.sum()) / p_logits.shape[0] + LOG_2
    return value, (p, q, d_p, d_q, kl_p, kl_q)


class _JSDivergence(torch.autograd.Function):
    """JS divergence with a hand-written backward: d/dP of ½ΣP log(P/M) + ½ΣQ log(Q/M) is ½ log(P/M),
    pulled back through the row softmax: grad_logits = s · P ⊙ (log(P/M) - KL(P‖M)_row)."""

    @staticmethod
    def forward(ctx, p_logits, q_logits):
        value, saved = _js_parts(p_logits, q_logits)
        ctx.save_for_backward(*saved)
        ctx.rows = p_logits.shape[0]
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        p, q, d_p, d_q, kl_p, kl_q = ctx.saved_tensors
        scale = 0.5 * grad / ctx.rows
        grad_p = (d_p - kl_p).mul_(p).mul_(scale) if ctx.needs_input_grad[0] else None
        grad_q = (d_q - kl_q).mul_(q).mul_(scale) if ctx.needs_input_grad[1] else None
        return grad_p, grad_q


def js_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence ½[KL(P‖M) + KL(Q‖M)] of row-softmaxed logits, summed over rows / rows.

    Computed in log space (log M by logsumexp), so underflowing probabilities give 0·(finite) terms
    and never 0/0; the gradient is written out (`_JSDivergence`), which keeps a handful of
    [rows, cols] temporaries instead of autograd's dozen.
    """
    if torch.is_grad_enabled() and (p_logits.requires_grad or q_logits.requires_grad):
        return _JSDivergence.apply(p_logits, q_logits)
    return _js_parts(p_logits, q_logits)[0]


def _upstream_parts(p_logits: torch.Tensor, q_logits: torch.Tensor):
    """Value of the reference's divergence and the per-element gradient factors G_P, G_Q with respect
    to the first softmax's probabilities, plus P and Q (see `_UpstreamDivergence`)."""
    log_p = F.log_softmax(p_logits, dim=-1)
    log_q = F.log_softmax(q_logits, dim=-1)
    r = torch.logaddexp(log_p, log_q).sub_(LOG_2)  # log M
    del log_p, log_q
    p, q = _probabilities(p_logits), _probabilities(q_logits)
    m = torch.add(p, q).mul_(0.5)  # M, without exp(log M) (see _probabilities)
    log_p2, log_q2 = F.log_softmax(p, dim=-1), F.log_softmax(q, dim=-1)
    r.mul_(2.0).sub_(log_p2).sub_(log_q2)  # r = 2 log M - log softmax(P) - log softmax(Q)
    value = 0.5 * torch.linalg.vecdot(m, r, dim=-1).sum() / p_logits.shape[0]
    # ∂/∂P_k Σ M(2 log M - log P2 - log Q2) = ½ r_k + 1 - M_k + P2_k (the +1 vanishes through the softmax).
    base = r.mul_(0.5).sub_(m)
    g_p = log_p2.exp_().add_(base)
    g_q = log_q2.exp_().add_(base)
    return value, (p, q, g_p, g_q)


class _UpstreamDivergence(torch.autograd.Function):
    """The reference's divergence with a hand-written backward: grad_logits = s · P ⊙ (G_P - ⟨P, G_P⟩_row)."""

    @staticmethod
    def forward(ctx, p_logits, q_logits):
        value, saved = _upstream_parts(p_logits, q_logits)
        ctx.save_for_backward(*saved)
        ctx.rows = p_logits.shape[0]
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        p, q, g_p, g_q = ctx.saved_tensors
        scale = 0.5 * grad / ctx.rows

        def pull_back(prob, g):
            return (g - torch.linalg.vecdot(prob, g, dim=-1).unsqueeze(-1)).mul_(prob).mul_(scale)

        return (pull_back(p, g_p) if ctx.needs_input_grad[0] else None,
                pull_back(q, g_q) if ctx.needs_input_grad[1] else None)


def upstream_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """The reference's consistency term (SPEC §6.1): with P, Q the row softmaxes and M = (P+Q)/2,
    ½[KL(M‖softmax(P)) + KL(M‖softmax(Q))], batchmean, gradient flowing through M (and P, Q).

    Log space throughout (M·log M with M from logaddexp: 0·finite when M underflows); the gradient
    is written out (`_UpstreamDivergence`).
    """
    if torch.is_grad_enabled() and (p_logits.requires_grad or q_logits.requires_grad):
        return _UpstreamDivergence.apply(p_logits, q_logits)
    return _upstream_parts(p_logits, q_logits)[0]


DIVERGENCE_FUNCTIONS = {"js": js_divergence, "upstream": upstream_divergence}


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

    def __init__(self, base: nn.Module, variant: str, cfg: DVIBConfig):
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
