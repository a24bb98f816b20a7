"""Reading and validating MMRec-format dataset folders (docs/method.md, "The task and the data").

A folder `<name>/` holds `<name>.inter` (TSV: userID itemID rating timestamp x_label),
`image_feat.npy` and `text_feat.npy`. Every check failure raises `DatasetError` naming the file,
the row or field and what was expected; nothing is silently repaired.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import UserError

log = logging.getLogger(__name__)

INTER_COLUMNS = ("userID", "itemID", "rating", "timestamp", "x_label")
REQUIRED_COLUMNS = ("userID", "itemID", "x_label")
MODALITIES = ("image", "text")  # the one modality list (and order) of the package
FEATURE_FILES = {m: f"{m}_feat.npy" for m in MODALITIES}
TRAIN, VALID, TEST = 0, 1, 2
MAX_ID = 2**31 - 1  # ids count from 0: a larger one would need that many users or feature rows


class DatasetError(UserError, ValueError):
    """A dataset file is missing or does not follow the MMRec format."""


@dataclass(frozen=True)
class Split:
    """The (user, item) pairs of one split, as int64 arrays of equal length."""

    users: np.ndarray
    items: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class InteractionData:
    """A validated MMRec dataset: id counts, the three splits and the item features."""

    name: str
    n_users: int
    n_items: int
    train: Split
    valid: Split
    test: Split
    text_features: np.ndarray  # float32 [n_items, d_text]
    image_features: np.ndarray  # float32 [n_items, d_image]

    def features(self) -> dict[str, np.ndarray]:
        """Return the modality features by name, in `MODALITIES` order."""
        return {m: getattr(self, f"{m}_features") for m in MODALITIES}


def inter_path(folder: Path) -> Path:
    """Path of the interaction file of an MMRec folder (`<folder name>.inter`)."""
    return folder / f"{folder.name}.inter"


def _first_bad_row(mask: np.ndarray) -> int:
    # File line number of the first flagged data row: line 1 is the header.
    return int(np.flatnonzero(mask)[0]) + 2


def _parser_error(path: Path, exc: Exception) -> DatasetError:
    # pandas words a ragged row as "Expected 5 fields in line 3, saw 6": restate it in our terms.
    match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
    if match:
        expected, line, seen = match.groups()
        return DatasetError(
            f"{path}: line {line} has {seen} tab-separated fields, expected {expected} (one per header column)"
        )
    return DatasetError(f"{path}: not a tab-separated text file: {exc}")


def _check_header(path: Path, header: list[str]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if not missing:
        return
    expected = "<TAB>".join(INTER_COLUMNS)
    if len(header) == 1 and any(sep in header[0] for sep in (",", ";", " ")):
        raise DatasetError(f"{path}: header {header[0]!r} is not tab-separated; expected the columns {expected}")
    # pandas renames repeated header fields '5' -> '5.1', hence the optional suffixes.
    if all(re.fullmatch(r"[-+]?\d+(\.\d*)?(\.\d+)?", c) for c in header):
        with path.open(encoding="utf-8-sig") as fh:
            first = fh.readline().rstrip("\r\n")
        raise DatasetError(
            f"{path}: no header line: line 1 {first!r} looks like data; the file must start with the header {expected}"
        )
    by_lower = {c.lower(): c for c in header}
    hints = [f"{by_lower[c.lower()]!r} should be {c!r}" for c in missing if c.lower() in by_lower]
    hint = f" ({'; '.join(hints)}: column names are case-sensitive)" if hints else ""
    raise DatasetError(f"{path}: missing column(s) {missing} in header {header}; expected {list(INTER_COLUMNS)}{hint}")


def read_interactions(path: Path) -> pd.DataFrame:
    """Read and type-check an `.inter` file; returns int64 columns userID, itemID, x_label.

    Extra columns are ignored; a UTF-8 byte-order mark and CRLF line ends are accepted.
    """
    if not path.is_file():
        others = sorted(p.name for p in path.parent.glob("*.inter")) if path.parent.is_dir() else []
        hint = f" (found {others}; the file must be named after its folder)" if others else ""
        raise DatasetError(f"{path}: interaction file not found{hint}")
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: file is empty; expected a header line {'<TAB>'.join(INTER_COLUMNS)}") from None
    except pd.errors.ParserError as exc:
        raise _parser_error(path, exc) from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    # strip() also removes a '\r' left by CRLF line ends, should the parser keep one.
    frame.columns = [c.strip() for c in frame.columns]
    _check_header(path, list(frame.columns))
    out = {}
    for column in REQUIRED_COLUMNS:
        text = frame[column].str.strip()
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=float)
        bad = np.isnan(values) | (values % 1 != 0)
        if bad.any():
            row = _first_bad_row(bad)
            raise DatasetError(
                f"{path}: line {row}, column {column}: expected a non-negative integer, "
                f"got {text.iloc[row - 2]!r}"
            )
        if (values < 0).any():
            row = _first_bad_row(values < 0)
            raise DatasetError(
                f"{path}: line {row}, column {column}: expected a non-negative integer, got {text.iloc[row - 2]!r}"
            )
        if (values > MAX_ID).any():
            row = _first_bad_row(values > MAX_ID)
            raise DatasetError(
                f"{path}: line {row}, column {column}: value {text.iloc[row - 2]!r} is too large "
                f"(ids count from 0; at most {MAX_ID})"
            )
        out[column] = values.astype(np.int64)
    labels = out["x_label"]
    bad_label = ~np.isin(labels, (TRAIN, VALID, TEST))
    if bad_label.any():
        row = _first_bad_row(bad_label)
        raise DatasetError(
            f"{path}: line {row}, column x_label: expected 0 (train), 1 (valid) or 2 (test), got {labels[row - 2]}"
        )
    return pd.DataFrame(out)


def _missing_ids(distinct: np.ndarray, limit: int = 5) -> list[int]:
    # The first few ids absent from a sorted array of distinct non-negative ids, without
    # materialising 0..max (a corrupt huge id must not allocate max(id) entries).
    starts = np.concatenate([[0], distinct[:-1] + 1])
    missing: list[int] = []
    for start, stop in zip(starts, distinct):
        missing.extend(range(int(start), min(int(stop), int(start) + limit)))
        if len(missing) >= limit:
            break
    return missing[:limit]


def _check_contiguous(path: Path, ids: np.ndarray, column: str) -> int:
    count = int(ids.max()) + 1 if len(ids) else 0
    distinct = np.unique(ids)
    if len(distinct) != count:
        row = _first_bad_row(ids == count - 1)
        raise DatasetError(
            f"{path}: column {column}: ids must be contiguous from 0 to max ({count - 1}, line {row}); "
            f"{count - len(distinct)} id(s) never appear, e.g. {_missing_ids(distinct)}. To fix the data, "
            f"re-index the {column} column to 0..{len(distinct) - 1} (e.g. in order of first appearance)"
        )
    return count


def _count_items(path: Path, items: np.ndarray) -> int:
    # MMRec's rule: n_items = max(itemID) + 1. Ids without any interaction are valid items (their
    # feature rows exist) that are never relevant: they appear in no split, and negatives are drawn
    # from train items only.
    n_items = int(items.max()) + 1
    distinct = np.unique(items)
    n_gaps = n_items - len(distinct)
    if n_gaps:
        log.info(
            "%s: %d of %d item ids have no interaction, e.g. %s: kept as items that are never relevant",
            path, n_gaps, n_items, _missing_ids(distinct),
        )
    return n_items


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """(shape, dtype, data offset) from a .npy header, read without loading the data; None if unknown version."""
    with path.open("rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
        except ValueError:
            fh.seek(0)
            head = fh.read(8)
            if not head:
                raise DatasetError(f"{path}: file is empty; expected a .npy array (numpy.save)") from None
            kind = "a zip or .npz archive" if head.startswith(b"PK") else f"it starts with {head!r}"
            raise DatasetError(f"{path}: not a .npy file ({kind}); expected one array written by numpy.save") from None
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            return None
        try:
            shape, _fortran, dtype = readers[version](fh)
        except ValueError as exc:
            raise DatasetError(f"{path}: corrupt .npy header ({exc})") from None
        return shape, dtype, fh.tell()


def read_features(path: Path, n_items: int) -> np.ndarray:
    """Load a `[n_items, dim]` feature matrix, checking shape, dtype and finiteness; returns float32."""
    if not path.is_file():
        raise DatasetError(f"{path}: feature file not found")
    header = _npy_header(path)
    if header is not None:
        shape, dtype, offset = header
        if dtype.hasobject:
            raise DatasetError(f"{path}: holds Python objects (dtype {dtype}); expected a numeric float array")
        if dtype.kind not in "fiu":
            raise DatasetError(f"{path}: expected a float array, got dtype {dtype}")
        if len(shape) != 2:
            raise DatasetError(f"{path}: expected a 2-D array [n_items, dim], got shape {shape}")
        expected_bytes = int(np.prod(shape)) * dtype.itemsize
        actual_bytes = path.stat().st_size - offset
        if actual_bytes < expected_bytes:
            raise DatasetError(
                f"{path}: truncated: shape {shape} of {dtype} needs {expected_bytes} bytes of data, "
                f"the file holds {actual_bytes} (an interrupted download?)"
            )
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DatasetError(f"{path}: not a readable numeric .npy array ({exc})") from None
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path}: not a valid .npy file, or truncated ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise DatasetError(f"{path}: expected a single .npy array, got {type(array).__name__}")
    if array.dtype.kind not in "fiu":
        raise DatasetError(f"{path}: expected a float array, got dtype {array.dtype}")
    if array.ndim != 2:
        raise DatasetError(f"{path}: expected a 2-D array [n_items, dim], got shape {array.shape}")
    if array.shape[0] < n_items:
        raise DatasetError(
            f"{path}: has {array.shape[0]} rows, but the .inter file has itemIDs up to {n_items - 1}: "
            f"items {array.shape[0]}..{n_items - 1} have no feature row (expected one row per item: {n_items})"
        )
    if array.shape[0] > n_items:
        raise DatasetError(
            f"{path}: has {array.shape[0]} rows, expected one per item: {n_items} (max itemID + 1 in the .inter file); "
            f"rows {n_items}..{array.shape[0] - 1} belong to no item id: remove them, or check that the file "
            f"belongs to this .inter file"
        )
    if array.shape[1] == 0:
        raise DatasetError(f"{path}: feature dimension is 0")
    _check_finite(path, array, "")
    with np.errstate(over="ignore"):  # reported just below, with the row and column
        converted = np.ascontiguousarray(array, dtype=np.float32)
    if converted.dtype != array.dtype:
        _check_finite(path, converted, f" after conversion from {array.dtype} to float32 (value out of range)")
    return converted


def _check_finite(path: Path, array: np.ndarray, context: str) -> None:
    finite = np.isfinite(array)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        col = int(np.flatnonzero(~finite[row])[0])
        raise DatasetError(
            f"{path}: row {row} (item {row}), column {col} is {array[row, col]}{context}; expected finite values"
        )


def load_mmrec(folder: str | Path, shown_as: str | Path | None = None) -> InteractionData:
    """Load and validate an MMRec-format dataset folder; cold-start valid/test rows are dropped.

    `shown_as`: the folder that errors name instead of `folder`, when `folder` is a staging copy
    of the user's own files.
    """
    folder = Path(folder)
    if shown_as is None:
        return _load_folder(folder)
    try:
        return _load_folder(folder)
    except DatasetError as exc:
        raise DatasetError(str(exc).replace(str(folder), str(shown_as))) from None


def _load_folder(folder: Path) -> InteractionData:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: dataset folder not found")
    path = inter_path(folder)
    frame = read_interactions(path)
    users, items, labels = (frame[c].to_numpy() for c in REQUIRED_COLUMNS)
    if not (labels == TRAIN).any():
        raise DatasetError(f"{path}: no rows with x_label 0: the train split is empty")
    n_users = _check_contiguous(path, users, "userID")
    n_items = _count_items(path, items)

    n_dup = int(frame.duplicated().sum())
    if n_dup:
        # Kept as in the reference: edge lists keep repeats, normalised adjacency collapses them.
        log.info("%s: %d duplicate rows kept (adjacency matrices collapse them to one edge)", path, n_dup)

    has_train = np.zeros(n_users, dtype=bool)
    has_train[users[labels == TRAIN]] = True
    splits = {}
    for label, split_name in ((TRAIN, "train"), (VALID, "valid"), (TEST, "test")):
        rows = labels == label
        if label != TRAIN:
            cold = rows & ~has_train[users]
            if cold.any():
                log.info(
                    "%s: dropped %d cold-start %s rows of %d user(s) without train rows",
                    path, int(cold.sum()), split_name, len(np.unique(users[cold])),
                )
            rows &= has_train[users]
        if not rows.any():
            raise DatasetError(f"{path}: the {split_name} split (x_label {label}) is empty after cold-start filtering")
        splits[split_name] = Split(users[rows].astype(np.int64), items[rows].astype(np.int64))

    features = {m: read_features(folder / f, n_items) for m, f in FEATURE_FILES.items()}
    data = InteractionData(
        name=folder.name,
        n_users=n_users,
        n_items=n_items,
        train=splits["train"],
        valid=splits["valid"],
        test=splits["test"],
        text_features=features["text"],
        image_features=features["image"],
    )
    log.info(
        "%s: %d users, %d items, %d/%d/%d train/valid/test rows, image %s, text %s",
        folder, n_users, n_items, len(data.train), len(data.valid), len(data.test),
        data.image_features.shape[1], data.text_features.shape[1],
    )
    return data


def write_mmrec(folder: str | Path, frame: pd.DataFrame, image: np.ndarray, text: np.ndarray) -> None:
    """Write an MMRec-format folder (`<name>.inter`, `image_feat.npy`, `text_feat.npy`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frame.loc[:, list(INTER_COLUMNS)].to_csv(inter_path(folder), sep="\t", index=False)
    np.save(folder / FEATURE_FILES["image"], np.asarray(image, dtype=np.float32))
    np.save(folder / FEATURE_FILES["text"], np.asarray(text, dtype=np.float32))
