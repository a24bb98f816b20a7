"""The DVIB mechanism: divergences against float64 formulas written out, and numerical safety."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.models.divergences import js_divergence, upstream_divergence
from pipeline.models.dvib import NoiseLevelNetwork, gaussian_kl_to_prior


def _softmax64(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x - x.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def js_reference(p: torch.Tensor, q: torch.Tensor) -> float:
    """½[KL(P‖M) + KL(Q‖M)] / rows, float64, with P, Q the row softmaxes and M their mean."""
    P, Q = _softmax64(p.double()), _softmax64(q.double())
    M = (P + Q) / 2
    return float(0.5 * ((P * (P / M).log()).sum() + (Q * (Q / M).log()).sum()) / p.shape[0])


def upstream_reference(p: torch.Tensor, q: torch.Tensor) -> float:
    """½[KL(M‖softmax(P)) + KL(M‖softmax(Q))] / rows, float64 (the reference's double softmax)."""
    P, Q = _softmax64(p.double()), _softmax64(q.double())
    M = (P + Q) / 2
    P2, Q2 = _softmax64(P), _softmax64(Q)
    return float(0.5 * ((M * (M / P2).log()).sum() + (M * (M / Q2).log()).sum()) / p.shape[0])


@pytest.mark.parametrize("scale", [0.1, 1.0, 5.0])
def test_divergences_match_float64_formulas(scale):
    g = torch.Generator().manual_seed(1)
    p = scale * torch.randn(16, 50, generator=g)
    q = scale * torch.randn(16, 50, generator=g)
    assert js_divergence(p, q).item() == pytest.approx(js_reference(p, q), rel=1e-4, abs=1e-7)
    assert upstream_divergence(p, q).item() == pytest.approx(upstream_reference(p, q), rel=1e-4, abs=1e-7)


def test_js_properties():
    g = torch.Generator().manual_seed(2)
    p, q = torch.randn(8, 30, generator=g), torch.randn(8, 30, generator=g)
    assert js_divergence(p, q).item() == pytest.approx(js_divergence(q, p).item(), rel=1e-6)
    assert js_divergence(p, p).item() == pytest.approx(0.0, abs=1e-6)
    # Disjoint supports reach the maximum log 2.
    far = torch.full((1, 2), -1e4)
    assert js_divergence(far.clone().index_fill_(1, torch.tensor([0]), 0.0),
                         far.clone().index_fill_(1, torch.tensor([1]), 0.0)).item() == pytest.approx(math.log(2), rel=1e-5)


@pytest.mark.parametrize("divergence", [js_divergence, upstream_divergence])
def test_gradients_are_finite_when_softmax_underflows(divergence):
    # Score gaps of 1e4 make exact zeros in the softmax: the reference's KL backward gives 0/0 there.
    p = torch.tensor([[1e4, 0.0, -1e4], [0.0, 5e3, -5e3]], requires_grad=True)
    q = torch.tensor([[-1e4, 1e4, 0.0], [3e3, 0.0, -1e4]], requires_grad=True)
    value = divergence(p, q)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(p.grad).all() and torch.isfinite(q.grad).all()


def test_noise_network_sigma_is_bounded_and_kl_finite():
    net = NoiseLevelNetwork(4, (8, 8), sigma_min=1e-6)
    with torch.no_grad():
        net.net[-1].bias.fill_(-1e4)  # drive the sigmoid to 0: σ must stop at sigma_min
    h = torch.randn(5, 4) * 1e3
    sigma, log_sigma = net(h)
    assert torch.all(sigma >= 1e-6 * (1 - 1e-6)) and torch.all(sigma < 1)
    assert torch.allclose(log_sigma, torch.full_like(log_sigma, math.log(1e-6)))
    kl = gaussian_kl_to_prior(h, sigma, log_sigma)
    assert torch.isfinite(kl)


def test_kl_to_prior_matches_closed_form():
    mu = torch.tensor([[0.3, -1.0]], dtype=torch.float64)
    sigma = torch.tensor([[0.2]], dtype=torch.float64)
    expected = sum(math.log(0.5 / 0.2) + (0.04 + m * m) / (2 * 0.25) - 0.5 for m in (0.3, -1.0)) / 2
    assert gaussian_kl_to_prior(mu, sigma, sigma.log()).item() == pytest.approx(expected, rel=1e-12)


def test_kl_to_prior_equals_elementwise_mean_and_its_gradient():
    """The split form (row terms + one dot product) is the element mean of the closed form, value
    and gradient, in float64."""
    torch.manual_seed(0)
    mu = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    raw = torch.randn(7, 1, dtype=torch.float64, requires_grad=True)
    log_sigma = torch.nn.functional.logsigmoid(raw)
    expected = (math.log(0.5) - log_sigma + (log_sigma.exp() ** 2 + mu**2) / (2 * 0.25) - 0.5).mean()
    grads_expected = torch.autograd.grad(expected, (mu, raw))
    log_sigma = torch.nn.functional.logsigmoid(raw)
    got = gaussian_kl_to_prior(mu, log_sigma.exp(), log_sigma)
    grads_got = torch.autograd.grad(got, (mu, raw))
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    for g, e in zip(grads_got, grads_expected):
        assert torch.allclose(g, e, rtol=1e-12, atol=1e-15)
