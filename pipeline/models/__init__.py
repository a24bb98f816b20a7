"""Model registry: each base model name (`pipeline.model_names.BASE_NAMES`) mapped to its class,
and `build_model`, which builds the base model or DVIB around it.

Adding a base model means one new module, its name in `BASE_NAMES` and one line in `BASE_MODELS`;
DVIB applies to it without another file.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping

from torch import nn

from pipeline.config import ConfigError, ExperimentConfig
from pipeline.dataset import InteractionData
from pipeline.graphs import Graphs
from pipeline.model_names import BASE_NAMES, parse_model_name
from pipeline.models.base import Recommender
from pipeline.models.bm3 import BM3
from pipeline.models.dvib import DVIB
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
if tuple(BASE_MODELS) != BASE_NAMES:
    raise ImportError(f"pipeline.models: BASE_MODELS {list(BASE_MODELS)} must list BASE_NAMES {list(BASE_NAMES)}, in order")


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
