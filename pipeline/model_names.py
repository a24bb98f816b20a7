"""Model names: a base model plus an optional DVIB suffix, `c` (constant noise) or `a` (adaptive).

`VBPR` trains the base model, `VBPRc` and `VBPRa` wrap it in DVIB. The reference's upper-case
suffixes (`VBPRC`, `VBPRA`) are accepted. Torch-free, so the configuration can parse names without
loading the models; `pipeline.models` maps each base name to its class.
"""
from __future__ import annotations

from pipeline.errors import UserError

BASE_NAMES = ("VBPR", "MMGCN", "GRCN", "BM3", "FREEDOM")
VARIANTS = ("c", "a")


class UnknownModelError(UserError, ValueError):
    """A model name that is not a registered base with an optional c/a suffix."""


def model_names() -> list[str]:
    """All valid model names: each base, then its c and a variants."""
    return [base + suffix for base in BASE_NAMES for suffix in ("", *VARIANTS)]


def parse_model_name(name: str) -> tuple[str, str | None]:
    """Split a model name into (base, variant) with variant in {None, 'c', 'a'}."""
    if name in BASE_NAMES:
        return name, None
    base, suffix = name[:-1], name[-1:]
    if base in BASE_NAMES and suffix.lower() in VARIANTS:
        return base, suffix.lower()
    raise UnknownModelError(f"unknown model {name!r}; valid names: {', '.join(model_names())}")
