"""Fetching datasets: the real download code against a mirror served on 127.0.0.1, never the internet."""
from __future__ import annotations

import http.server
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from functools import partial
from pathlib import Path

import pytest
import requests
import yaml
from gdown.exceptions import FileURLRetrievalError

from conftest import TINY
from pipeline.config import ConfigError
from pipeline.dataset import DatasetError, load_mmrec
from pipeline.sources import transfer
from pipeline.sources.checksums import ChecksumError, read_checksums, sha256_of
from pipeline.sources.fetch import FetchError, fetch_dataset
from pipeline.sources.registry import resolve_source
from pipeline.sources.transfer import DriveFile, select_drive_files
from pipeline.synthetic import write_synthetic

ROOT = Path(__file__).resolve().parents[1]
FOLDER_ID = "13cBy1EA_saTUuXxVllKgtfci2A09jyaG"
FILES = ("baby.inter", "image_feat.npy", "text_feat.npy")


@pytest.fixture(autouse=True)
def _offline_home(tmp_path, monkeypatch):
    """gdown keeps cookies and locks under ~/.cache: point HOME at a temporary folder; no proxies."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def _zip(archive: Path, folder: Path, arcroot: str) -> None:
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(folder.iterdir()):
            zf.write(file, f"{arcroot}/{file.name}" if arcroot else file.name)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    """A mirror folder: baby/ (a tiny real MMRec dataset), archives of it, and broken variants."""
    site = tmp_path_factory.mktemp("mirror")
    good = site / "baby"
    write_synthetic(good, TINY, seed=7)
    _zip(site / "baby.zip", good, "mmrec/baby")
    with tarfile.open(site / "baby.tar.gz", "w:gz") as tar:
        tar.add(good, arcname="baby")
    features_only = site / "features_only"
    features_only.mkdir()
    for name in ("image_feat.npy", "text_feat.npy"):
        shutil.copy(good / name, features_only / name)
    _zip(site / "no_inter.zip", features_only, "baby")
    with zipfile.ZipFile(site / "two_datasets.zip", "w") as zf:
        for root in ("a", "b"):
            for file in good.iterdir():
                zf.write(file, f"{root}/{file.name}")
    (site / "not_an_archive.zip").write_text("<html>quota exceeded</html>")
    bad = site / "bad" / "baby"
    shutil.copytree(good, bad)
    (bad / "baby.inter").write_text((good / "baby.inter").read_text().replace("\t0\n", "\t7\n", 1))
    return site


class _MirrorHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the mirror; /cut/<file> announces the full length but sends half of it, then hangs up."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path.startswith("/cut/"):
            body = (Path(self.directory) / self.path[len("/cut/"):]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(mirror):
    """Base URL of a threaded HTTP server on 127.0.0.1 serving the mirror."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_MirrorHandler, directory=str(mirror)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def refused_url() -> str:
    """A URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/baby/"


@pytest.fixture
def root(tmp_path) -> Path:
    """data/datasets of a scratch project; its checksums file is data/checksums.json."""
    folder = tmp_path / "data" / "datasets"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture(scope="module")
def tiny_sizes(mirror) -> dict:
    data = load_mmrec(mirror / "baby")
    interactions = len(data.train) + len(data.valid) + len(data.test)
    return {"users": data.n_users, "items": data.n_items, "interactions": interactions}


def _spec(tiny_sizes, **overrides) -> dict:
    return {"source": "gdrive", "folder": FOLDER_ID, "url": None, "path": None, "expect": tiny_sizes, **overrides}


def _checksums(root: Path) -> dict:
    return read_checksums(root.parent / "checksums.json")


def _write_checksums(root: Path, entries: dict) -> None:
    (root.parent / "checksums.json").write_text(json.dumps({"about": "test", "datasets": {"baby": entries}}))


def _digests(folder: Path) -> dict:
    return {f: sha256_of(folder / f) for f in FILES}


def _assert_no_leftovers(root: Path) -> None:
    assert not [p.name for p in root.parent.iterdir() if p.name.startswith(".staging")]


def _good_copy(root: Path, mirror: Path) -> dict:
    """An earlier verified copy in root/baby with its checksums recorded; returns the digests."""
    shutil.copytree(mirror / "baby", root / "baby")
    digests = _digests(root / "baby")
    _write_checksums(root, digests)
    return digests


# --- successful fetches ------------------------------------------------------------------------------


@pytest.mark.parametrize("location", ["/baby/", "/baby", "/baby.zip", "/baby.tar.gz"])
def test_mirror_download_verifies_validates_and_records_checksums(server, mirror, root, tiny_sizes, location, caplog):
    _write_checksums(root, {f: None for f in FILES})
    with caplog.at_level(logging.WARNING, logger="pipeline.sources"):
        target = fetch_dataset("baby", _spec(tiny_sizes, url=server + location), root)
    assert target == root / "baby"
    assert sorted(p.name for p in target.iterdir()) == sorted(FILES)
    load_mmrec(target)
    assert _checksums(root)["baby"] == _digests(mirror / "baby")
    assert "commit it" in caplog.text and "checksums.json" in caplog.text
    _assert_no_leftovers(root)


def test_verified_copy_is_not_downloaded_again(server, root, tiny_sizes, refused_url):
    fetch_dataset("baby", _spec(tiny_sizes, url=server + "/baby.zip"), root)
    before = (root / "baby" / "image_feat.npy").stat().st_mtime_ns
    # Nothing listens there: any download attempt would fail.
    fetch_dataset("baby", _spec(tiny_sizes, url=refused_url), root)
    assert (root / "baby" / "image_feat.npy").stat().st_mtime_ns == before


def test_file_urls_work_for_folders_and_archives(mirror, root, tiny_sizes):
    fetch_dataset("baby", _spec(tiny_sizes, url=(mirror / "baby.tar.gz").as_uri()), root)
    shutil.rmtree(root / "baby")
    fetch_dataset("baby", _spec(tiny_sizes, url=(mirror / "baby").as_uri()), root)
    assert _checksums(root)["baby"] == _digests(mirror / "baby")


def test_local_path_is_copied_and_later_changes_are_caught(mirror, root, tiny_sizes, tmp_path):
    own = tmp_path / "my_copy"
    shutil.copytree(mirror / "baby", own)
    fetch_dataset("baby", _spec(tiny_sizes, path=str(own)), root)
    assert _digests(root / "baby") == _digests(own)
    (own / "baby.inter").write_text((own / "baby.inter").read_text() + "0\t0\t5\t1\t0\n")
    with pytest.raises(ChecksumError, match="baby.inter of the copy from local folder .*differs from"):
        fetch_dataset("baby", _spec(tiny_sizes, path=str(own)), root)
    assert _digests(root / "baby") == _digests(mirror / "baby")  # the earlier copy is kept


def test_files_placed_by_hand_are_validated_and_recorded(mirror, root, tiny_sizes, refused_url):
    shutil.copytree(mirror / "baby", root / "baby")
    fetch_dataset("baby", _spec(tiny_sizes, url=refused_url), root)
    assert _checksums(root)["baby"] == _digests(mirror / "baby")


def test_a_corrupted_copy_is_fetched_again(server, mirror, root, tiny_sizes):
    _good_copy(root, mirror)
    (root / "baby" / "text_feat.npy").write_bytes(b"garbage")
    fetch_dataset("baby", _spec(tiny_sizes, url=server + "/baby/"), root)
    assert _digests(root / "baby") == _digests(mirror / "baby")


def test_bring_your_own_dataset_under_a_new_name(mirror, root, tmp_path):
    own = tmp_path / "anywhere"
    shutil.copytree(mirror / "baby", own)
    (own / "baby.inter").rename(own / "interactions.inter")  # the only .inter file: used as mydata.inter
    spec = {"source": "path", "path": str(own)}
    target = fetch_dataset("mydata", spec, root)
    assert load_mmrec(target).name == "mydata"
    assert set(_checksums(root)["mydata"]) == {"mydata.inter", "image_feat.npy", "text_feat.npy"}


# --- failures: clear message, nothing partial, earlier copy intact -------------------------------------


def test_http_404_names_dataset_source_and_manual_steps(server, root, tiny_sizes):
    url = server + "/missing.zip"
    with pytest.raises(FetchError) as info:
        fetch_dataset("baby", _spec(tiny_sizes, url=url), root)
    message = str(info.value)
    expected = (
        "dataset 'baby'", url, "HTTP 404", f"https://drive.google.com/drive/folders/{FOLDER_ID}",
        "data/datasets/baby/baby.inter", "datasets.baby.path=", "datasets.baby.url=", "dvc exp run -S dataset=baby",
    )
    for part in expected:
        assert part in message, part
    assert not (root / "baby").exists()
    _assert_no_leftovers(root)


def test_connection_refused_keeps_the_earlier_copy(mirror, root, tiny_sizes, refused_url):
    digests = _good_copy(root, mirror)
    (root / "baby" / "image_feat.npy").write_bytes(b"damaged")  # forces a new fetch
    with pytest.raises(FetchError, match="connection to 127.0.0.1 refused"):
        fetch_dataset("baby", _spec(tiny_sizes, url=refused_url), root)
    assert (root / "baby" / "image_feat.npy").read_bytes() == b"damaged"  # untouched, not half-replaced
    assert _digests(root / "baby")["text_feat.npy"] == digests["text_feat.npy"]
    _assert_no_leftovers(root)


def test_download_cut_off_half_way_leaves_nothing(server, mirror, root, tiny_sizes):
    with pytest.raises(FetchError, match="(?i)incomplete|connection broken"):
        fetch_dataset("baby", _spec(tiny_sizes, url=server + "/cut/baby.zip"), root)
    assert not (root / "baby").exists()
    _assert_no_leftovers(root)


def test_checksum_mismatch_discards_the_download(server, root, tiny_sizes):
    _write_checksums(root, {"baby.inter": None, "image_feat.npy": "0" * 64, "text_feat.npy": None})
    with pytest.raises(ChecksumError) as info:
        fetch_dataset("baby", _spec(tiny_sizes, url=server + "/baby/"), root)
    assert "image_feat.npy of the copy from mirror" in str(info.value)
    assert "0" * 64 in str(info.value) and "data/checksums.json" in str(info.value)
    assert not (root / "baby").exists()
    assert _checksums(root)["baby"]["baby.inter"] is None  # nothing recorded from a rejected copy
    _assert_no_leftovers(root)


@pytest.mark.parametrize(
    "archive, expected",
    [
        ("no_inter.zip", "unexpected layout: no baby.inter file"),
        ("two_datasets.zip", "unexpected layout: several interaction files"),
        ("not_an_archive.zip", "not_an_archive.zip is not a readable archive"),
    ],
)
def test_archive_with_unexpected_layout_is_rejected(server, mirror, root, tiny_sizes, archive, expected):
    digests = _good_copy(root, mirror)
    (root / "baby" / "baby.inter").write_text("damaged")
    with pytest.raises(DatasetError, match=expected):
        fetch_dataset("baby", _spec(tiny_sizes, url=f"{server}/{archive}"), root)
    assert (root / "baby" / "baby.inter").read_text() == "damaged"
    assert _digests(root / "baby")["image_feat.npy"] == digests["image_feat.npy"]
    _assert_no_leftovers(root)


def test_invalid_download_is_discarded(server, root, tiny_sizes):
    with pytest.raises(DatasetError, match=r"baby.inter: line \d+, column x_label.*\n.*discarded"):
        fetch_dataset("baby", _spec(tiny_sizes, url=server + "/bad/baby/"), root)
    assert not (root / "baby").exists()
    _assert_no_leftovers(root)


def test_sizes_other_than_the_published_ones_are_rejected(server, root, tiny_sizes):
    published = {"users": 19445, "items": 7050, "interactions": 160792}
    with pytest.raises(DatasetError, match="19,445 users / 7,050 items / 160,792 interactions"):
        fetch_dataset("baby", _spec(tiny_sizes, url=server + "/baby/", expect=published), root)
    assert not (root / "baby").exists()


def test_missing_local_path_is_named(root, tiny_sizes, tmp_path):
    with pytest.raises(DatasetError, match="datasets.baby.path: folder .*nowhere not found"):
        fetch_dataset("baby", _spec(tiny_sizes, path=str(tmp_path / "nowhere")), root)


def test_malformed_checksums_file_is_named(root, tiny_sizes, server):
    _write_checksums(root, {"baby.inter": "not-a-hash"})
    with pytest.raises(DatasetError, match=r"checksums.json: datasets.baby.baby.inter: expected null or a 64-digit"):
        fetch_dataset("baby", _spec(tiny_sizes, url=server + "/baby/"), root)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"source": "gdrive", "mirror": "x"}, "unknown key"),
        ({"source": "ftp"}, "expected one of synthetic, gdrive, url, path, amazon"),
        ({"source": "gdrive"}, "datasets.baby.folder"),
        ({"source": "url", "url": None}, "datasets.baby.url is not set"),
        ({"source": "gdrive", "folder": FOLDER_ID, "url": "ftp://host/baby.zip"}, "http://, https:// or file://"),
        ({"source": "gdrive", "folder": FOLDER_ID, "expect": {"users": 1}}, "datasets.baby.expect"),
        ({"source": "synthetic", "n_users": 10}, r"unknown key\(s\) \['n_users'\]"),
    ],
)
def test_bad_registry_entries_are_config_errors(spec, expected):
    with pytest.raises(ConfigError, match=expected):
        resolve_source("baby", spec)


def test_a_built_source_is_not_fetched(root):
    with pytest.raises(ConfigError, match="source 'synthetic' is built locally, not fetched"):
        fetch_dataset("synthetic", {"source": "synthetic"}, root)


def test_path_wins_over_url_which_wins_over_drive():
    assert resolve_source("baby", {"source": "gdrive", "folder": FOLDER_ID}).kind == "gdrive"
    assert resolve_source("baby", {"source": "gdrive", "folder": FOLDER_ID, "url": "https://h/b.zip"}).kind == "url"
    both = {"source": "gdrive", "folder": FOLDER_ID, "url": "https://h/b.zip", "path": "/data/baby"}
    assert resolve_source("baby", both).kind == "path"


# --- Google Drive: listing -> selection (pure) and the flow around the thin gdown calls ------------------

LISTING = [
    DriveFile("id-readme", "README.md"),
    DriveFile("id-b-inter", "baby/baby.inter"),
    DriveFile("id-b-image", "baby/image_feat.npy"),
    DriveFile("id-b-text", "baby/text_feat.npy"),
    DriveFile("id-b-map", "baby/i_id_mapping.csv"),
    DriveFile("id-s-inter", "sports/sports.inter"),
    DriveFile("id-s-image", "sports/image_feat.npy"),
    DriveFile("id-s-text", "sports/text_feat.npy"),
    DriveFile("id-c-zip", "clothing.zip"),
    DriveFile("id-e-inter", "Elec/elec.inter"),
    DriveFile("id-e-image", "Elec/image_feat.npy"),
    DriveFile("id-e-text", "Elec/text_feat.npy"),
]


def test_drive_selection_takes_only_the_datasets_own_files():
    chosen = select_drive_files(LISTING, "baby", FOLDER_ID)
    assert [f.id for f in chosen] == ["id-b-inter", "id-b-image", "id-b-text"]
    assert [f.id for f in select_drive_files(LISTING, "sports")] == ["id-s-inter", "id-s-image", "id-s-text"]
    assert [f.id for f in select_drive_files(LISTING, "clothing")] == ["id-c-zip"]
    assert [f.id for f in select_drive_files(LISTING, "elec")] == ["id-e-inter", "id-e-image", "id-e-text"]


def test_drive_selection_tolerates_case_and_nesting():
    listing = [DriveFile(f"id{i}", f"data/Baby/{name}") for i, name in enumerate(FILES)]
    assert [f.id for f in select_drive_files(listing, "baby")] == ["id0", "id1", "id2"]


def test_drive_selection_errors_name_what_is_there():
    with pytest.raises(DatasetError, match=r"no subfolder or archive named 'toys'; it holds \['Elec', 'README.md'"):
        select_drive_files(LISTING, "toys", FOLDER_ID)
    partial_listing = [f for f in LISTING if f.id != "id-b-text"]
    with pytest.raises(DatasetError, match=r"subfolder baby/ lacks \['text_feat.npy'\]"):
        select_drive_files(partial_listing, "baby", FOLDER_ID)


@pytest.fixture
def fake_drive(monkeypatch, server):
    """Drive stand-in: the listing is built here; each Drive id maps to a file of the local mirror."""
    urls = {"id-b-inter": "/baby/baby.inter", "id-b-image": "/baby/image_feat.npy", "id-b-text": "/baby/text_feat.npy",
            "id-c-zip": "/baby.zip"}
    monkeypatch.setattr(transfer, "list_drive_folder", lambda folder_id: LISTING)
    monkeypatch.setattr(
        transfer, "download_drive_file", lambda file, dest: transfer.download_url(server + urls[file.id], dest)
    )


def test_drive_flow_downloads_only_the_selected_files(fake_drive, mirror, root, tiny_sizes):
    fetch_dataset("baby", _spec(tiny_sizes), root)
    assert _digests(root / "baby") == _digests(mirror / "baby")


def test_drive_quota_error_gets_its_own_message(monkeypatch, root, tiny_sizes):
    def refuse(file, dest):
        raise FileURLRetrievalError(
            "Failed to retrieve file url:\n\n\tToo many users have viewed or downloaded this file recently. "
            "Please try accessing the file again later."
        )

    monkeypatch.setattr(transfer, "list_drive_folder", lambda folder_id: LISTING)
    monkeypatch.setattr(transfer, "download_drive_file", refuse)
    with pytest.raises(FetchError) as info:
        fetch_dataset("baby", _spec(tiny_sizes), root)
    message = str(info.value)
    assert "too many users have viewed or downloaded the file recently" in message
    assert f"https://drive.google.com/drive/folders/{FOLDER_ID}" in message and "datasets.baby.path=" in message
    assert not (root / "baby").exists()


def test_offline_drive_listing_fails_with_manual_instructions(monkeypatch, root, tiny_sizes):
    def offline(folder_id):
        request = requests.Request("GET", "https://drive.google.com/embeddedfolderview?id=x").prepare()
        raise requests.exceptions.ConnectionError("Failed to resolve 'drive.google.com'", request=request)

    monkeypatch.setattr(transfer, "list_drive_folder", offline)
    with pytest.raises(FetchError) as info:
        fetch_dataset("baby", _spec(tiny_sizes), root)
    message = str(info.value)
    assert "cannot resolve host name drive.google.com" in message
    assert "subfolder 'baby': baby.inter, image_feat.npy, text_feat.npy" in message


# --- the stage: exit 1 with the message, no traceback, other datasets untouched --------------------------


def test_data_stage_fails_cleanly_and_leaves_synthetic_intact(tmp_path, refused_url):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["dataset"] = "baby"
    params["table"]["datasets"] = ["synthetic"]
    params["datasets"]["baby"]["url"] = refused_url
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    synthetic = tmp_path / "data" / "datasets" / "synthetic"
    synthetic.mkdir(parents=True)
    (synthetic / "marker").write_text("earlier output")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.stages.data"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "dataset 'baby': could not fetch it from mirror" in proc.stderr
    assert "connection to 127.0.0.1 refused" in proc.stderr
    assert (synthetic / "marker").read_text() == "earlier output"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["datasets"]
