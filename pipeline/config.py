"""Typed configuration: `params.yaml` sections become frozen dataclasses.

Config flows one way: params.yaml -> these objects -> the code. Every stage reads only the
sections it declares in dvc.yaml; a missing or unknown key is an error that names the section.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

PARAMS_FILE = Path("params.yaml")


class ConfigError(ValueError):
    """A params.yaml section is missing, has unknown keys or values of the wrong type."""


def read_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Parse a params.yaml file into a plain dict."""
    path = Path(path)
    try:
        with path.open() as fh:
            params = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (run from the project root)") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return params


def section(params: Mapping[str, Any], key: str, where: str = "params.yaml") -> Any:
    """Return `params[key]` (dotted keys allowed), with an error naming the missing key."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"{where}: missing key '{key}'")
        node = node[part]
    return node


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_type, *_rest) = typing.get_args(annotation)
        return tuple(_coerce(v, item_type, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(annotation):
            return None
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _coerce(value, inner[0], where)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_mapping(cls: type, mapping: Any, where: str):
    """Build dataclass `cls` from a mapping, requiring exactly its fields."""
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {mapping!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(mapping) - set(names))
    missing = [n for n in names if n not in mapping]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected {names}")
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}")
    values = {n: _coerce(mapping[n], hints[n], f"{where}.{n}") for n in names}
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(where)
    return obj


@dataclass(frozen=True)
class TrainConfig:
    """Training-loop settings (SPEC §3)."""

    epochs: int
    stopping_step: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    device: str
    threads: int
    checkpoint_every: int  # epochs between two saves of the resumable state

    def validate(self, where: str) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.stopping_step < 0 or self.checkpoint_every < 1:
            raise ConfigError(f"{where}: epochs, batch_size and checkpoint_every must be >= 1, stopping_step >= 0")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"{where}.device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass(frozen=True)
class EvalConfig:
    """Full-sort evaluation settings (SPEC §4)."""

    topk: tuple[int, ...]
    valid_metric: str
    batch_size: int

    def validate(self, where: str) -> None:
        if not self.topk or min(self.topk) < 1:
            raise ConfigError(f"{where}.topk: expected a non-empty list of positive integers")
        name, _, k = self.valid_metric.partition("@")
        if name not in ("recall", "ndcg", "precision", "map") or not k.isdigit() or int(k) not in self.topk:
            raise ConfigError(
                f"{where}.valid_metric: expected <recall|ndcg|precision|map>@K with K in topk, "
                f"got {self.valid_metric!r}"
            )


DIVERGENCES = ("js", "upstream")


@dataclass(frozen=True)
class DVIBConfig:
    """Settings of the DVIB mechanism shared by every base model (SPEC §6)."""

    noise_level: float
    consistency_weight: float
    vib_weight: float
    divergence: str
    noise_hidden: tuple[int, ...]
    sigma_min: float

    def validate(self, where: str) -> None:
        if self.divergence not in DIVERGENCES:
            raise ConfigError(f"{where}.divergence: expected one of {DIVERGENCES}, got {self.divergence!r}")
        if not 0.0 <= self.consistency_weight <= 1.0:
            raise ConfigError(f"{where}.consistency_weight: expected a value in [0, 1]")
        if self.noise_level < 0 or self.sigma_min <= 0:
            raise ConfigError(f"{where}: noise_level must be >= 0 and sigma_min > 0")


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the embedded synthetic MMRec-format dataset generator."""

    n_users: int
    n_items: int
    latent_dim: int
    min_interactions: int
    mean_interactions: float
    image_dim: int
    text_dim: int
    preference_temperature: float
    modality_noise: float
    redundant_fraction: float
    corrupted_fraction: float


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one training run needs: the model name, the data, and its settings."""

    model: str
    dataset: str
    seed: int
    train: TrainConfig
    eval: EvalConfig
    dvib: DVIBConfig
    model_params: dict

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ExperimentConfig":
        return cls(
            model=d["model"],
            dataset=d["dataset"],
            seed=d["seed"],
            train=from_mapping(TrainConfig, d["train"], "train"),
            eval=from_mapping(EvalConfig, d["eval"], "eval"),
            dvib=from_mapping(DVIBConfig, d["dvib"], "dvib"),
            model_params=dict(d["model_params"]),
        )


def experiment_config(params: Mapping[str, Any], model: str, dataset: str) -> ExperimentConfig:
    """Assemble the config of one training run of `model` on `dataset` from params.yaml."""
    from pipeline.models import parse_model_name  # local: the registry imports torch

    base, _variant = parse_model_name(model)
    seed = section(params, "seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"params.yaml: seed: expected an integer, got {seed!r}")
    model_params = section(params, f"models.{base}")
    if not isinstance(model_params, Mapping):
        raise ConfigError(f"params.yaml: models.{base}: expected a mapping")
    return ExperimentConfig(
        model=model,
        dataset=dataset,
        seed=seed,
        train=from_mapping(TrainConfig, section(params, "train"), "train"),
        eval=from_mapping(EvalConfig, section(params, "eval"), "eval"),
        dvib=from_mapping(DVIBConfig, section(params, "dvib"), "dvib"),
        model_params=dict(model_params),
    )
