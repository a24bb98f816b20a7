"""Behaviour every registered model and DVIB variant must show, on tiny real data."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import make_batch
from pipeline.dataset import MODALITIES
from pipeline.model_names import model_names
from pipeline.models import BASE_MODELS, build_model
from pipeline.models.base import take_rows
from pipeline.models.dvib import DVIB
from pipeline.trainer import train


@pytest.mark.parametrize("name", model_names())
def test_loss_is_finite_and_decreases(name, tiny_data, tiny_graphs, make_config):
    torch.manual_seed(0)
    model = build_model(make_config(name), tiny_data, tiny_graphs)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    batch = make_batch(tiny_data)
    losses = []
    for _ in range(15):
        model.pre_epoch(torch.Generator().manual_seed(1))
        loss = model.loss(batch)
        assert torch.isfinite(loss), f"{name}: loss {loss}"
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), f"{name}: {losses}"


@pytest.mark.parametrize("base", list(BASE_MODELS))
def test_dvib_c_with_zero_noise_has_clean_pass_equal_to_base(base, tiny_data, tiny_graphs, make_config):
    cfg = make_config(base + "c", dvib={"noise_level": 0.0})
    torch.manual_seed(0)
    dvib = build_model(cfg, tiny_data, tiny_graphs)
    assert isinstance(dvib, DVIB)
    dvib.eval()  # no dropout inside the models, so both passes are comparable
    batch = make_batch(tiny_data)
    hidden, context = dvib.base.encode(batch, "c")
    noisy_hidden, vib = dvib.perturb(hidden)
    for name in dvib.sites:
        assert torch.equal(noisy_hidden[name], hidden[name])
    assert vib.item() == 0.0
    torch.manual_seed(3)
    clean = dvib.base.decode(hidden, context, batch, noisy=False, with_views=True)
    torch.manual_seed(3)
    base_loss = dvib.base.loss(batch)
    assert torch.allclose(clean.loss, base_loss, rtol=1e-6, atol=1e-7)
    torch.manual_seed(3)
    noisy_clean = dvib.base.decode(hidden, context, batch, noisy=True, with_views=True)
    torch.manual_seed(3)
    noisy_zero = dvib.base.decode(noisy_hidden, context, batch, noisy=True, with_views=True)
    assert torch.allclose(noisy_zero.loss, noisy_clean.loss, rtol=1e-6, atol=1e-7)
    consistency = dvib.consistency(clean, clean)
    assert abs(consistency.item()) < 1e-5


@pytest.mark.parametrize("base", list(BASE_MODELS))
def test_dvib_a_stays_finite_on_large_features(base, tiny_data, tiny_graphs, make_config):
    """The reference's a-variants go to NaN within a few steps; ours must not (300 steps, ×1000 features)."""
    loud = dataclasses.replace(
        tiny_data,
        image_features=tiny_data.image_features * 1000.0,
        text_features=tiny_data.text_features * 1000.0,
    )
    torch.manual_seed(0)
    model = build_model(make_config(base + "a"), loud, tiny_graphs)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(300):
        if step % 30 == 0:
            model.pre_epoch(torch.Generator().manual_seed(step))
        loss = model.loss(make_batch(loud, seed=step))
        assert torch.isfinite(loss), f"{base}a: step {step} loss {loss}"
        optimizer.zero_grad()
        loss.backward()
        for p in model.parameters():
            if p.grad is not None:
                assert torch.isfinite(p.grad).all(), f"{base}a: step {step} non-finite gradient"
        optimizer.step()


@pytest.mark.parametrize("name", model_names())
def test_training_is_deterministic_on_cpu_and_depends_on_the_seed(name, tiny_data, tiny_graphs, make_config):
    cfg = make_config(name, train={"epochs": 2})

    def run(seed):
        torch.manual_seed(seed)
        model = build_model(cfg, tiny_data, tiny_graphs)
        return train(model, tiny_data, cfg, torch.device("cpu"))

    first, second, other_seed = run(cfg.seed), run(cfg.seed), run(cfg.seed + 1)
    assert first.test == second.test and first.valid == second.valid
    assert first.status == "max_epochs" and first.best_epoch in (0, 1)
    expected = {f"{m}@{k}" for m in ("recall", "ndcg", "precision", "map") for k in cfg.eval.topk}
    assert set(first.test) == set(first.valid) == expected
    assert all(0.0 <= v <= 1.0 for v in [*first.test.values(), *first.valid.values()])
    assert first.test["recall@50"] > 0.0, "no test item ranked in any user's top 50"
    # Another seed initialises the model differently, so the ranking (and its metrics) differ.
    assert other_seed.valid != first.valid


@pytest.mark.parametrize("base", list(BASE_MODELS))
def test_models_never_write_into_the_dataset_arrays(base, tiny_data, tiny_graphs, make_config):
    image, text = tiny_data.image_features.copy(), tiny_data.text_features.copy()
    torch.manual_seed(0)
    trained = build_model(make_config(base), tiny_data, tiny_graphs)
    with torch.no_grad():
        for tensor in trained.item_features().values():
            tensor.mul_(4.0)  # what a perturbation, or a checkpoint of other features, would do
    state = trained.state_dict()
    fresh = build_model(make_config(base), tiny_data, tiny_graphs)
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(tiny_data.image_features, image)
    np.testing.assert_array_equal(tiny_data.text_features, text)


def test_take_rows_matches_advanced_indexing_in_value_and_gradient():
    """take_rows (index_select) is x[index], repeated rows included, value and gradient."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 4, dtype=torch.float64, generator=g, requires_grad=True)
    index = torch.tensor([7, 0, 7, 3, 8, 7])
    weights = torch.randn(len(index), 4, dtype=torch.float64, generator=g)
    expected_grad, = torch.autograd.grad((x[index] * weights).sum(), x)
    got = take_rows(x, index)
    got_grad, = torch.autograd.grad((got * weights).sum(), x)
    assert torch.equal(got, x[index])
    assert torch.allclose(got_grad, expected_grad, rtol=1e-14, atol=0)
    assert got_grad[7].abs().sum() > 0 and torch.all(got_grad[[1, 2, 4, 5, 6]] == 0)


@pytest.mark.parametrize("base, fine_tuned", [("VBPR", False), ("MMGCN", False), ("GRCN", False), ("BM3", True),
                                              ("FREEDOM", True)])
def test_item_features_are_fine_tuned_only_where_the_model_says_and_never_in_the_dataset(
    base, fine_tuned, tiny_data, tiny_graphs, make_config
):
    original = {m: f.copy() for m, f in tiny_data.features().items()}
    model = build_model(make_config(base), tiny_data, tiny_graphs)
    features = model.item_features()
    assert list(features) == list(MODALITIES)
    assert all(isinstance(f, torch.nn.Parameter) == fine_tuned for f in features.values())
    before = {m: f.detach().clone() for m, f in features.items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.loss(make_batch(tiny_data)).backward()
    optimizer.step()
    for m, f in features.items():
        assert torch.equal(f.detach(), before[m]) != fine_tuned, m
        assert np.array_equal(tiny_data.features()[m], original[m]), m


# The clean node representation of the two node-representation models, computed directly.
FRESH_REPRESENTATION = {
    "MMGCN": lambda model: model.representation(model.image_features, model.text_features),
    "GRCN": lambda model: model.representation_from(*model.encode(None, None), noisy=False),
}
CACHED_SCORER_CASES = [("MMGCN", {"trainable_id_and_preference": False}),
                       ("MMGCN", {"trainable_id_and_preference": True}), ("GRCN", {})]


def fresh_scores(base: str, model, users: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        rep = FRESH_REPRESENTATION[base](model)
    return rep[users] @ rep[model.n_users :].T


def train_step(model, batch) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.loss(batch).backward()
    optimizer.step()


@pytest.mark.parametrize("base, settings", CACHED_SCORER_CASES)
def test_cached_scorer_is_one_step_stale_until_the_features_change(base, settings, tiny_data, tiny_graphs,
                                                                   make_config):
    torch.manual_seed(0)
    model = build_model(make_config(base, model_params={"cache_prediction": True, **settings}), tiny_data, tiny_graphs)
    users = torch.arange(tiny_data.n_users)
    assert torch.equal(model.scorer()(users), fresh_scores(base, model, users))  # nothing cached yet: computed
    before_step = fresh_scores(base, model, users)
    train_step(model, make_batch(tiny_data))
    stale = model.scorer()(users)
    assert torch.equal(stale, before_step)
    assert not torch.allclose(stale, fresh_scores(base, model, users))
    # Features perturbed in place (robustness stage): the cache no longer applies.
    with torch.no_grad():
        model.item_features()["text"].add_(0.5)
    assert torch.equal(model.scorer()(users), fresh_scores(base, model, users))


@pytest.mark.parametrize("base", list(FRESH_REPRESENTATION))
def test_recomputed_scorer_equals_a_fresh_forward(base, tiny_data, tiny_graphs, make_config):
    torch.manual_seed(0)
    model = build_model(make_config(base, model_params={"cache_prediction": False}), tiny_data, tiny_graphs)
    users = torch.arange(tiny_data.n_users)
    before_step = fresh_scores(base, model, users)
    train_step(model, make_batch(tiny_data))
    scores = model.scorer()(users)
    assert torch.equal(scores, fresh_scores(base, model, users))
    assert not torch.allclose(scores, before_step)
