"""Speed changes that are meant to be exact: each is checked against the straightforward computation.

- the consistency divergences' hand-written backward passes (pipeline/models/divergences.py) against float64
  autograd through the formulas written out;
- VBPR projecting only the batch's distinct items in the plain model, against the all-items
  computation, and its DVIB objective against the formulas;
- the trainer's fused Adam against torch's default Adam;
- configure_runtime's reuse of freed memory: training with and without it gives the same numbers;
- the trainer's `train_epoch` (the benchmark's unit) against the training loop.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.models.divergences import js_divergence, upstream_divergence
from pipeline.models import build_model
from pipeline.models.base import Batch
from pipeline.sampling import NegativeSampler
from pipeline.trainer import TrainRows, make_optimizer, train, train_epoch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread is faster, and immune to a busy machine's OpenMP barrier waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def js_autograd(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """½[KL(P‖M) + KL(Q‖M)] / rows through autograd, formula as written."""
    p, q = p_logits.softmax(-1), q_logits.softmax(-1)
    m = (p + q) / 2
    return 0.5 * ((p * (p / m).log()).sum() + (q * (q / m).log()).sum()) / p_logits.shape[0]


def upstream_autograd(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """½[KL(M‖softmax(P)) + KL(M‖softmax(Q))] / rows through autograd, formula as written."""
    p, q = p_logits.softmax(-1), q_logits.softmax(-1)
    m = (p + q) / 2
    p2, q2 = p.softmax(-1), q.softmax(-1)
    return 0.5 * ((m * (m / p2).log()).sum() + (m * (m / q2).log()).sum()) / p_logits.shape[0]


PAIRS = [(js_divergence, js_autograd), (upstream_divergence, upstream_autograd)]


def _logits(shape, scale, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)


def _value_and_grads(fn, p, q, weight=1.0):
    p, q = p.clone().requires_grad_(), q.clone().requires_grad_()
    value = fn(p, q)
    (weight * value).backward()
    return value.detach(), p.grad, q.grad


@pytest.mark.parametrize("fast, formula", PAIRS, ids=["js", "upstream"])
@pytest.mark.parametrize("scale", [0.1, 2.0, 8.0])
def test_divergence_value_and_gradients_match_float64_autograd(fast, formula, scale):
    p, q = _logits((12, 40), scale, 1), _logits((12, 40), scale, 2)
    fast_value, fast_gp, fast_gq = _value_and_grads(fast, p, q, weight=0.7)
    ref_value, ref_gp, ref_gq = _value_and_grads(formula, p, q, weight=0.7)
    assert torch.allclose(fast_value, ref_value, rtol=1e-10, atol=1e-14)
    assert torch.allclose(fast_gp, ref_gp, rtol=1e-8, atol=1e-13)
    assert torch.allclose(fast_gq, ref_gq, rtol=1e-8, atol=1e-13)


@pytest.mark.parametrize("fast, formula", PAIRS, ids=["js", "upstream"])
def test_divergence_float32_is_close_to_float64(fast, formula):
    p64, q64 = _logits((64, 500), 3.0, 3), _logits((64, 500), 3.0, 4)
    value32, gp32, gq32 = _value_and_grads(fast, p64.float(), q64.float())
    value64, gp64, gq64 = _value_and_grads(formula, p64, q64)
    assert value32.item() == pytest.approx(value64.item(), rel=1e-4)
    for g32, g64 in ((gp32, gp64), (gq32, gq64)):
        assert (g32.double() - g64).abs().max() <= 1e-4 * g64.abs().max()


@pytest.mark.parametrize("fast", [js_divergence, upstream_divergence], ids=["js", "upstream"])
def test_divergence_gradcheck_and_one_sided_gradients(fast):
    p, q = _logits((3, 7), 1.5, 5).requires_grad_(), _logits((3, 7), 1.5, 6).requires_grad_()
    assert torch.autograd.gradcheck(fast, (p, q))
    # Only one side needing a gradient (a target view): the other gets none, this one the same.
    both_gp = torch.autograd.grad(fast(p, q), p)[0]
    one_gp = torch.autograd.grad(fast(p, q.detach()), p)[0]
    assert torch.equal(both_gp, one_gp)


@pytest.mark.parametrize("fast", [js_divergence, upstream_divergence], ids=["js", "upstream"])
def test_divergence_without_grad_equals_value_with_grad(fast):
    p, q = _logits((8, 30), 2.0, 7, torch.float32), _logits((8, 30), 2.0, 8, torch.float32)
    with torch.no_grad():
        plain = fast(p, q)
    tracked = fast(p.clone().requires_grad_(), q)
    assert torch.equal(plain, tracked.detach())


@pytest.mark.parametrize("fast", [js_divergence, upstream_divergence], ids=["js", "upstream"])
def test_divergence_gradients_stay_finite_and_match_when_softmax_underflows(fast):
    # A gap of 120 underflows float32's softmax to exact zeros; float64's stays positive.
    p64, q64 = _logits((4, 200), 2.0, 9), _logits((4, 200), 2.0, 10)
    p64[:, :50] -= 120.0
    q64[:, 25:75] -= 120.0
    value32, gp32, gq32 = _value_and_grads(fast, p64.float(), q64.float())
    assert (p64.float().softmax(-1) == 0).any()
    assert torch.isfinite(value32) and torch.isfinite(gp32).all() and torch.isfinite(gq32).all()
    _, gp64, gq64 = _value_and_grads(fast, p64, q64)
    assert torch.allclose(gp32.double(), gp64, atol=1e-5 * gp64.abs().max())
    assert torch.allclose(gq32.double(), gq64, atol=1e-5 * gq64.abs().max())


# ---------------------------------------------------------------- VBPR


def _batch(data, size, seed):
    g = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(data.train), generator=g)[:size]
    users = torch.as_tensor(data.train.users)[rows]
    negatives = NegativeSampler(data.train, data.n_items, "cpu").sample(users, g)
    return Batch(users, torch.as_tensor(data.train.items)[rows], negatives)


def vbpr_all_items_loss(model, batch: Batch) -> torch.Tensor:
    """VBPR's loss as docs/method.md, "VBPR", writes it: every item's content projected, then the batch gathered."""
    items = torch.cat([model.item_embedding, model.content()], dim=1)
    users = model.user_embedding[batch.users]
    pos, neg = items[batch.pos_items], items[batch.neg_items]
    loss = -torch.log(1e-10 + torch.sigmoid((users * pos).sum(1) - (users * neg).sum(1))).mean()
    return loss + model.reg_weight * (users.norm() + pos.norm() + neg.norm()) / len(batch.users)


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_vbpr_batch_item_projection_equals_all_items(tiny_data, tiny_graphs, make_config):
    torch.manual_seed(0)
    model = build_model(make_config("VBPR"), tiny_data, tiny_graphs).double()
    batch = _batch(tiny_data, 64, 1)
    fast_grads = _grads(model, model.loss(batch))
    slow_grads = _grads(model, vbpr_all_items_loss(model, batch))
    assert torch.allclose(model.loss(batch), vbpr_all_items_loss(model, batch), rtol=1e-12)
    for name in fast_grads:
        assert torch.allclose(fast_grads[name], slow_grads[name], rtol=1e-10, atol=1e-14), name


def test_vbpr_dvib_objective_matches_the_formula(tiny_data, tiny_graphs, make_config):
    """The whole VBPRc objective (hand-written divergence backward included) against autograd through
    the formulas of docs/method.md ("VBPR", "The method"), in float64."""
    torch.manual_seed(0)
    model = build_model(make_config("VBPRc"), tiny_data, tiny_graphs).double()
    batch = _batch(tiny_data, 64, 3)
    base, w = model.base, model.cfg.consistency_weight
    divergence = {"js": js_autograd, "upstream": upstream_autograd}[model.cfg.divergence]
    torch.manual_seed(5)
    fast = _grads(model, model.loss(batch))

    torch.manual_seed(5)  # the same noise draw as DVIB.perturb's
    content = base.content()
    noisy = content + model.cfg.noise_level * torch.randn_like(content)
    users = base.user_embedding[batch.users]
    losses, views = [], []
    for c in (content, noisy):
        items = torch.cat([base.item_embedding, c], dim=1)
        pos, neg = items[batch.pos_items], items[batch.neg_items]
        losses.append(-torch.log(1e-10 + torch.sigmoid((users * pos).sum(1) - (users * neg).sum(1))).mean()
                      + base.reg_weight * (users.norm() + pos.norm() + neg.norm()) / len(batch.users))
        views.append(users @ items.T)
    slow = _grads(model, (1 - w) * (losses[0] + losses[1]) + w * divergence(views[0], views[1]))
    for name in fast:
        assert torch.allclose(fast[name], slow[name], rtol=1e-9, atol=1e-13), name


# ---------------------------------------------------------------- trainer


def test_train_epoch_is_the_training_loop(tiny_data, tiny_graphs, make_config):
    cfg = make_config("VBPR", train={"epochs": 2, "stopping_step": 5})
    torch.manual_seed(0)
    looped = build_model(cfg, tiny_data, tiny_graphs)
    train(looped, tiny_data, cfg, torch.device("cpu"))  # leaves the last epoch's weights in `looped`
    torch.manual_seed(0)
    stepped = build_model(cfg, tiny_data, tiny_graphs)
    optimizer = make_optimizer(stepped, cfg)
    rows = TrainRows(tiny_data, torch.device("cpu"), with_negatives=True)
    generator = torch.Generator().manual_seed(cfg.seed)
    for _ in range(2):
        train_epoch(stepped, optimizer, rows, cfg.train.batch_size, generator)
    for name, value in stepped.state_dict().items():
        assert torch.equal(value, looped.state_dict()[name]), name


def test_fused_adam_follows_default_adam(tiny_data, tiny_graphs, make_config):
    """Same arithmetic, one kernel: trajectories agree to float rounding over many steps."""
    cfg = make_config("VBPR", train={"weight_decay": 0.01})
    batches = [_batch(tiny_data, 64, step) for step in range(8)]
    trained = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = build_model(cfg, tiny_data, tiny_graphs)
        if fused:
            optimizer = make_optimizer(model, cfg)
            assert optimizer.defaults["fused"]
        else:
            optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.learning_rate,
                                         weight_decay=cfg.train.weight_decay)
        for step in range(40):
            loss = model.loss(batches[step % len(batches)])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        trained.append(model.state_dict())
    for name, value in trained[0].items():
        assert torch.allclose(value, trained[1][name], rtol=1e-5, atol=1e-6), name


# ---------------------------------------------------------------- runtime


_TRAIN_SCRIPT = """
import dataclasses, sys, torch
from pipeline.config import experiment_config, read_params
from pipeline.dataset import load_mmrec
from pipeline.graphs import graphs_in_memory
from pipeline.models import build_model
from pipeline.runtime import reuse_freed_memory
from pipeline.trainer import train
root, folder = sys.argv[1:3]
torch.set_num_threads(1)
torch.set_flush_denormal(True)
data = load_mmrec(folder)
graphs = graphs_in_memory(data, knn_k=5)
for model in ("VBPRc", "FREEDOMa"):
    cfg = experiment_config(read_params(root + "/params.yaml"), model, "tiny")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device="cpu", epochs=2, batch_size=128))
    for malloc in ("system", "reuse"):  # glibc's default first: the setting cannot be undone
        if malloc == "reuse":
            assert reuse_freed_memory()
        torch.manual_seed(0)
        objective = build_model(cfg, data, graphs)
        losses = []
        train(objective, data, cfg, torch.device("cpu"), on_epoch=lambda e: losses.append(e.train_loss))
        print(model, malloc, repr(losses), repr([float(v.double().sum()) for v in objective.state_dict().values()]))
"""


def test_reusing_freed_memory_changes_no_result(tiny_dir):
    """configure_runtime's malloc setting hands out recycled (not zeroed) memory: a computation that
    read memory it never wrote would differ between the two runs (in a fresh process, which starts
    with glibc's default)."""
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", _TRAIN_SCRIPT, root, str(tiny_dir)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(out) == 4
    for system, reuse in (out[0:2], out[2:4]):
        assert system.split(" ", 2)[2] == reuse.split(" ", 2)[2], (system, reuse)
