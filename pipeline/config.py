"""Typed configuration: `params.yaml` sections become frozen dataclasses.

Config flows one way: params.yaml -> these objects -> the code. Every stage reads only the
sections it declares in dvc.yaml; a missing or unknown key is an error that names the section.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from pipeline.errors import UserError

from pipeline.model_names import parse_model_name

PARAMS_FILE = Path("params.yaml")


class ConfigError(UserError, ValueError):
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


def at_least(low: float) -> Any:
    """A dataclass field whose value (or every list element) must be >= `low`."""
    return field(metadata={"min": low})


def between(low: float, high: float) -> Any:
    """A dataclass field whose value (or every list element) must lie in [low, high]."""
    return field(metadata={"min": low, "max": high})


def one_of(*choices: str) -> Any:
    """A dataclass field whose value must be one of `choices`."""
    return field(metadata={"choices": choices})


def _check_range(value: Any, meta: Mapping[str, Any], where: str) -> None:
    values = value if isinstance(value, tuple) else (value,)
    low, high, choices = meta.get("min"), meta.get("max"), meta.get("choices")
    for v in values:
        if choices is not None and v not in choices:
            raise ConfigError(f"{where}: expected one of {list(choices)}, got {v!r}")
        if (low is not None and v < low) or (high is not None and v > high):
            bound = f">= {low:g}" if high is None else f"in [{low:g}, {high:g}]"
            raise ConfigError(f"{where}: expected a value {bound}, got {v!r}")


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
    for f in dataclasses.fields(cls):
        _check_range(values[f.name], f.metadata, f"{where}.{f.name}")
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(where)
    return obj


@dataclass(frozen=True)
class TrainConfig:
    """Training-loop settings (docs/method.md, "Training protocol")."""

    epochs: int = at_least(1)
    stopping_step: int = at_least(0)
    batch_size: int = at_least(1)
    learning_rate: float = at_least(0.0)
    weight_decay: float = at_least(0.0)
    device: str
    threads: int = at_least(0)
    checkpoint_every: int = at_least(1)  # epochs between two saves of the resumable state

    def validate(self, where: str) -> None:
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"{where}.device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass(frozen=True)
class EvalConfig:
    """Full-sort evaluation settings (docs/method.md, "Evaluation protocol")."""

    topk: tuple[int, ...] = at_least(1)
    valid_metric: str
    batch_size: int = at_least(1)

    def validate(self, where: str) -> None:
        if not self.topk:
            raise ConfigError(f"{where}.topk: expected a non-empty list of positive integers, got []")
        name, _, k = self.valid_metric.partition("@")
        if name not in ("recall", "ndcg", "precision", "map") or not k.isdigit() or int(k) not in self.topk:
            raise ConfigError(
                f"{where}.valid_metric: expected <recall|ndcg|precision|map>@K with K in topk, "
                f"got {self.valid_metric!r}"
            )


DIVERGENCES = ("js", "upstream")


@dataclass(frozen=True)
class DVIBConfig:
    """Settings of the DVIB mechanism shared by every base model (docs/method.md, "The method")."""

    noise_level: float = at_least(0.0)
    consistency_weight: float = between(0.0, 1.0)
    vib_weight: float = at_least(0.0)
    divergence: str = one_of(*DIVERGENCES)
    noise_hidden: tuple[int, ...] = at_least(1)
    sigma_min: float = at_least(1e-30)


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the embedded synthetic MMRec-format dataset generator."""

    n_users: int = at_least(2)
    n_items: int = at_least(2)
    latent_dim: int = at_least(1)
    min_interactions: int = at_least(3)
    mean_interactions: float = at_least(1.0)
    image_dim: int = at_least(1)
    text_dim: int = at_least(1)
    preference_temperature: float = at_least(1e-6)
    modality_noise: float = at_least(0.0)
    redundant_fraction: float = between(0.0, 1.0)
    corrupted_fraction: float = between(0.0, 1.0)


@dataclass(frozen=True)
class TableConfig:
    """What the full table covers: every dataset × base × variant ('' = plain base), once per seed."""

    datasets: tuple[str, ...]
    bases: tuple[str, ...]
    variants: tuple[str, ...]
    seeds: tuple[int, ...]

    def validate(self, where: str) -> None:
        for name in ("datasets", "bases", "variants", "seeds"):
            values = getattr(self, name)
            if not values:
                raise ConfigError(f"{where}.{name}: expected a non-empty list")
            if len(set(values)) != len(values):
                raise ConfigError(f"{where}.{name}: expected distinct values, got {list(values)}")

    def cells(self) -> list[tuple[str, str]]:
        """(dataset, model name) of every cell, in table order."""
        return [(d, b + v) for d in self.datasets for b in self.bases for v in self.variants]


def table_config(params: Mapping[str, Any]) -> TableConfig:
    """params.yaml `table`, typed and checked (variants may be written as null for the plain base)."""
    table = section(params, "table")
    if isinstance(table, Mapping) and isinstance(table.get("variants"), list):
        table = {**table, "variants": [v or "" for v in table["variants"]]}
    return from_mapping(TableConfig, table, "params.yaml: table")


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
        train=from_mapping(TrainConfig, section(params, "train"), "params.yaml: train"),
        eval=from_mapping(EvalConfig, section(params, "eval"), "params.yaml: eval"),
        dvib=from_mapping(DVIBConfig, section(params, "dvib"), "params.yaml: dvib"),
        model_params=dict(model_params),
    )
