"""Datasets built from raw Amazon files: MMRec's recipe on small raw files written here, in both formats."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.amazon.build import build_amazon_dataset
from pipeline.amazon.images import IMAGE_DIM, image_features
from pipeline.amazon.interactions import k_core, split_by_time, split_counts
from pipeline.amazon.metadata import item_sentence
from pipeline.amazon.reviews import read_reviews
from pipeline.config import ConfigError
from pipeline.dataset import DatasetError, load_mmrec
from pipeline.sources.registry import resolve_source
from pipeline.text_encoder import load_text_model

from conftest import copy_project

ROOT = Path(__file__).resolve().parents[1]
N_USERS, N_ITEMS, K = 24, 12, 5


# --- raw files, written the way the public ones are ---------------------------------------------------


def _raw_reviews(seed: int = 3) -> list[dict]:
    """Reviews of N_USERS users over N_ITEMS items (5 to 11 each, many equal times), plus rows the 5-core drops."""
    rng = np.random.default_rng(seed)
    reviews = []
    for u in range(N_USERS):
        items = rng.choice(N_ITEMS, size=int(rng.integers(5, 12)), replace=False)
        for i in items:
            day = int(rng.integers(0, 6))  # few distinct days: many ties within a user
            reviews.append({"reviewerID": f"U{u:03d}X", "asin": f"B{i:09d}", "overall": float(rng.integers(1, 6)),
                            "unixReviewTime": 1_400_000_000 + 86_400 * day})
    # Dropped by the k-core: a user with 3 reviews and an item with 2 reviewers.
    reviews += [{"reviewerID": "LIGHT", "asin": f"B{i:09d}", "overall": 5.0, "unixReviewTime": 1_300_000_000}
                for i in range(3)]
    reviews += [{"reviewerID": f"U{u:03d}X", "asin": "RARE000001", "overall": 4.0, "unixReviewTime": 1_500_000_000}
                for u in range(2)]
    # A repeated review (same user, item and time): dropped as in MMRec.
    reviews.append(dict(reviews[0]))
    return reviews


def _metadata_2014(asin: str, i: int) -> dict:
    record = {"asin": asin, "title": f"Stapler {i}", "price": 3.5, "imUrl": "http://x/y.jpg",
              "categories": [["Office Products", "Office Supplies", f"Kind {i % 3}"], ["Other"]],
              "description": f"A sturdy stapler.\nModel {i}."}
    if i % 4 != 1:
        record["brand"] = f"Acme{i % 2}"
    return record


def _write_lines(path: Path, lines: list[str]) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def _image_bytes(asins: list[str], seed: int = 5) -> bytes:
    rng = np.random.default_rng(seed)
    out = bytearray()
    for asin in asins:
        out += asin.encode("ascii") + rng.standard_normal(IMAGE_DIM).astype("<f4").tobytes()
    return bytes(out)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict:
    """Raw files of one small category: reviews in three encodings, 2014 metadata, an image binary."""
    folder = tmp_path_factory.mktemp("amazon_raw")
    reviews = _raw_reviews()
    asins = sorted({r["asin"] for r in reviews})
    files = {
        "reviews_2014_json": _write_lines(folder / "reviews_Office_5.json.gz", [json.dumps(r) for r in reviews]),
        "reviews_2014_literal": _write_lines(folder / "reviews_literal.json", [repr(r) for r in reviews]),
        "reviews_2018": _write_lines(folder / "Office_5.json", [
            json.dumps({"overall": r["overall"], "vote": "2", "verified": True, "reviewTime": "01 1, 2014",
                        "reviewerID": r["reviewerID"], "asin": r["asin"], "style": {"Color:": " Black"},
                        "reviewerName": "A. Person", "reviewText": "fine", "summary": "ok",
                        "unixReviewTime": r["unixReviewTime"]})
            for r in reviews
        ]),
        # 2014 metadata are Python literals; one item of the dataset (the last) has no record.
        "meta": _write_lines(folder / "meta_Office.json.gz",
                             [repr(_metadata_2014(a, i)) for i, a in enumerate(asins[:-2])]
                             + [repr({"asin": "OTHER00001", "title": "not reviewed"})]),
    }
    # Images: every dataset item but two, plus one item of no review; ASINs out of order.
    with_image = [a for a in asins if a not in (asins[0], asins[3])][::-1] + ["OTHER00002"]
    files["images"] = folder / "image_features_Office.b"
    files["images"].write_bytes(_image_bytes(with_image))
    files["image_asins"] = with_image
    files["reviews"] = reviews
    return files


def _spec(raw: dict, **overrides) -> dict:
    spec = {"source": "amazon", "reviews": str(raw["reviews_2014_json"]), "meta": str(raw["meta"]),
            "images": str(raw["images"]), "k_core": K, "split_seed": 7, "text_batch_size": 8, "device": "cpu"}
    return {**spec, **overrides}


@pytest.fixture(scope="session")
def text_model():
    """all-MiniLM-L6-v2, loaded once for every test that encodes text (the load takes seconds)."""
    return load_text_model("cpu")


@pytest.fixture(scope="module")
def built(raw, text_model, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("built") / "data" / "datasets"
    return build_amazon_dataset("office", _spec(raw), root, text_model=text_model)


def _no_leftovers(root: Path) -> None:
    assert not [p.name for p in root.parent.iterdir() if p.name.startswith(".staging")]


# --- interactions: formats, k-core, ids, split --------------------------------------------------------


def test_both_review_formats_and_encodings_read_the_same(raw):
    frames = [read_reviews(raw[key]) for key in ("reviews_2014_json", "reviews_2014_literal", "reviews_2018")]
    expected = pd.DataFrame({
        "user": [r["reviewerID"] for r in raw["reviews"]], "item": [r["asin"] for r in raw["reviews"]],
        "rating": [r["overall"] for r in raw["reviews"]], "timestamp": [r["unixReviewTime"] for r in raw["reviews"]],
    })
    for frame in frames:
        pd.testing.assert_frame_equal(frame, expected)


def _reference_core(pairs: list[tuple[str, str]], k: int) -> set[tuple[str, str]]:
    """The k-core by repeated one-at-a-time removal, a different order than the implementation's."""
    kept = list(pairs)
    while True:
        users, items = Counter(u for u, _ in kept), Counter(i for _, i in kept)
        weak = next(((u, i) for u, i in kept if users[u] < k or items[i] < k), None)
        if weak is None:
            return set(kept)
        u, i = weak
        kept = [p for p in kept if p[0] != u] if users[u] < k else [p for p in kept if p[1] != i]


def test_k_core_cascades_to_the_fixed_point():
    # B has 2 reviews -> dropped; then item X has 2 -> dropped; then A has 2 -> dropped.
    pairs = [("A", "X"), ("A", "Y"), ("A", "Z"), ("B", "X"), ("B", "Y"), ("C", "X")]
    pairs += [(u, i) for u in ("C", "D", "E") for i in ("Y", "Z", "W")]
    frame = pd.DataFrame({"user": [u for u, _ in pairs], "item": [i for _, i in pairs], "timestamp": 0})
    core = k_core(frame, 3, Path("r.json"))
    assert set(zip(core["user"], core["item"])) == _reference_core(pairs, 3)
    assert set(core["user"]) == {"C", "D", "E"} and set(core["item"]) == {"Y", "Z", "W"}
    assert (core["user"].value_counts() >= 3).all() and (core["item"].value_counts() >= 3).all()


def test_built_interactions_are_the_5_core_with_id_maps_in_order_of_first_appearance(built, raw):
    inter = pd.read_csv(built / "office.inter", sep="\t")
    users = pd.read_csv(built / "u_id_mapping.csv", sep="\t")
    items = pd.read_csv(built / "i_id_mapping.csv", sep="\t")
    assert list(inter.columns) == ["userID", "itemID", "rating", "timestamp", "x_label"]
    assert list(users.columns) == ["user_id", "userID"] and list(items.columns) == ["asin", "itemID"]
    assert users["userID"].tolist() == list(range(len(users))) and items["itemID"].tolist() == list(range(len(items)))
    unique = list(dict.fromkeys((r["reviewerID"], r["asin"], r["unixReviewTime"]) for r in raw["reviews"]))
    core = _reference_core([(u, i) for u, i, _ in unique], K)
    raw_pairs = set(zip(users["user_id"][inter["userID"]], items["asin"][inter["itemID"]]))
    assert raw_pairs == core and len(inter) == len(core)
    first_seen = [(u, i) for u, i, _ in unique if (u, i) in core]
    assert users["user_id"].tolist() == list(dict.fromkeys(u for u, _ in first_seen))
    assert items["asin"].tolist() == list(dict.fromkeys(i for _, i in first_seen))
    assert "LIGHT" not in set(users["user_id"]) and "RARE000001" not in set(items["asin"])
    data = load_mmrec(built)
    assert (data.n_users, data.n_items) == (len(users), len(items))


def test_split_counts_follow_mmrec_rule():
    assert [split_counts(n) for n in (3, 5, 9)] == [(1, 1, 1), (3, 1, 1), (7, 1, 1)]
    assert [split_counts(n) for n in (10, 14, 15, 20, 37)] == [(8, 1, 1), (12, 1, 1), (12, 1, 2), (16, 2, 2),
                                                             (30, 3, 4)]


def test_split_is_by_time_per_user_with_mmrec_proportions(built):
    inter = pd.read_csv(built / "office.inter", sep="\t")
    assert inter["userID"].is_monotonic_increasing
    for _, rows in inter.groupby("userID"):
        assert tuple(int((rows["x_label"] == s).sum()) for s in (0, 1, 2)) == split_counts(len(rows))
        assert rows["x_label"].is_monotonic_increasing and rows["timestamp"].is_monotonic_increasing


def test_split_tie_break_is_seeded():
    frame = pd.DataFrame({"userID": [0] * 12 + [1] * 6, "itemID": range(18), "timestamp": [5] * 12 + [1, 2, 2, 2, 3, 9]})
    first, again, other = (split_by_time(frame, s) for s in (1, 1, 2))
    pd.testing.assert_frame_equal(first, again)
    assert first["itemID"].tolist() != other["itemID"].tolist()  # 12 equal times: another seed, another order
    assert first[first.userID == 1]["itemID"].tolist()[-1] == 17  # the latest review is the test row


# --- features -------------------------------------------------------------------------------------------


def test_item_sentence_is_built_as_mmrec_did():
    record = _metadata_2014("B1", 2)
    assert item_sentence(record) == (
        "Stapler 2 Acme0 Office Products Office Supplies Kind 2 A sturdy stapler. Model 2."
    )
    no_brand = _metadata_2014("B1", 1)
    assert item_sentence(no_brand) == "Stapler 1   Office Products Office Supplies Kind 1 A sturdy stapler. Model 1."
    record_2018 = {"asin": "B2", "title": "Pen", "brand": "Bic", "category": ["Office", "Pens"],
                   "description": ["Blue ink.", "Pack of 3."]}
    assert item_sentence(record_2018) == "Pen Bic Office Pens Blue ink. Pack of 3."
    # title, brand and description missing: each becomes one space, between the two joining spaces
    assert item_sentence({"asin": "B3"}) == " " * 5


def test_text_features_equal_the_model_called_directly(built, raw, text_model):
    items = pd.read_csv(built / "i_id_mapping.csv", sep="\t")
    meta = {}
    for line in gzip.decompress(raw["meta"].read_bytes()).decode().splitlines():
        record = eval(line)  # noqa: S307 - the test's own file
        meta[record["asin"]] = record
    sentences = [item_sentence(meta.get(a, {})) for a in items["asin"]]
    assert sum(a not in meta for a in items["asin"]) == 1  # one item has no metadata: all-missing sentence
    direct = text_model.encode(sentences, batch_size=len(sentences), convert_to_numpy=True)
    text = np.load(built / "text_feat.npy")
    assert text.dtype == np.float32 and text.shape == (len(items), 384)
    np.testing.assert_allclose(text, direct, atol=1e-5, rtol=0)


def test_image_rows_come_from_the_binary_and_missing_items_get_the_mean(built, raw):
    items = pd.read_csv(built / "i_id_mapping.csv", sep="\t")["asin"].tolist()
    blob = raw["images"].read_bytes()
    size = 10 + 4 * IMAGE_DIM
    rows = {blob[k:k + 10].decode(): np.frombuffer(blob[k + 10:k + size], dtype="<f4") for k in range(0, len(blob), size)}
    image = np.load(built / "image_feat.npy")
    assert image.dtype == np.float32 and image.shape == (len(items), IMAGE_DIM)
    present = [a in rows for a in items]
    assert present.count(False) == 2
    for row, asin in enumerate(items):
        if asin in rows:
            np.testing.assert_array_equal(image[row], rows[asin])
    mean = np.mean([rows[a] for a in items if a in rows], axis=0, dtype=np.float64).astype(np.float32)
    for row in np.flatnonzero(~np.array(present)):
        np.testing.assert_array_equal(image[row], mean)  # the mean over the dataset's items, not the whole file


def test_two_builds_give_identical_bytes_and_a_current_build_is_kept(built, raw, text_model, tmp_path):
    other = build_amazon_dataset("office", _spec(raw), tmp_path / "data" / "datasets", text_model=text_model)
    names = sorted(p.name for p in built.iterdir())
    assert names == sorted(["office.inter", "image_feat.npy", "text_feat.npy", "u_id_mapping.csv",
                            "i_id_mapping.csv", "source.json"])
    for name in names:
        assert (other / name).read_bytes() == (built / name).read_bytes(), name
    before = (other / "text_feat.npy").stat().st_mtime_ns
    build_amazon_dataset("office", _spec(raw), other.parent, text_model=None)  # would load the model if it rebuilt
    assert (other / "text_feat.npy").stat().st_mtime_ns == before


# --- bad input: a clear error naming file and record; nothing partial; an earlier build is kept ----------------


def _corrupt(raw: dict, tmp_path: Path, case: str) -> tuple[dict, str]:
    lines = gzip.decompress(raw["reviews_2014_json"].read_bytes()).decode().splitlines()
    if case == "missing file":
        return _spec(raw, meta=str(tmp_path / "nowhere.json.gz")), r"datasets.office.meta: file .*nowhere.json.gz not found"
    if case == "unreadable line":
        lines[6] = '{"reviewerID": "U1", "asin": '
        path = _write_lines(tmp_path / "bad.json.gz", lines)
        return _spec(raw, reviews=str(path)), r"bad.json.gz: line 7: unreadable record"
    if case == "missing field":
        record = json.loads(lines[9])
        del record["unixReviewTime"]
        lines[9] = json.dumps(record)
        path = _write_lines(tmp_path / "bad.json", lines)
        return _spec(raw, reviews=str(path)), r"bad.json: line 10: review without 'unixReviewTime'"
    if case == "wrong metadata":
        path = _write_lines(tmp_path / "meta_Other.json", [repr({"asin": "ZZZ0000001", "title": "x"})])
        return _spec(raw, meta=str(path)), r"meta_Other.json: holds none of the \d+ items"
    if case == "truncated images":
        path = tmp_path / "cut.b"
        path.write_bytes(raw["images"].read_bytes()[:-100])
        record = len(raw["image_asins"])
        return _spec(raw, images=str(path)), rf"cut.b: truncated: record {record} has \d+ of its 16394 bytes"
    if case == "empty k-core":
        return _spec(raw, k_core=40), r"reviews_Office_5.json.gz: the 40-core is empty"
    if case == "cut gzip":
        path = tmp_path / "cut.json.gz"
        path.write_bytes(raw["reviews_2014_json"].read_bytes()[:200])
        return _spec(raw, reviews=str(path)), r"cut.json.gz: unreadable after line \d+"
    raise AssertionError(case)


CASES = ["missing file", "unreadable line", "missing field", "wrong metadata", "truncated images", "empty k-core",
         "cut gzip"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_named_and_leaves_nothing(raw, tmp_path, case):
    spec, expected = _corrupt(raw, tmp_path, case)
    root = tmp_path / "data" / "datasets"
    root.mkdir(parents=True)
    with pytest.raises(DatasetError, match=expected):
        build_amazon_dataset("office", spec, root, text_model=None)
    assert not (root / "office").exists()
    _no_leftovers(root)


def test_failed_rebuild_keeps_the_earlier_dataset(built, raw, tmp_path):
    root = tmp_path / "data" / "datasets"
    shutil.copytree(built, root / "office")
    spec, _ = _corrupt(raw, tmp_path, "truncated images")  # another image file: a rebuild is due, and fails
    with pytest.raises(DatasetError, match="truncated"):
        build_amazon_dataset("office", spec, root, text_model=None)
    for name in ("office.inter", "text_feat.npy", "image_feat.npy"):
        assert (root / "office" / name).read_bytes() == (built / name).read_bytes()
    _no_leftovers(root)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"k_core": 2}, r"datasets.office.k_core: expected an integer >= 3"),
        ({"device": "tpu"}, r"datasets.office.device: expected one of \['auto', 'cpu', 'cuda'\]"),
        ({"reviews": None}, r"datasets.office.reviews: expected the path of a file"),
        ({"mirror": "x"}, r"unknown key\(s\) \['mirror'\]"),
        ({"split_seed": True}, r"datasets.office.split_seed: expected an integer >= 0"),
    ],
)
def test_bad_registry_entries_are_config_errors(raw, overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        resolve_source("office", _spec(raw, **overrides))


def test_every_registry_key_is_required(raw):
    spec = _spec(raw)
    del spec["text_batch_size"]
    with pytest.raises(ConfigError, match=r"missing key\(s\) \['text_batch_size'\]"):
        resolve_source("office", spec)


def test_image_reader_rejects_a_file_of_another_category(tmp_path):
    path = tmp_path / "images.b"
    path.write_bytes(_image_bytes(["Q000000001", "Q000000002"]))
    with pytest.raises(DatasetError, match="holds no image of the 1 items"):
        image_features(path, ["B000000001"])


# --- the pipeline: a new registry entry of source amazon trains end to end ------------------------------------


def test_dvc_repro_trains_on_an_amazon_dataset(raw, tmp_path):
    work = tmp_path / "project"
    copy_project(work)  # params.yaml is replaced below
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"]["office"] = _spec(raw, reviews=str(raw["reviews_2018"]), device="auto")
    params["dataset"], params["model"] = "office", "VBPRc"
    params["table"]["datasets"] = ["office"]
    params["tune"]["grids"]["office"] = params["tune"]["grids"]["synthetic"]  # every table dataset needs grids
    params["train"].update(epochs=2, batch_size=256, threads=1, device="cpu")
    params["graphs"]["knn_k"] = 3
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(work), "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc_site"),
        "HOME": str(tmp_path / "home"), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=work, env=env, check=True)
    proc = subprocess.run(["dvc", "repro", "train"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((work / "metrics" / "train_full.json").read_text())
    assert metrics["model"] == "VBPRc" and 0.0 <= metrics["test"]["recall@20"] <= 1.0
    data = load_mmrec(work / "data" / "datasets" / "office")
    assert data.text_features.shape[1] == 384 and data.image_features.shape[1] == IMAGE_DIM
