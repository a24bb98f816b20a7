"""Build an MMRec-format dataset folder from raw Amazon files, validate it, and move it in atomically.

The folder holds `<name>.inter`, `image_feat.npy`, `text_feat.npy`, `u_id_mapping.csv`,
`i_id_mapping.csv` (tab-separated, as MMRec writes them) and `source.json`, which records the raw
files' sha256 and the build settings so that an unchanged dataset is not built again.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from pipeline.amazon.images import image_features
from pipeline.amazon.interactions import drop_duplicate_reviews, k_core, reindex, split_by_time
from pipeline.amazon.metadata import item_sentences
from pipeline.amazon.reviews import read_reviews
from pipeline.amazon.spec import AmazonSource
from pipeline.atomic import staged_directory
from pipeline.config import ConfigError
from pipeline.dataset import DatasetError, load_mmrec
from pipeline.sources.checksums import sha256_of
from pipeline.sources.registry import resolve_source
from pipeline.text_encoder import encode_sentences, load_text_model

log = logging.getLogger(__name__)

INTER_COLUMNS = ["userID", "itemID", "rating", "timestamp", "x_label"]
PROVENANCE = "source.json"


def provenance(source: AmazonSource) -> dict[str, Any]:
    """What a build depends on: the raw files' sha256 and every build setting except the device."""
    settings = {k: v for k, v in asdict(source).items() if k not in ("name", "device", "reviews", "meta", "images")}
    raw = {key: {"path": str(getattr(source, key)), "sha256": sha256_of(getattr(source, key))}
           for key in ("reviews", "meta", "images")}
    return {"raw": raw, "settings": settings}


def build_amazon_dataset(name: str, spec: Mapping[str, Any], root: str | Path, text_model=None) -> Path:
    """Make `root/<name>` the MMRec dataset built from the raw files of its `amazon` registry entry; returns it.

    `text_model` is a loaded SentenceTransformer to reuse; by default all-MiniLM-L6-v2 is loaded.
    """
    source = resolve_source(name, spec)
    if not isinstance(source, AmazonSource):
        raise ConfigError(f"params.yaml: datasets.{name}: expected source amazon, got {source.kind!r}")
    for key in ("reviews", "meta", "images"):
        if not getattr(source, key).is_file():
            raise DatasetError(f"datasets.{name}.{key}: file {getattr(source, key)} not found")
    target = Path(root) / name
    wanted = provenance(source)
    if _is_current(target, wanted):
        log.info("%s: %s was built from the same raw files and settings: kept", name, target)
        return target
    started = time.perf_counter()
    frame = drop_duplicate_reviews(read_reviews(source.reviews))
    frame, user_map, item_map = reindex(k_core(frame, source.k_core, source.reviews))
    inter = split_by_time(frame, source.split_seed)[INTER_COLUMNS]
    asins = item_map["asin"].tolist()
    sentences = item_sentences(source.meta, asins)
    images = image_features(source.images, asins)
    log.info("%s: interactions, metadata and images read in %.1f s", name, time.perf_counter() - started)
    encoding = time.perf_counter()
    model = text_model if text_model is not None else load_text_model(source.device)
    texts = encode_sentences(model, sentences, source.text_batch_size)
    log.info("%s: %d item texts encoded in %.1f s", name, len(sentences), time.perf_counter() - encoding)
    with staged_directory(target) as staged:
        write_dataset(staged, inter, user_map, item_map, images, texts)
        (staged / PROVENANCE).write_text(json.dumps(wanted, indent=2) + "\n")
        try:
            load_mmrec(staged)
        except DatasetError as exc:
            raise DatasetError(f"{name}: the dataset built from {source.describe()} failed validation: {exc}") from None
    log.info(
        "%s: %d users, %d items, %d interactions built in %.1f s, now in %s",
        name, len(user_map), len(item_map), len(inter), time.perf_counter() - started, target,
    )
    return target


def write_dataset(folder: Path, inter: pd.DataFrame, user_map: pd.DataFrame, item_map: pd.DataFrame,
                  images: np.ndarray, texts: np.ndarray) -> None:
    """Write the MMRec files of one dataset into `folder` (named after the dataset)."""
    inter.to_csv(folder / f"{folder.name}.inter", sep="\t", index=False)
    user_map.to_csv(folder / "u_id_mapping.csv", sep="\t", index=False)
    item_map.to_csv(folder / "i_id_mapping.csv", sep="\t", index=False)
    np.save(folder / "image_feat.npy", images)
    np.save(folder / "text_feat.npy", texts)


def _is_current(target: Path, wanted: Mapping[str, Any]) -> bool:
    recorded = target / PROVENANCE
    if not recorded.is_file():
        return False
    try:
        if json.loads(recorded.read_text()) != wanted:
            return False
        load_mmrec(target)
    except (json.JSONDecodeError, DatasetError) as exc:
        log.warning("%s: the earlier build is not usable (%s); building again", target, exc)
        return False
    return True
