"""Model registry: a model name is a base model plus an optional DVIB suffix ('c' or 'a').

`VBPR` trains the base model, `VBPRc` and `VBPRa` wrap it in DVIB with constant or adaptive
noise. The reference's upper-case suffixes (`VBPRC`, `VBPRA`) are accepted. Adding a base model
means one new module and one line in `BASE_MODELS`; DVIB applies to it without another file.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping

from torch import nn

from pipeline.config import ConfigError, ExperimentConfig
from pipeline.dataset import InteractionData
from pipeline.dvib import DVIB, VARIANTS
from pipeline.graphs import Graphs
from pipeline.models.base import Recommender
from pipeline.models.bm3 import BM3
from pipeline.models.freedom import FREEDOM
from pipeline.models.grcn import GRCN
from pipeline.models.mmgcn import MMGCN
from pipeline.models.vbpr import VBPR

BASE_MODELS: dict[str, type[Recommender]] = {
    "VBPR": VBPR,
    "MMGCN": MMGCN,
    "GRCN": GRCN,
    "BM3": BM3,
    "FREEDOM": FREEDOM,
}


class UnknownModelError(ValueError):
    """A model name that is not a registered base with an optional c/a suffix."""


def model_names() -> list[str]:
    """All valid model names: each base, then its c and a variants."""
    return [base + suffix for base in BASE_MODELS for suffix in ("", *VARIANTS)]


def parse_model_name(name: str) -> tuple[str, str | None]:
    """Split a model name into (base, variant) with variant in {None, 'c', 'a'}."""
    if name in BASE_MODELS:
        return name, None
    base, suffix = name[:-1], name[-1:]
    if base in BASE_MODELS and suffix.lower() in VARIANTS:
        return base, suffix.lower()
    raise UnknownModelError(f"unknown model {name!r}; valid names: {', '.join(model_names())}")


def check_model_params(model: str, model_params: Mapping[str, Any]) -> None:
    """Raise ConfigError unless `model_params` are exactly the keyword arguments of the model's constructor."""
    base, _variant = parse_model_name(model)
    expected = [
        p.name for p in inspect.signature(BASE_MODELS[base].__init__).parameters.values() if p.kind is p.KEYWORD_ONLY
    ]
    unknown = sorted(set(model_params) - set(expected))
    missing = [p for p in expected if p not in model_params]
    if unknown or missing:
        raise ConfigError(
            f"params.yaml: models.{base}: "
            + (f"unknown key(s) {unknown}; " if unknown else "")
            + (f"missing key(s) {missing}; " if missing else "")
            + f"expected {expected}"
        )


def build_model(cfg: ExperimentConfig, data: InteractionData, graphs: Graphs | None) -> nn.Module:
    """Instantiate the training objective for `cfg.model`: the base model, or DVIB around it."""
    base, variant = parse_model_name(cfg.model)
    check_model_params(cfg.model, cfg.model_params)
    if graphs is not None and (graphs.n_users, graphs.n_items) != (data.n_users, data.n_items):
        raise ValueError(
            f"graphs are for {graphs.n_users} users / {graphs.n_items} items but the dataset has "
            f"{data.n_users} / {data.n_items}: rebuild the graphs stage"
        )
    model = BASE_MODELS[base](data, graphs, **cfg.model_params)
    return DVIB(model, variant, cfg.dvib) if variant else model
