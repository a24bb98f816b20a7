"""Divergences between the row distributions of two score matrices (DVIB's consistency term).

- `js_divergence`: the paper's Jensen–Shannon divergence of the row softmaxes;
- `upstream_divergence`: the reference implementation's variant (a second softmax, reversed KL),
  kept as the option `dvib.divergence: upstream` (docs/method.md, "Quirks of the reference").
Both are computed in log space, so underflowing probabilities never give 0/0, and have hand-written
backward passes (the speed levers `exp` and `divergence` in docs/speed.md).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2 = math.log(2.0)


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Row softmax of `logits`; not `log_softmax(...).exp()`, whose exp is slow on CPU for
    arguments under -87.3 (docs/speed.md, lever `exp`)."""
    return F.softmax(logits, dim=-1)


def _row_dots(prob: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """⟨P, G⟩ per row, [rows, 1]."""
    return torch.linalg.vecdot(prob, factor, dim=-1).unsqueeze(-1)


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
    kl_p, kl_q = _row_dots(p, d_p), _row_dots(q, d_q)
    value = 0.5 * (kl_p.sum() + kl_q.sum()) / p_logits.shape[0] + LOG_2
    return value, (p, q, d_p, d_q, kl_p, kl_q)


def _upstream_parts(p_logits: torch.Tensor, q_logits: torch.Tensor):
    """Value of the reference's divergence and the per-element gradient factors G_P, G_Q with respect
    to the first softmax's probabilities, with P, Q and the row sums ⟨P, G_P⟩, ⟨Q, G_Q⟩."""
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
    return value, (p, q, g_p, g_q, _row_dots(p, g_p), _row_dots(q, g_q))


class _RowSoftmaxDivergence(torch.autograd.Function):
    """A divergence of two row softmaxes with a hand-written backward.

    `parts(p_logits, q_logits)` returns the value and, per side, the probabilities P, the gradient
    G with respect to P and its row sums ⟨P, G⟩ (JS: G = log(P/M) up to log 2, ⟨P, G⟩ = KL(P‖M)).
    Pulled back through the softmax: grad_logits = s · P ⊙ (G - ⟨P, G⟩_row).
    """

    @staticmethod
    def forward(ctx, p_logits, q_logits, parts):
        value, saved = parts(p_logits, q_logits)
        ctx.save_for_backward(*saved)
        ctx.rows = p_logits.shape[0]
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        p, q, g_p, g_q, dot_p, dot_q = ctx.saved_tensors
        scale = 0.5 * grad / ctx.rows
        grad_p = (g_p - dot_p).mul_(p).mul_(scale) if ctx.needs_input_grad[0] else None
        grad_q = (g_q - dot_q).mul_(q).mul_(scale) if ctx.needs_input_grad[1] else None
        return grad_p, grad_q, None


def _divergence(parts, p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and (p_logits.requires_grad or q_logits.requires_grad):
        return _RowSoftmaxDivergence.apply(p_logits, q_logits, parts)
    return parts(p_logits, q_logits)[0]


def js_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence ½[KL(P‖M) + KL(Q‖M)] of row-softmaxed logits, summed over rows / rows.

    Computed in log space (log M by logsumexp), so underflowing probabilities give 0·(finite) terms
    and never 0/0; the gradient is written out, which keeps a handful of [rows, cols] temporaries
    instead of autograd's dozen.
    """
    return _divergence(_js_parts, p_logits, q_logits)


def upstream_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """The reference's consistency term: with P, Q the row softmaxes and M = (P+Q)/2,
    ½[KL(M‖softmax(P)) + KL(M‖softmax(Q))], batchmean, gradient flowing through M (and P, Q).

    Log space throughout (M·log M with M from logaddexp: 0·finite when M underflows); the gradient
    is written out.
    """
    return _divergence(_upstream_parts, p_logits, q_logits)


DIVERGENCE_FUNCTIONS = {"js": js_divergence, "upstream": upstream_divergence}
