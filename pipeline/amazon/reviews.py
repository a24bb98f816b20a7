"""The interactions of a raw Amazon review file (2014 or 2018 format): who reviewed which item, when."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from pipeline.amazon.records import open_lines, parse_record
from pipeline.dataset import DatasetError

log = logging.getLogger(__name__)

# review field -> (.inter column, accepted Python types); both formats name them alike
REVIEW_FIELDS = {
    "reviewerID": ("user", (str,)),
    "asin": ("item", (str,)),
    "overall": ("rating", (int, float)),
    "unixReviewTime": ("timestamp", (int,)),
}


def read_reviews(path: Path) -> pd.DataFrame:
    """Columns user, item (raw ids), rating, timestamp of every review, in file order; other fields are ignored."""
    columns: dict[str, list] = {column: [] for column, _ in REVIEW_FIELDS.values()}
    for number, text in open_lines(path):
        if not text.strip():
            continue
        record = parse_record(path, number, text)
        for field, (column, types) in REVIEW_FIELDS.items():
            value = record.get(field)
            if value is None:
                raise DatasetError(
                    f"{path}: line {number}: review without {field!r}; every review needs {list(REVIEW_FIELDS)}"
                )
            if isinstance(value, bool) or not isinstance(value, types) or (isinstance(value, str) and not value):
                expected = " or ".join(t.__name__ for t in types)
                raise DatasetError(f"{path}: line {number}: field {field!r} is {value!r}; expected a non-empty {expected}")
            columns[column].append(value)
    frame = pd.DataFrame(columns)
    if frame.empty:
        raise DatasetError(f"{path}: no reviews in the file")
    frame["rating"] = frame["rating"].astype("float64")
    frame["timestamp"] = frame["timestamp"].astype("int64")
    log.info("%s: %d reviews by %d users of %d items", path, len(frame), frame["user"].nunique(), frame["item"].nunique())
    return frame
