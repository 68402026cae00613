"""The Ray engine against the in-process one, on real face crops, on a local Ray with 2 CPUs.

Same model, same photos: the same faces, boxes, levels and probabilities (to 1e-6), the same
skipped files with the same reasons, the same rank CSV. Plus resuming, a worker that dies,
object-store URIs (file://, through pyarrow.fs as s3:// and gs:// are) and the features
for training.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_smw.cache import file_sha256
from edge_smw.images import read_image, write_image
from edge_smw.rank import AlbumRanking, PhotoScore, score_photos, write_csv
from edge_smw.runtime import Runtime
from tests.runtime_helpers import detectable_frames, gradient

CROPS_PER_LEVEL = 100
PROB_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def crop_list(smiles_dir: Path, tmp_path_factory) -> tuple[Path, list[Path]]:
    """A CSV list of 200 real crops (absolute paths into the shared data, not copied)."""
    files = []
    for level in ("not_smiling", "smiling"):
        files += sorted((smiles_dir / level).glob("*.jpg"))[:CROPS_PER_LEVEL]
    listing = tmp_path_factory.mktemp("crop_list") / "photos.csv"
    with listing.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "note"])
        writer.writerows([str(f), "real crop"] for f in files)
    return listing, files


@pytest.fixture(scope="module")
def album(smiles_dir: Path, tmp_path_factory) -> Path:
    """Photos to detect faces in (one with two faces), plus files that cannot be scored."""
    root = tmp_path_factory.mktemp("ray_album")
    smiling = sorted((smiles_dir / "smiling").glob("*.jpg"))[:40]
    neutral = sorted((smiles_dir / "not_smiling").glob("*.jpg"))[:40]
    frames = detectable_frames(smiling, 3) + detectable_frames(neutral, 3)
    for i, (_, frame) in enumerate(frames):
        write_image(root / ("sub" if i % 2 else ".") / f"face_{i}.png", frame)
    write_image(root / "two_faces.jpg", np.hstack([frames[0][1], frames[3][1]]))
    write_image(root / "crop.png", read_image(smiling[-1]))  # too tight for Haar: no face
    write_image(root / "gradient.png", gradient())
    jpeg = cv2.imencode(".jpg", frames[1][1])[1].tobytes()
    (root / "corrupt.jpg").write_bytes(jpeg[:300] + bytes(range(256)) * 4)
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("not a photo\n")
    (root / ".hidden.jpg").write_bytes(jpeg)
    return root


def _options(**kw):
    from edge_smw.engines import RayOptions

    return RayOptions(**{"batch_size": 16, "actors": 1, "progress": False, **kw})


def _inprocess(model: Path, paths: list[Path], *, detect: bool) -> dict[str, PhotoScore]:
    with Runtime(model, backend="onnxruntime-cpu", threads=1, detect_faces=detect) as rt:
        return {str(p.path): p for p in score_photos(rt, paths)}


def _faces_table(out: Path) -> dict[str, list[dict]]:
    import pyarrow.parquet as pq

    rows: dict[str, list[dict]] = {}
    for row in pq.read_table(out / "faces").to_pylist():  # plain Parquet, any reader
        rows.setdefault(row["path"], []).append(row)
    return {k: sorted(v, key=lambda r: r["face"]) for k, v in rows.items()}


def _skipped_table(out: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    if not (out / "skipped").is_dir():
        return {}
    return {row["path"]: row for row in pq.read_table(out / "skipped").to_pylist()}


def _assert_same_faces(got: list[dict], want: PhotoScore, model_sha: str) -> None:
    assert len(got) == len(want.faces), want.path
    for row, face in zip(got, want.faces, strict=True):
        assert tuple(row["box"]) == tuple(face.box)
        assert row["level_index"] == face.level and row["level"] == face.level_name
        np.testing.assert_allclose(row["probabilities"], face.probabilities, rtol=0,
                                   atol=PROB_TOLERANCE)
        assert abs(row["expected_score"] - face.expected_score) <= 4 * PROB_TOLERANCE
        assert row["model_sha256"] == model_sha


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _assert_same_csv(got: Path, want: Path) -> None:
    """Same photos in the same order with the same status; numbers as printed, to 1e-6."""
    a, b = _csv_rows(got), _csv_rows(want)
    assert [r["path"] for r in a] == [r["path"] for r in b]
    for x, y in zip(a, b, strict=True):
        for key in x:
            if key.startswith("p_") or key == "expected_score":
                assert (x[key] == y[key] == "") or abs(float(x[key]) - float(y[key])) <= 2e-6
            else:
                assert x[key] == y[key], (key, x, y)


def test_ray_scores_real_crops_as_inprocess(ray_local, smiles_onnx: Path, crop_list,
                                            tmp_path: Path) -> None:
    from edge_smw.engines.ray import score_library

    listing, files = crop_list
    out = tmp_path / "scores"
    summary, ranking = score_library(smiles_onnx, [listing], out, backend="onnxruntime-cpu",
                                     detect=False, options=_options())
    assert summary.photos == summary.scored == len(files) == 2 * CROPS_PER_LEVEL
    assert summary.faces == len(files) and summary.recorded == 0
    assert summary.no_face == summary.unreadable == 0
    assert summary.backends == ["onnxruntime-cpu"] and summary.seconds > 0
    assert all(v > 0 for k, v in summary.stage_seconds.items() if k != "detect")
    # decoding runs in its own CPU tasks, not fused into the model actors
    assert "MapBatches(prepare_photos)->MapBatches(FaceScorer)" not in summary.ray_stats
    assert "MapBatches(FaceScorer)" in summary.ray_stats

    want = _inprocess(smiles_onnx, files, detect=False)
    got = _faces_table(out)
    model_sha = file_sha256(smiles_onnx)
    assert set(got) == set(want)
    for path, photo in want.items():
        _assert_same_faces(got[path], photo, model_sha)
        assert got[path][0]["file_sha256"] == file_sha256(path)
        assert got[path][0]["box"] == [0, 0, 64, 64]
    assert len({r[0]["level"] for r in got.values()}) == 2  # both levels occur
    assert _skipped_table(out) == {}

    reference = write_csv(AlbumRanking.of(want.values(), ranking.levels), tmp_path / "ref.csv")
    _assert_same_csv(out / "ranking.csv", reference)
    assert (out / "summary.json").is_file() and (out / "run.json").is_file()
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporaries left


def _assert_same_as_inprocess(out: Path, want: dict[str, PhotoScore], model: Path,
                              key=lambda path: path) -> None:
    """Every photo of ``want`` recorded in ``out`` as the in-process engine scored it."""
    got = {key(k): v for k, v in _faces_table(out).items()}
    skipped = {key(k): v for k, v in _skipped_table(out).items()}
    model_sha = file_sha256(model)
    for path, photo in want.items():
        if photo.faces:
            _assert_same_faces(got[key(path)], photo, model_sha)
            assert key(path) not in skipped
        else:
            row = skipped[key(path)]
            assert key(path) not in got
            assert row["status"] == photo.status, path
            assert row["reason"] == (photo.error or "no face found")
    assert len(got) + len(skipped) == len(want)


def test_ray_detects_faces_and_skips_bad_files_as_inprocess(ray_local, smiles_onnx: Path,
                                                            album: Path,
                                                            tmp_path: Path) -> None:
    from edge_smw.engines.ray import score_library
    from edge_smw.rank import collect_images

    want = _inprocess(smiles_onnx, collect_images([album]), detect=True)
    assert max(len(p.faces) for p in want.values()) == 2  # two_faces.jpg
    assert {p.status for p in want.values()} == {"ok", "no face", "unreadable"}

    out = tmp_path / "folder"
    summary, _ = score_library(smiles_onnx, [album], out, backend="onnxruntime-cpu",
                               detect=True, options=_options(batch_size=4))
    _assert_same_as_inprocess(out, want, smiles_onnx)
    assert (summary.unreadable, summary.no_face) == (3, 2)
    assert summary.faces == sum(len(p.faces) for p in want.values())
    reference = write_csv(AlbumRanking.of(want.values(), ("not_smiling", "smiling")),
                          tmp_path / "ref.csv")
    _assert_same_csv(out / "ranking.csv", reference)

    # the same folder as a URI goes through pyarrow.fs, as s3:// and gs:// do
    uri = album.resolve().as_uri()
    out = tmp_path / "uri"
    score_library(smiles_onnx, [uri + "/"], out, backend="onnxruntime-cpu", detect=True,
                  options=_options(batch_size=4, actors=None))  # the autoscaling pool
    _assert_same_as_inprocess(out, want, smiles_onnx,
                              key=lambda p: str(Path(p).resolve()) if "://" not in p
                              else p.removeprefix("file://"))
    assert all(p.startswith("file:///") for p in _faces_table(out))


def test_ray_resumes_and_rescored_files_replace_old_rows(ray_local, smiles_onnx: Path,
                                                         album: Path, tmp_path: Path) -> None:
    import shutil

    from edge_smw.engines.ray import score_library
    from edge_smw.errors import InputError

    photos = Path(shutil.copytree(album, tmp_path / "album"))
    out = tmp_path / "out"
    first, _ = score_library(smiles_onnx, [photos], out, backend="onnxruntime-cpu",
                             detect=True, options=_options(batch_size=2, part_photos=3))
    parts = sorted(p.name for p in (out / "faces").iterdir())
    assert first.scored == first.photos == 12 and len(parts) >= 2

    again, _ = score_library(smiles_onnx, [photos], out, backend="onnxruntime-cpu",
                             detect=True, options=_options(batch_size=2, part_photos=3))
    assert (again.recorded, again.scored, again.faces) == (12, 0, 0)
    assert sorted(p.name for p in (out / "faces").iterdir()) == parts  # nothing rewritten

    # a photo whose content changed is scored again and its new rows replace the old ones
    changed = photos / "face_0.png"
    shutil.copyfile(photos / "sub" / "face_1.png", changed)
    third, ranking = score_library(smiles_onnx, [photos], out, backend="onnxruntime-cpu",
                                   detect=True, options=_options(batch_size=2))
    assert (third.recorded, third.scored) == (11, 1)
    want = _inprocess(smiles_onnx, [changed, photos / "sub" / "face_1.png"], detect=True)
    _assert_same_faces(_current_faces(out, smiles_onnx)[str(changed)], want[str(changed)],
                       file_sha256(smiles_onnx))
    rows = _csv_rows(out / "ranking.csv")
    assert sorted(r["path"] for r in rows) == sorted(str(p.path) for p in ranking.all)
    assert len(rows) == 12  # each photo once, the changed one with its new score

    with pytest.raises(InputError, match="detect=True"):  # other settings: another folder
        score_library(smiles_onnx, [photos], out, detect=False, options=_options())


def _current_faces(out: Path, model: Path) -> dict[str, list[dict]]:
    """The store's own view: each photo's newest rows."""
    from edge_smw.engines.store import ResultStore, StoreSettings

    settings = StoreSettings(file_sha256(model), ("not_smiling", "smiling"), True, 5)
    faces, _ = ResultStore(out, settings).current()
    rows: dict[str, list[dict]] = {}
    for row in faces.to_pylist():
        rows.setdefault(row["path"], []).append(row)
    return {k: sorted(v, key=lambda r: r["face"]) for k, v in rows.items()}


def test_a_failed_batch_keeps_what_was_scored_and_a_rerun_finishes(ray_local, smiles_onnx,
                                                                   crop_list, tmp_path):
    from edge_smw.engines.ray import FaceScorer, score_library

    listing, files = crop_list
    poison = str(files[-1])

    class FailsOnOnePhoto(FaceScorer):  # pickled by value: defined in this test
        def __call__(self, batch):
            if poison in batch.column("path").to_pylist():
                raise RuntimeError("injected failure")
            return super().__call__(batch)

    out = tmp_path / "out"
    with pytest.raises(Exception, match="injected failure"):
        score_library(smiles_onnx, [listing], out, backend="onnxruntime-cpu", detect=False,
                      options=_options(batch_size=8, part_photos=8), scorer=FailsOnOnePhoto)
    kept = _faces_table(out) if (out / "faces").is_dir() else {}
    assert poison not in kept
    want = _inprocess(smiles_onnx, files, detect=False)
    for path, rows in kept.items():  # whatever was recorded is whole and right
        _assert_same_faces(rows, want[path], file_sha256(smiles_onnx))
    summary, _ = score_library(smiles_onnx, [listing], out, backend="onnxruntime-cpu",
                               detect=False, options=_options(batch_size=8))
    assert summary.recorded == len(kept) and summary.scored == len(files) - len(kept)
    _assert_same_as_inprocess(out, want, smiles_onnx)


def test_a_worker_that_dies_is_replaced_and_its_batch_retried(ray_local, smiles_onnx,
                                                              crop_list, tmp_path):
    from edge_smw.engines.ray import FaceScorer, score_library

    listing, files = crop_list
    marker = tmp_path / "crashed-once"

    class DiesOnce(FaceScorer):  # the actor process exits mid-job, once
        def __call__(self, batch):
            if not marker.exists():
                marker.touch()
                os._exit(1)
            return super().__call__(batch)

    out = tmp_path / "out"
    # detect=None: as the model was trained (on whole crops), as Runtime decides it
    summary, _ = score_library(smiles_onnx, [listing], out, backend="onnxruntime-cpu",
                               detect=None, options=_options(batch_size=16), scorer=DiesOnce)
    assert marker.exists()  # it did die
    assert summary.scored == len(files) and summary.faces == len(files)
    _assert_same_as_inprocess(out, _inprocess(smiles_onnx, files, detect=False), smiles_onnx)


def test_a_scorer_leaves_no_model_copy_behind(ray_local, smiles_onnx: Path, crop_list,
                                              tmp_path, monkeypatch) -> None:
    """Ray ends actors without finalizers: the model copy must be gone once loaded."""
    import tempfile

    import pyarrow as pa

    from edge_smw.engines.ray import STAGES, FaceScorer, ShippedModel

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    scorer = FaceScorer(ShippedModel.put(smiles_onnx), backend="onnxruntime-cpu", threads=1)
    assert list(tmp_path.iterdir()) == []
    _, files = crop_list
    crop = read_image(files[0])
    pixels = scorer.runtime.contract.to_model_pixels(crop).tobytes()
    batch = pa.table({"path": [str(files[0])], "file_sha256": ["x"], "status": ["ok"],
                      "reason": [None], "boxes": [[[0, 0, 64, 64]]], "pixels": [pixels],
                      **{f"{stage}_s": [0.0] for stage in STAGES}})
    scored = scorer(batch).to_pylist()[0]
    want = Runtime(smiles_onnx, backend="onnxruntime-cpu", detect_faces=False).score(crop)
    assert scored["level_index"] == [want.faces[0].level]


def test_training_features_on_ray_fill_the_cache_as_inprocess(ray_local, smiles_dir: Path,
                                                              monkeypatch, tmp_path: Path):
    """Features computed by Ray actors are what the in-process pass computes, and training
    then reads them from the cache without computing any."""
    import shutil

    from edge_smw.data.datasets import LabelledImage
    from edge_smw.engines.ray import warm_feature_cache
    from edge_smw.train.backbones import DEFAULT_BACKBONE, get_backbone
    from edge_smw.train.features import FeaturePass, cache_folder, compute_features

    monkeypatch.setenv("EDGE_SMW_CACHE", str(tmp_path / "cache"))
    items = [LabelledImage(path, level) for level, name in enumerate(("not_smiling", "smiling"))
             for path in sorted((smiles_dir / name).glob("*.jpg"))[:24]]
    items.append(LabelledImage(tmp_path / "broken.jpg", 0))
    items[-1].path.write_bytes(b"\xff\xd8 not a jpeg")
    spec = get_backbone(DEFAULT_BACKBONE)
    contract = spec.contract(("not_smiling", "smiling"))
    feature_pass = FeaturePass(spec, threads=1)
    flips = [i % 2 == 0 for i in range(len(items))]
    done = warm_feature_cache(items, contract, feature_pass, detect=False, flip_items=flips,
                              options=_options(batch_size=8))
    assert (done.photos, done.computed) == (len(items), len(items) - 1)  # broken.jpg: none
    again = warm_feature_cache(items, contract, feature_pass, detect=False, flip_items=flips,
                               options=_options(batch_size=8))
    assert again.photos == 1  # only the broken file is still missing

    def no_compute(self, inputs):  # noqa: ANN001 - every feature must come from the cache
        raise AssertionError("computed a feature the Ray pass should have cached")

    flipped, plain = items[0:-1:2], items[1:-1:2]
    with monkeypatch.context() as patch:
        patch.setattr(FeaturePass, "__call__", no_compute)
        from_ray = [compute_features(group, contract, feature_pass, detect=False, flip=flip,
                                     progress=False)
                    for group, flip in ((flipped, True), (plain, False))]
    shutil.rmtree(cache_folder(feature_pass, contract, detect=False))
    local = [compute_features(group, contract, feature_pass, detect=False, flip=flip,
                              progress=False)
             for group, flip in ((flipped, True), (plain, False))]
    for ray_set, local_set in zip(from_ray, local, strict=True):
        assert ray_set.paths == local_set.paths
        assert np.array_equal(ray_set.levels, local_set.levels)
        np.testing.assert_allclose(ray_set.features, local_set.features, rtol=0, atol=1e-5)
    assert len(from_ray[0].paths) == 2 * len(flipped)  # each flipped item twice


def _cli(capsys, *argv) -> tuple[int, str, str]:
    from edge_smw.cli.main import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_score_and_rank_with_engine_ray(ray_local, smiles_onnx: Path, album: Path,
                                            tmp_path: Path, capsys) -> None:
    import json

    ray_flags = ["--engine", "ray", "--backend", "onnxruntime-cpu", "--actors", "1",
                 "--batch-size", "4", "--detect"]
    code, out, _ = _cli(capsys, "score", smiles_onnx, album, "--out", tmp_path / "scores",
                        "--json", *ray_flags)
    assert code == 0 and len(out.splitlines()) == 1
    summary = json.loads(out)
    assert (summary["photos"], summary["unreadable"], summary["no_face"]) == (12, 3, 2)
    assert len(_faces_table(tmp_path / "scores")) == 7

    code, out, _ = _cli(capsys, "rank", smiles_onnx, album, "--out", tmp_path / "ray-rank",
                        "--top", "3", *ray_flags)
    assert code == 0
    assert "12 photo(s): 12 scored" in out and "wrote" in out
    code, _, _ = _cli(capsys, "rank", smiles_onnx, album, "--out", tmp_path / "local-rank",
                      "--top", "3", "--backend", "onnxruntime-cpu", "--detect")
    assert code == 0
    _assert_same_csv(tmp_path / "ray-rank" / "ranking.csv",
                     tmp_path / "local-rank" / "ranking.csv")
    page = (tmp_path / "ray-rank" / "contact_sheet.html").read_text(encoding="utf-8")
    assert page.count("<figure>") == 3
    assert len(list((tmp_path / "ray-rank" / "thumbs").iterdir())) == 3

    bad = tmp_path / "bad"  # nothing rankable: a failure, as in process, and the last CSV stays
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("not an image")
    last = (tmp_path / "ray-rank" / "ranking.csv").read_text(encoding="utf-8")
    code, _, err = _cli(capsys, "rank", smiles_onnx, bad, "--out", tmp_path / "ray-rank",
                        *ray_flags)
    assert code == 1 and "edge-smw rank: no image could be scored" in err
    assert (tmp_path / "ray-rank" / "ranking.csv").read_text(encoding="utf-8") == last


def test_cli_engine_mistakes_are_one_line_exit_2(smiles_onnx: Path, album: Path,
                                                 tmp_path: Path, capsys) -> None:
    for argv, words in [
        (["score", smiles_onnx, album, "--engine", "ray"], "pass --out DIR"),
        (["score", smiles_onnx, album, "--ray-address", "auto"], "add --engine ray"),
        (["score", smiles_onnx, album, "--actors", "2"], "add --engine ray"),
        (["score", smiles_onnx, album, "--out", tmp_path], "--engine ray writes"),
        (["score", smiles_onnx, album, "--engine", "ray", "--out", tmp_path, "--threads", "2"],
         "--cpus-per-actor"),
        (["rank", smiles_onnx, "s3://bucket/album/", "--engine", "ray"], "is not a folder"),
        (["train", "--data", album, "--out", tmp_path, "--batch-size", "8"], "add --engine ray"),
        (["score", smiles_onnx, album, "--engine", "ray", "--out", tmp_path / "r",
          "--cpus-per-actor", "nan"], "--cpus-per-actor must be a number > 0"),
        (["score", smiles_onnx, album, "--engine", "ray", "--out", tmp_path / "r",
          "--gpus-per-actor", "inf"], "--gpus-per-actor must be a number >= 0"),
    ]:
        code, _, err = _cli(capsys, *argv)
        assert code == 2, (argv, err)
        assert err.count("\n") == 1 and words in err and "Traceback" not in err


def test_engine_ray_without_the_extra_says_what_to_install(smiles_onnx: Path, album: Path,
                                                           tmp_path: Path) -> None:
    """A real process where Ray cannot be imported, as after `pip install edge-smw`."""
    import subprocess
    import sys

    script = ("import sys; sys.modules['ray'] = None\n"
              "from edge_smw.cli.main import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    result = subprocess.run(
        [sys.executable, "-c", script, "score", str(smiles_onnx), str(album), "--engine", "ray",
         "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "pip install 'edge-smw[ray]'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_train_with_engine_ray_trains_the_same_head(ray_local, smiles_dir: Path,
                                                        tmp_path: Path, capsys,
                                                        monkeypatch) -> None:
    """Features from Ray (fresh cache) and from the in-process pass (another fresh cache)
    give the same head and the same test metrics."""
    from edge_smw.train.checkpoint import load_checkpoint

    common = ["--data", smiles_dir, "--levels", "not_smiling,smiling", "--no-detect",
              "--max-per-level", "24", "--no-compare", "--epochs", "10", "--json"]
    runs = {}
    for engine in ("ray", "inprocess"):
        monkeypatch.setenv("EDGE_SMW_CACHE", str(tmp_path / f"cache-{engine}"))
        extra = ["--engine", "ray", "--actors", "1", "--batch-size", "8"] \
            if engine == "ray" else []
        code, _, err = _cli(capsys, "train", *common, "--out", tmp_path / engine, *extra)
        assert code == 0, err
        runs[engine] = load_checkpoint(tmp_path / engine)
    ray_ckpt, local_ckpt = runs["ray"], runs["inprocess"]
    np.testing.assert_allclose(ray_ckpt.head_weight, local_ckpt.head_weight, atol=1e-4)
    np.testing.assert_allclose(ray_ckpt.head_bias, local_ckpt.head_bias, atol=1e-4)
    assert ray_ckpt.metrics == local_ckpt.metrics


def test_a_gpu_backend_on_a_cluster_without_gpus_is_refused_up_front(
        ray_local, smiles_onnx: Path, crop_list, tmp_path: Path, capsys) -> None:
    from edge_smw.engines.ray import score_library
    from edge_smw.errors import BackendUnavailableError

    listing, _ = crop_list
    with pytest.raises(BackendUnavailableError, match="the Ray cluster has 0"):
        score_library(smiles_onnx, [listing], tmp_path / "gpu", backend="onnxruntime-cuda",
                      detect=False, options=_options())
    code, _, err = _cli(capsys, "score", smiles_onnx, listing, "--engine", "ray", "--out",
                        tmp_path / "cli", "--backend", "tensorrt", "--no-detect")
    assert code == 2 and err.count("\n") == 1 and "GPU" in err
