"""What the Ray engine reads (folders, globs, CSV/Parquet lists, URIs through pyarrow.fs) and
the Parquet store it resumes from; no Ray needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_smw.errors import ImageReadError, InputError
from edge_smw.images import write_image

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install "
                                            "edge-smw[ray])")


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    pixels = np.full((8, 8, 3), 90, np.uint8)
    for name in ("a.jpg", "b.png", "sub/c.jpg", "sub/deeper/d.JPG", ".hidden/e.jpg"):
        write_image(root / name, pixels)
    (root / "notes.txt").write_text("not a photo\n")
    return root


def test_folders_globs_and_duplicates(photos: Path, monkeypatch) -> None:
    from edge_smw.engines.inputs import list_photos

    found = list_photos([photos])
    assert [Path(p.path).relative_to(photos).as_posix() for p in found] == [
        "a.jpg", "b.png", "sub/c.jpg", "sub/deeper/d.JPG"]
    assert all(Path(p.source).is_absolute() for p in found)
    monkeypatch.chdir(photos)
    globbed = list_photos(["**/*.jpg", "a.jpg"])  # a.jpg twice: listed once
    assert [p.path for p in globbed] == ["a.jpg", "sub/c.jpg"]
    assert globbed[1].source == str(photos / "sub" / "c.jpg")
    with pytest.raises(InputError, match="matches no files"):
        list_photos(["*.webp"])
    with pytest.raises(InputError, match="does not exist"):
        list_photos(["nope/"])


def test_csv_and_parquet_lists(photos: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from edge_smw.engines.inputs import list_photos

    listing = photos / "list.csv"
    listing.write_text(f"path,label\na.jpg,1\nsub/c.jpg,2\n{photos / 'b.png'},3\n"
                       "s3://bucket/x.jpg,4\n", encoding="utf-8")
    found = list_photos([listing])
    assert [p.path for p in found] == ["a.jpg", "sub/c.jpg", str(photos / "b.png"),
                                       "s3://bucket/x.jpg"]
    assert found[1].source == str(photos / "sub" / "c.jpg")  # relative to the list
    assert found[3].source == "s3://bucket/x.jpg"  # read by a worker, never here
    table = tmp_path / "list.parquet"
    pq.write_table(pa.table({"path": [str(photos / "a.jpg")], "other": [1]}), table)
    assert [p.source for p in list_photos([table])] == [str(photos / "a.jpg")]
    bad = tmp_path / "bad.csv"
    bad.write_text("file\na.jpg\n", encoding="utf-8")
    with pytest.raises(InputError, match="no 'path' header"):
        list_photos([bad])
    pq.write_table(pa.table({"file": ["a.jpg"]}), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match="no 'path' column"):
        list_photos([tmp_path / "bad.parquet"])


def test_uris_through_pyarrow_fs(photos: Path) -> None:
    from edge_smw.engines.inputs import Photo, list_photos, read_source

    uri = photos.as_uri()
    found = list_photos([uri])
    assert [p.path for p in found] == [f"{uri}/a.jpg", f"{uri}/b.png", f"{uri}/sub/c.jpg",
                                       f"{uri}/sub/deeper/d.JPG"]
    assert read_source(found[0]) == (photos / "a.jpg").read_bytes()
    assert list_photos([f"{uri}/b.png"])[0].path == f"{uri}/b.png"
    with pytest.raises(InputError, match="does not exist"):
        list_photos([f"{uri}/missing/"])
    with pytest.raises(InputError, match="pyarrow.fs cannot open"):
        list_photos(["nosuchscheme://bucket/x"])
    with pytest.raises(ImageReadError, match="file not found"):
        read_source(Photo(f"{uri}/gone.jpg", f"{uri}/gone.jpg"))
    with pytest.raises(ImageReadError, match="is a folder"):
        read_source(Photo(f"{uri}/sub", f"{uri}/sub"))
    with pytest.raises(ImageReadError, match="file not found"):
        read_source(Photo("gone.jpg", str(photos / "gone.jpg")))


def test_store_refuses_other_settings_and_names_a_broken_part(tmp_path: Path) -> None:
    from edge_smw.engines.store import (
        FACES_SCHEMA,
        SKIPPED_SCHEMA,
        ResultStore,
        StoreSettings,
    )

    settings = StoreSettings("ab" * 32, ("low", "high"), True, 5)
    store = ResultStore(tmp_path / "out", settings)
    face = {"path": "a.jpg", "file_sha256": "1" * 64, "face": 0, "box": [1, 2, 3, 4],
            "level": "high", "level_index": 1, "expected_score": 1.75,
            "probabilities": [0.25, 0.75], "model_sha256": settings.model_sha256}
    bad = {"path": "b.jpg", "file_sha256": None, "status": "unreadable",
           "reason": "empty file (0 bytes)", "model_sha256": settings.model_sha256}
    store.append(pa.Table.from_pylist([face], schema=FACES_SCHEMA),
                 pa.Table.from_pylist([bad], schema=SKIPPED_SCHEMA))
    assert store.recorded() == {"a.jpg": "1" * 64, "b.jpg": None}
    ranking = store.ranking(["a.jpg", "b.jpg", "never-scored.jpg"])
    assert [p.path for p in ranking.ranked] == ["a.jpg"]
    assert ranking.ranked[0].best.box == (1, 2, 3, 4)
    assert [p.error for p in ranking.unreadable] == ["empty file (0 bytes)"]

    # a photo scored again (its file changed): the newest part wins
    store.append(pa.Table.from_pylist([{**face, "file_sha256": "2" * 64,
                                        "expected_score": 1.25}], schema=FACES_SCHEMA),
                 SKIPPED_SCHEMA.empty_table())
    reopened = ResultStore(tmp_path / "out", settings)
    assert reopened.recorded()["a.jpg"] == "2" * 64
    assert reopened.ranking().ranked[0].score == 1.25

    with pytest.raises(InputError, match="max_faces=5"):
        ResultStore(tmp_path / "out", StoreSettings("ab" * 32, ("low", "high"), True, 2))
    with pytest.raises(InputError, match="model_sha256"):
        ResultStore(tmp_path / "out", StoreSettings("cd" * 32, ("low", "high"), True, 5))
    (tmp_path / "out" / "faces" / "part-000009.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(InputError, match="part-000009.parquet is not a readable Parquet"):
        reopened.recorded()
