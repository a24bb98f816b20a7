"""Test-time perturbations of the item features, and their evaluation on a trained model.

Each perturbation is a pure function {modality: [I, dim] tensor} -> new dict, seeded so that a
condition gives the same features on every run and device:
- Gaussian noise: x + level·σ_m·Z, σ_m the standard deviation of all of modality m's entries;
  one Z per modality (drawn from the seed) serves every level, so levels differ only in scale;
- modality removal: every item gets the modality's mean vector (how the datasets fill items that
  have no image), so the modality carries no item-specific information;
- dimension dropout: a seeded fraction of each modality's dimensions set to zero; one random order
  of dimensions per modality serves every fraction, so larger fractions drop supersets.
`evaluate_conditions` writes each perturbed copy into the model's own feature tensors (the ones
`item_features()` returns), rebuilds the scorer, evaluates, and restores the clean values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from pipeline.config import ConfigError
from pipeline.dataset import MODALITIES

Features = dict[str, torch.Tensor]
KINDS = ("noise", "remove", "drop")


@dataclass(frozen=True)
class Condition:
    """One test-time perturbation: kind 'noise' (level = σ multiple), 'drop' (level = fraction) or 'remove'."""

    kind: str
    level: float = 0.0
    modality: str | None = None

    @property
    def name(self) -> str:
        """Stable key used in metrics files: noise@0.25, drop@0.5, remove@image."""
        return f"remove@{self.modality}" if self.kind == "remove" else f"{self.kind}@{self.level:g}"


def add_gaussian_noise(features: Mapping[str, torch.Tensor], level: float, seed: int) -> Features:
    """x + level·std(x)·Z per modality, Z ~ N(0, 1) drawn from `seed` (level 0 returns exact copies)."""
    if level < 0:
        raise ValueError(f"noise level must be >= 0, got {level}")
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for modality in sorted(features):
        x = features[modality]
        if level == 0:
            out[modality] = x.clone()
            continue
        z = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
        out[modality] = x + (level * x.float().std()).to(x.dtype) * z
    return out


def remove_modality(features: Mapping[str, torch.Tensor], modality: str) -> Features:
    """Replace every item's `modality` features by that modality's mean vector; others are copied."""
    if modality not in features:
        raise ValueError(f"unknown modality {modality!r}; the model has {sorted(features)}")
    out = {m: x.clone() for m, x in features.items()}
    x = features[modality]
    out[modality] = x.mean(dim=0, keepdim=True).expand_as(x).clone()
    return out


def drop_dimensions(features: Mapping[str, torch.Tensor], fraction: float, seed: int) -> Features:
    """Zero round(fraction·dim) dimensions of each modality, chosen by a permutation drawn from `seed`."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"drop fraction must be in [0, 1], got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for modality in sorted(features):
        x = features[modality]
        order = torch.randperm(x.shape[1], generator=generator)
        dropped = order[: round(fraction * x.shape[1])].to(x.device)
        out[modality] = x.clone()
        out[modality][:, dropped] = 0
    return out


def perturb(condition: Condition, features: Mapping[str, torch.Tensor], seed: int) -> Features:
    """The perturbed copy of `features` under `condition`."""
    if condition.kind == "noise":
        return add_gaussian_noise(features, condition.level, seed)
    if condition.kind == "drop":
        return drop_dimensions(features, condition.level, seed)
    if condition.kind == "remove":
        return remove_modality(features, condition.modality)
    raise ValueError(f"unknown perturbation kind {condition.kind!r}; expected one of {KINDS}")


PARAM_KEYS = ("seed", "noise_levels", "remove_modalities", "drop_fractions", "model_overrides")


def conditions_from_params(robustness: Mapping) -> list[Condition]:
    """Conditions from params.yaml `robustness` (noise_levels, remove_modalities, drop_fractions), key set checked."""
    if not isinstance(robustness, Mapping) or set(robustness) != set(PARAM_KEYS):
        got = sorted(robustness) if isinstance(robustness, Mapping) else robustness
        raise ConfigError(f"params.yaml: robustness: expected exactly the keys {list(PARAM_KEYS)}, got {got}")
    for key in ("noise_levels", "remove_modalities", "drop_fractions"):
        if not isinstance(robustness.get(key), list):
            raise ConfigError(f"params.yaml: robustness.{key}: expected a list")
    numbers = robustness["noise_levels"] + robustness["drop_fractions"]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in numbers):
        raise ConfigError("params.yaml: robustness: noise_levels and drop_fractions must be numbers")
    unknown = sorted(set(map(str, robustness["remove_modalities"])) - set(MODALITIES))
    if unknown:
        raise ConfigError(f"params.yaml: robustness.remove_modalities: unknown {unknown}; expected {list(MODALITIES)}")
    levels = [float(v) for v in robustness["noise_levels"]]
    fractions = [float(v) for v in robustness["drop_fractions"]]
    if 0.0 not in levels:
        raise ConfigError("params.yaml: robustness.noise_levels: must contain 0 (the clean reference)")
    if min(levels) < 0 or not all(0.0 <= f <= 1.0 for f in fractions):
        raise ConfigError("params.yaml: robustness: noise levels must be >= 0 and drop fractions in [0, 1]")
    return [
        *(Condition("noise", level) for level in sorted(levels)),
        *(Condition("remove", modality=str(m)) for m in robustness["remove_modalities"]),
        *(Condition("drop", f) for f in sorted(fractions)),
    ]


def write_features(targets: Mapping[str, torch.Tensor], values: Mapping[str, torch.Tensor]) -> None:
    """Copy `values` into the model's feature tensors in place (no autograd record)."""
    with torch.no_grad():
        for modality, value in values.items():
            targets[modality].copy_(value)


def evaluate_conditions(
    objective: torch.nn.Module,
    features: Mapping[str, torch.Tensor],
    conditions: list[Condition],
    evaluate: Callable[[Callable], dict[str, float]],
    seed: int,
) -> dict[str, dict[str, float]]:
    """{condition name: metrics} evaluating `objective.scorer()` with each perturbed copy of `features`.

    `features` are the model's own tensors (`item_features()`); they hold the clean values again on return.
    """
    clean = {m: x.detach().clone() for m, x in features.items()}
    results = {}
    try:
        for condition in conditions:
            write_features(features, perturb(condition, clean, seed))
            results[condition.name] = evaluate(objective.scorer())
    finally:
        write_features(features, clean)
    return results


@torch.no_grad()
def scores_respond_to_features(objective: torch.nn.Module, features: Mapping[str, torch.Tensor], users: torch.Tensor) -> bool:
    """Whether the scores of `users` change when every modality is replaced by its mean vector.

    False means the model ranks without reading the stored features at test time (e.g. features
    used only in a training loss, or a representation cached during training): test-time
    perturbations cannot change its metrics.
    """
    clean = {m: x.detach().clone() for m, x in features.items()}
    before = objective.scorer()(users)
    try:
        write_features(features, {m: x.mean(dim=0, keepdim=True).expand_as(x) for m, x in clean.items()})
        after = objective.scorer()(users)
    finally:
        write_features(features, clean)
    return not torch.equal(before, after)
