"""Image features from the public binary file: records of a 10-byte ASIN and 4,096 little-endian float32."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.dataset import DatasetError

log = logging.getLogger(__name__)

ASIN_BYTES = 10
IMAGE_DIM = 4096
RECORD = np.dtype([("asin", f"S{ASIN_BYTES}"), ("features", "<f4", (IMAGE_DIM,))])


def image_features(path: Path, asins: Sequence[str]) -> np.ndarray:
    """float32 [len(asins), 4096]: each item's image row; items without one get the mean of the rows found."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    size = path.stat().st_size
    whole, rest = divmod(size, RECORD.itemsize)
    if rest:
        raise DatasetError(
            f"{path}: truncated: record {whole + 1} has {rest} of its {RECORD.itemsize} bytes "
            f"(10-byte ASIN + {IMAGE_DIM} float32); the file holds {whole} whole records"
        )
    if whole == 0:
        raise DatasetError(f"{path}: file is empty; expected records of a 10-byte ASIN and {IMAGE_DIM} float32")
    records = np.memmap(path, dtype=RECORD, mode="r", shape=(whole,))
    row_of = {asin.encode("ascii"): i for i, asin in enumerate(asins)}
    file_rows = np.full(len(asins), -1, dtype=np.int64)
    for start in range(0, whole, 1 << 16):  # ASINs only: the features are read just for the items needed
        for offset, asin in enumerate(records["asin"][start:start + (1 << 16)]):
            row = row_of.get(asin)
            if row is not None:
                file_rows[row] = start + offset  # a repeated ASIN: the last record wins, as in MMRec
    have = file_rows >= 0
    if not have.any():
        raise DatasetError(f"{path}: holds no image of the {len(asins)} items: is it the file of another category?")
    found = np.asarray(records["features"][np.sort(file_rows[have])], dtype=np.float32)
    features = np.empty((len(asins), IMAGE_DIM), dtype=np.float32)
    features[np.flatnonzero(have)[np.argsort(file_rows[have])]] = found
    bad = ~np.isfinite(found).all(axis=1)
    if bad.any():
        record = int(np.sort(file_rows[have])[np.flatnonzero(bad)[0]]) + 1
        raise DatasetError(f"{path}: record {record} holds a non-finite value")
    features[~have] = found.astype(np.float64).mean(axis=0).astype(np.float32)
    log.info("%s: %d of %d items have an image; %d get the mean vector", path, int(have.sum()), len(asins), int((~have).sum()))
    return features
