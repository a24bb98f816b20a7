"""The MMRec loader's validation: every bad input fails with an error naming the file and the field or row."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from pipeline.dataset import DatasetError, load_mmrec


@pytest.fixture
def folder(tiny_dir, tmp_path) -> Path:
    """A private, writable copy of the tiny dataset (named 'tiny', so its file is tiny.inter)."""
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_dir, copy)
    return copy


def _inter(folder: Path) -> Path:
    return folder / "tiny.inter"


def _lines(folder: Path) -> list[str]:
    return _inter(folder).read_text().splitlines()


def _write_lines(folder: Path, lines: list[str]) -> None:
    _inter(folder).write_text("\n".join(lines) + "\n")


def _set_field(folder: Path, line: int, column: int, value: str) -> None:
    """Replace one field; `line` counts from 1 with the header as line 1."""
    lines = _lines(folder)
    fields = lines[line - 1].split("\t")
    fields[column] = value
    lines[line - 1] = "\t".join(fields)
    _write_lines(folder, lines)


def _map_rows(folder: Path, fn: Callable[[list[str]], list[str]]) -> None:
    header, *rows = _lines(folder)
    _write_lines(folder, [header, *("\t".join(fn(r.split("\t"))) for r in rows)])


def _features(folder: Path, name: str = "image") -> np.ndarray:
    return np.load(folder / f"{name}_feat.npy")


def _save(folder: Path, array, name: str = "image", **kwargs) -> None:
    np.save(folder / f"{name}_feat.npy", array, **kwargs)


USER, ITEM, RATING, TIMESTAMP, LABEL = range(5)


def _relabel(label_from: str, label_to: str):
    return lambda f: _map_rows(f, lambda r: r[:LABEL] + [label_to if r[LABEL] == label_from else r[LABEL]])


def _drop_column(index: int):
    def mutate(folder):
        _write_lines(folder, ["\t".join(r.split("\t")[:index] + r.split("\t")[index + 1 :]) for r in _lines(folder)])

    return mutate


def _truncate_npy(folder):
    data = (folder / "image_feat.npy").read_bytes()
    (folder / "image_feat.npy").write_bytes(data[: len(data) - 100])


def _nan_at(value):
    def mutate(folder):
        feats = _features(folder)
        feats[3, 5] = value
        _save(folder, feats)

    return mutate


def _add_field(folder):
    lines = _lines(folder)
    lines[2] += "\textra"
    _write_lines(folder, lines)


def _drop_last_field(folder):
    lines = _lines(folder)
    lines[3] = "\t".join(lines[3].split("\t")[:-1])
    _write_lines(folder, lines)


def _write_npz(folder):
    feats = _features(folder)
    with open(folder / "image_feat.npy", "wb") as fh:  # np.savez would add the .npz suffix to a path
        np.savez(fh, a=feats)


def _huge_float(folder):
    feats = _features(folder).astype(np.float64)
    feats[2, 1] = 1e300
    _save(folder, feats)


# (case id, mutation of a good folder, substrings the error must contain)
BAD_INPUTS = [
    ("missing_inter", lambda f: _inter(f).unlink(), ["tiny.inter", "interaction file not found"]),
    ("misnamed_inter", lambda f: _inter(f).rename(f / "other.inter"), ["tiny.inter", "found ['other.inter']"]),
    ("empty_inter", lambda f: _inter(f).write_text(""), ["tiny.inter", "file is empty"]),
    ("not_utf8", lambda f: _inter(f).write_bytes(b"userID\titemID\n\xff\xfe\x00\x81"), ["tiny.inter", "not a UTF-8"]),
    ("missing_column", _drop_column(LABEL), ["tiny.inter", "missing column(s) ['x_label']"]),
    ("misnamed_column", lambda f: _inter(f).write_text(_inter(f).read_text().replace("userID", "userid", 1)),
     ["tiny.inter", "'userid' should be 'userID'"]),
    ("no_header", lambda f: _write_lines(f, _lines(f)[1:]), ["tiny.inter", "no header line"]),
    ("comma_separated", lambda f: _inter(f).write_text(_inter(f).read_text().replace("\t", ",")),
     ["tiny.inter", "not tab-separated"]),
    ("space_separated", lambda f: _inter(f).write_text(_inter(f).read_text().replace("\t", " ")),
     ["tiny.inter", "not tab-separated"]),
    ("extra_field_in_row", _add_field, ["tiny.inter", "line 3 has 6 tab-separated fields, expected 5"]),
    ("missing_field_in_row", _drop_last_field, ["tiny.inter", "line 4, column x_label", "got ''"]),
    ("non_integer_id", lambda f: _set_field(f, 5, ITEM, "abc"), ["tiny.inter", "line 5, column itemID", "'abc'"]),
    ("fractional_id", lambda f: _set_field(f, 2, USER, "1.5"), ["tiny.inter", "line 2, column userID", "'1.5'"]),
    ("negative_id", lambda f: _set_field(f, 3, ITEM, "-3"), ["tiny.inter", "line 3, column itemID", "'-3'"]),
    ("huge_id", lambda f: _set_field(f, 4, USER, "99999999999"), ["tiny.inter", "line 4, column userID", "too large"]),
    ("gap_in_ids", lambda f: _set_field(f, 2, USER, "63"),
     ["tiny.inter", "column userID", "contiguous", "line 2", "e.g. [60, 61, 62]"]),
    ("label_outside_0_1_2", lambda f: _set_field(f, 6, LABEL, "3"), ["tiny.inter", "line 6, column x_label", "got 3"]),
    ("empty_train", _relabel("0", "1"), ["tiny.inter", "train split is empty"]),
    ("empty_test", _relabel("2", "1"), ["tiny.inter", "test split (x_label 2) is empty"]),
    ("missing_features", lambda f: (f / "text_feat.npy").unlink(), ["text_feat.npy", "feature file not found"]),
    ("ids_beyond_feature_rows", lambda f: _save(f, _features(f)[:-2]), ["image_feat.npy", "no feature row"]),
    ("extra_feature_rows", lambda f: _save(f, np.vstack([_features(f), _features(f)[:3]])),
     ["image_feat.npy", "expected one per item"]),
    ("features_1d", lambda f: _save(f, _features(f)[:, 0]), ["image_feat.npy", "2-D", "got shape ("]),
    ("features_3d", lambda f: _save(f, _features(f)[:, :, None]), ["image_feat.npy", "2-D", ", 48, 1)"]),
    ("features_zero_dim", lambda f: _save(f, _features(f)[:, :0]), ["image_feat.npy", "feature dimension is 0"]),
    ("nan_feature", _nan_at(np.nan), ["image_feat.npy", "row 3 (item 3), column 5 is nan"]),
    ("inf_feature", _nan_at(np.inf), ["image_feat.npy", "row 3 (item 3), column 5 is inf"]),
    ("float64_out_of_float32_range", _huge_float, ["image_feat.npy", "row 2 (item 2), column 1", "out of range"]),
    ("truncated_npy", _truncate_npy, ["image_feat.npy", "truncated"]),
    ("empty_npy", lambda f: (f / "image_feat.npy").write_bytes(b""), ["image_feat.npy", "file is empty"]),
    ("text_not_npy", lambda f: (f / "image_feat.npy").write_text("0.1,0.2\n"), ["image_feat.npy", "not a .npy file"]),
    ("npz_not_npy", _write_npz,
     ["image_feat.npy", "zip or .npz archive"]),
    ("object_array", lambda f: _save(f, _features(f).astype(object), allow_pickle=True),
     ["image_feat.npy", "Python objects"]),
    ("string_array", lambda f: _save(f, _features(f).astype(str)), ["image_feat.npy", "expected a float array"]),
]


@pytest.mark.parametrize("mutate, expected", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_rejected_with_a_clear_message(folder, mutate, expected):
    mutate(folder)
    with pytest.raises(DatasetError) as info:
        load_mmrec(folder)
    message = str(info.value)
    assert "Traceback" not in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(DatasetError, match="nope: dataset folder not found"):
        load_mmrec(tmp_path / "nope")


def test_the_bad_inputs_fail_at_least_twenty_different_checks(tiny_dir, tmp_path):
    """No two bad inputs of the table are rejected with the same message (folder aside)."""
    messages: dict[str, list[str]] = {}
    for name, mutate, _expected in BAD_INPUTS:
        copy = tmp_path / name / "tiny"
        shutil.copytree(tiny_dir, copy)
        mutate(copy)
        with pytest.raises(DatasetError) as info:
            load_mmrec(copy)
        messages.setdefault(str(info.value).replace(str(copy), "<folder>"), []).append(name)
    repeated = [names for names in messages.values() if len(names) > 1]
    assert not repeated, f"bad inputs rejected with the same message: {repeated}"
    assert len(messages) >= 20


# --- valid variations -----------------------------------------------------------------------------


def _same_data(a, b) -> None:
    assert (a.n_users, a.n_items) == (b.n_users, b.n_items)
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(a, split).users, getattr(b, split).users)
        np.testing.assert_array_equal(getattr(a, split).items, getattr(b, split).items)


def test_float64_and_integer_features_are_cast_to_float32(folder, tiny_data):
    _save(folder, _features(folder).astype(np.float64))
    _save(folder, np.rint(_features(folder, "text") * 100).astype(np.int32), name="text")
    data = load_mmrec(folder)
    assert data.image_features.dtype == np.float32 and data.text_features.dtype == np.float32
    np.testing.assert_array_equal(data.image_features, tiny_data.image_features)
    np.testing.assert_array_equal(data.text_features, np.rint(tiny_data.text_features * 100))


def test_extra_and_reordered_columns_are_ignored(folder, tiny_data):
    header, *rows = _lines(folder)
    order = [4, 1, 3, 0, 2]
    reorder = lambda line: "\t".join([line.split("\t")[i] for i in order] + ["note"])  # noqa: E731
    _write_lines(folder, [reorder(header).replace("\tnote", "\tcomment"), *map(reorder, rows)])
    _same_data(load_mmrec(folder), tiny_data)


def test_crlf_line_ends_and_byte_order_mark_are_accepted(folder, tiny_data):
    text = _inter(folder).read_text()
    _inter(folder).write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    data = load_mmrec(folder)
    _same_data(data, tiny_data)
    # The last column (x_label) must not keep a '\r': every label parsed as 0/1/2 is proof.
    assert len(data.train) + len(data.valid) + len(data.test) == len(text.splitlines()) - 1


def test_user_without_train_rows_is_dropped_and_counted(folder, tiny_data, caplog):
    last = tiny_data.n_users - 1
    _map_rows(folder, lambda r: r[:LABEL] + ["2" if r[USER] == str(last) else r[LABEL]])
    with caplog.at_level(logging.INFO, logger="pipeline.dataset"):
        data = load_mmrec(folder)
    assert data.n_users == tiny_data.n_users  # ids still count the user
    assert last not in data.test.users and last not in data.train.users
    n_rows = sum(split.users.tolist().count(last) for split in (tiny_data.train, tiny_data.valid, tiny_data.test))
    assert f"dropped {n_rows} cold-start test rows of 1 user(s) without train rows" in caplog.text


def test_duplicate_rows_are_kept_and_logged(folder, tiny_data, caplog):
    lines = _lines(folder)
    first_train = next(i for i, line in enumerate(lines[1:], start=1) if line.endswith("\t0"))
    _write_lines(folder, lines + [lines[first_train], lines[first_train]])
    with caplog.at_level(logging.INFO, logger="pipeline.dataset"):
        data = load_mmrec(folder)
    assert len(data.train) == len(tiny_data.train) + 2
    assert "2 duplicate rows kept" in caplog.text
