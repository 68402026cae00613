"""Data sets: level order, CSVs, clear errors, a deterministic stratified split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_smw.data.datasets import (
    SplitManifest,
    load_dataset,
    make_split,
    parse_levels,
    sort_level_names,
)
from edge_smw.errors import DataError


def make_folder(root, counts: dict[str, int]):
    for level, n in counts.items():
        (root / level).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("L", (8, 8), i * 10).save(root / level / f"{i}.png")
    return root


def test_numeric_levels_sort_as_numbers(tmp_path):
    assert sort_level_names(["10", "2", "1"]) == ("1", "2", "10")
    assert sort_level_names(["b", "a"]) == ("a", "b")
    ds = load_dataset(make_folder(tmp_path, {"10": 1, "2": 2, "1": 1}))
    assert ds.levels == ("1", "2", "10")
    assert ds.counts() == {"1": 1, "2": 2, "10": 1}


def test_explicit_levels_order_and_errors(tmp_path):
    root = make_folder(tmp_path, {"bad": 2, "good": 2})
    assert load_dataset(root, levels=("good", "bad")).levels == ("good", "bad")
    with pytest.raises(DataError, match="no sub-folder for level"):
        load_dataset(root, levels=("bad", "ok"))
    assert parse_levels("5") == ("1", "2", "3", "4", "5")
    with pytest.raises(DataError):
        parse_levels("a")
    assert parse_levels(" a , b ") == ("a", "b")
    for text in ("a,,b", "a,b,", ",a,b"):  # an empty name would shift every later level
        with pytest.raises(DataError, match="a level name is empty"):
            parse_levels(text)


def test_fewer_than_two_levels_or_empty_level(tmp_path):
    with pytest.raises(DataError, match="at least 2"):
        load_dataset(make_folder(tmp_path / "one", {"1": 3}))
    root = make_folder(tmp_path / "two", {"1": 3})
    (root / "2").mkdir()
    with pytest.raises(DataError, match=r"\['2'\] have no images"):
        load_dataset(root)
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "missing")


def test_csv_with_relative_paths_and_header(tmp_path):
    make_folder(tmp_path / "img", {"x": 3})
    csv = tmp_path / "labels.csv"
    csv.write_text("path,score\nimg/x/0.png,1\nimg/x/1.png,3\nimg/x/2.png,\n", encoding="utf-8")
    ds = load_dataset(csv)
    assert ds.levels == ("1", "3") and len(ds) == 2  # the unlabelled row is left out
    assert ds.items[0].path == tmp_path / "img/x/0.png"
    with pytest.raises(DataError, match="not among"):
        load_dataset(csv, levels=("1", "2"))
    bad = tmp_path / "bad.csv"
    bad.write_text("only-one-column\n", encoding="utf-8")
    with pytest.raises(DataError, match="path,score"):
        load_dataset(bad)


def test_split_is_deterministic_stratified_and_round_trips(tmp_path):
    ds = load_dataset(make_folder(tmp_path / "d", {"1": 20, "2": 7, "3": 3}))
    a, b = make_split(ds, seed=3), make_split(ds, seed=3)
    assert a.entries == b.entries and a.sha256 == b.sha256
    assert make_split(ds, seed=4).sha256 != a.sha256
    for split in ("train", "val", "test"):
        levels = {i.level for i in a.items(split)}
        assert levels == {0, 1, 2}, split  # every level in every split
    assert sum(len(a.items(s)) for s in ("train", "val", "test")) == len(ds)
    path = a.save(tmp_path / "split.json")
    assert SplitManifest.load(path).entries == a.entries
    path.write_text("{broken", encoding="utf-8")
    with pytest.raises(DataError, match="corrupt"):
        SplitManifest.load(path)


def test_a_split_made_with_relative_paths_is_found_from_any_folder(tmp_path, monkeypatch):
    """A run trained on ``data/`` relative to one folder is exported from another: the
    manifest's recorded base finds its images; an older manifest without one still falls back
    to the working folder and the run folder; a split nobody can reach names the base."""
    from edge_smw.export.crops import split_items

    project = tmp_path / "project"
    make_folder(project / "data", {"a": 4, "b": 4})
    monkeypatch.chdir(project)
    manifest = make_split(load_dataset("data"))
    assert not Path(manifest.entries[0]["path"]).is_absolute()  # kept as the data set gave it
    split = manifest.save(project / "runs" / "r1" / "split.json")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    items = split_items(split, "train", ("a", "b"))
    assert items and all(i.path.is_file() for i in items)
    assert SplitManifest.load(split).sha256 == manifest.sha256  # where it lives is not identity

    old = project / "runs" / "old" / "split.json"  # written before ``base`` was recorded
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps(manifest.to_dict()), encoding="utf-8")
    with pytest.raises(DataError, match="none of the .* exist here"):
        split_items(old, "train", ("a", "b"))
    monkeypatch.chdir(project)
    assert all(i.path.is_file() for i in split_items(old, "train", ("a", "b")))

    (project / "data").rename(project / "moved")
    monkeypatch.chdir(elsewhere)
    with pytest.raises(DataError, match=r"`edge-smw train` ran in \(.*project\), the working"):
        split_items(split, "test", ("a", "b"))


def test_unusable_files_are_skipped_and_named(tmp_path):
    """Zero-byte, non-image and truncated files are counted in a report that names them."""
    from edge_smw.contract import PreprocessContract
    from edge_smw.data.crops import SkipReport, load_crop

    root = make_folder(tmp_path, {"a": 2})
    (root / "a" / "zero.jpg").write_bytes(b"")
    (root / "a" / "notes.txt").write_text("hello")
    contract = PreprocessContract(levels=("a", "b"), input_size=16)
    report = SkipReport()
    results = {p.name: load_crop(p, contract, detect=False, report=report)
               for p in sorted((root / "a").iterdir())}
    assert results["0.png"].shape == (16, 16, 3)
    named = {r[0].split("/")[-1] for r in report.unreadable}
    assert named == {"zero.jpg", "notes.txt"}
    flat = np.full((120, 120, 3), 128, np.uint8)
    Image.fromarray(flat).save(root / "a" / "flat.png")
    assert load_crop(root / "a" / "flat.png", contract, detect=True, report=report) is None
    assert report.no_face == [str(root / "a" / "flat.png")]


def test_detected_crops_are_cached_by_file_hash(smiles_dir, tmp_path, monkeypatch):
    """A detected crop is computed once; the cache returns the same pixels without detection."""
    import cv2

    from edge_smw.contract import PreprocessContract
    from edge_smw.data import crops as crops_module
    from edge_smw.data.crops import SkipReport, load_crop

    monkeypatch.setenv("EDGE_SMW_CACHE", str(tmp_path / "cache"))
    face = cv2.imread(str(sorted((smiles_dir / "smiling").glob("*.jpg"))[0]))
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[160:320, 240:400] = cv2.resize(face, (160, 160), interpolation=cv2.INTER_CUBIC)
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), frame)
    contract = PreprocessContract(levels=("a", "b"), input_size=64)
    first = load_crop(path, contract, detect=True, report=SkipReport())
    assert first is not None and first.shape == (64, 64, 3)
    monkeypatch.setattr(crops_module, "largest_face", lambda _img: pytest.fail("not cached"))
    again = load_crop(path, contract, detect=True, report=SkipReport())
    np.testing.assert_array_equal(first, again)
