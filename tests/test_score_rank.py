"""`edge-smw score` and `edge-smw rank` on an album that mixes good and bad files.

Good photos are real SMILEsmileD crops (as they are, and given a border, enlarged and pasted
into a larger frame so the face detector finds them); the bad ones are a corrupt JPEG, a
zero-byte file, a text file named .jpg and a gradient with no face.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_smw.cli.main import main
from edge_smw.images import read_image, write_image
from edge_smw.runtime import Runtime
from tests.runtime_helpers import detectable_frames, gradient

ODD_NAME = 'a<b>&"c.jpg'  # HTML must escape it


@pytest.fixture(scope="module")
def album(smiles_test_items, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("album")
    by_level: dict[int, list[Path]] = {}
    for item in smiles_test_items:
        by_level.setdefault(item.level, []).append(item.path)
    pasted = detectable_frames(by_level[0][:10], 1) + detectable_frames(by_level[1][:10], 2)
    files = {
        "face_a": write_image(root / "face_a.jpg", pasted[0][1]),
        "face_b": write_image(root / "sub" / "face_b.png", pasted[1][1]),
        "face_odd": write_image(root / ODD_NAME, pasted[2][1]),
        "crop": write_image(root / "crop.png", read_image(by_level[1][-1])),
        "gradient": write_image(root / "gradient.png", gradient()),
    }
    jpeg = cv2.imencode(".jpg", pasted[0][1])[1].tobytes()
    files["corrupt"] = root / "corrupt.jpg"
    files["corrupt"].write_bytes(jpeg[:200] + bytes(range(256)) * 4)
    files["empty"] = root / "empty.jpg"
    files["empty"].write_bytes(b"")
    files["text"] = root / "notes.jpg"
    files["text"].write_text("not a photo\n")
    (root / ".hidden.jpg").write_bytes(jpeg)  # dot-files are skipped
    (root / "readme.txt").write_text("not an image suffix: skipped\n")
    return files


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_score_json_reports_every_file(smiles_onnx: Path, album, capsys) -> None:
    root = album["face_a"].parent
    # the model was trained on face crops: --detect asks for faces to be found in photos
    code, out, _ = _run(capsys, "score", smiles_onnx, root, "--detect", "--json", "--threads",
                        "1", "--backend", "onnxruntime-cpu")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]  # one JSON object per line
    entries: dict[str, list[dict]] = {}
    for record in records:
        entries.setdefault(Path(record["path"]).name, []).append(record)
    assert set(entries) == {p.name for p in album.values()}  # no .hidden.jpg, no readme.txt
    for key in ("corrupt", "empty", "text"):
        [entry] = entries[album[key].name]
        assert entry["face"] is None and entry["status"] == "unreadable" and entry["error"]
    assert "0 bytes" in entries["empty.jpg"][0]["error"]
    assert entries["gradient.png"] == [{"path": str(album["gradient"]), "face": None,
                                        "status": "no face", "error": None}]
    assert entries["crop.png"][0]["face"] is None  # a tight 64x64 crop is too small for Haar
    with Runtime(smiles_onnx, backend="onnxruntime-cpu", threads=1, detect_faces=True) as rt:
        for key in ("face_a", "face_b", "face_odd"):
            faces = entries[album[key].name]
            assert [f["face"] for f in faces] == list(range(1, len(faces) + 1))
            want = rt.score(read_image(album[key])).faces[0]
            got = faces[0]
            assert got["box"] == list(want.box)
            assert got["probabilities"] == pytest.approx(list(want.probabilities), abs=1e-5)
            assert sum(got["probabilities"]) == pytest.approx(1.0, abs=1e-4)


def test_score_table_for_humans_and_no_detect(smiles_onnx: Path, album, capsys) -> None:
    code, out, err = _run(capsys, "score", smiles_onnx, album["crop"], album["empty"],
                          album["gradient"], "--detect", "--threads", "1", "--backend",
                          "onnxruntime-cpu")
    assert code == 1 and "no image could be scored" in err  # nothing scored is a failure
    assert "2 of 3 image(s) yield no face" in err and "--no-detect" in err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["image", "face", "score", "level"]
    assert any("crop.png" in ln and "no face found" in ln for ln in lines)
    assert any("empty.jpg" in ln and "unreadable" in ln for ln in lines)
    assert "3 image(s): 0 face(s) scored, 2 without a face, 1 unreadable" in out
    code, out, _ = _run(capsys, "score", smiles_onnx, album["crop"], "--no-detect", "--json",
                        "--threads", "1")
    [face] = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and face["face"] == 1 and face["box"] == [0, 0, 64, 64]
    # without the flag the crop model scores crops whole, as it was trained
    code, default_out, _ = _run(capsys, "score", smiles_onnx, album["crop"], "--json",
                                "--threads", "1")
    assert code == 0 and json.loads(default_out) == face


def test_score_errors_are_one_line_exit_2(smiles_onnx: Path, smiles_run: Path, album,
                                          capsys, tmp_path: Path) -> None:
    for argv, words in [
        (["score", smiles_onnx, tmp_path / "nope.jpg"], "does not exist"),
        (["score", smiles_run, album["crop"]], "no exported model"),
        (["score", tmp_path / "missing.onnx", album["crop"]], "not found"),
        (["rank", smiles_onnx, album["crop"]], "is not a folder"),
        (["rank", smiles_onnx, album["crop"].parent, "--top", "0"], "--top"),
    ]:
        code, _, err = _run(capsys, *argv)
        assert code == 2
        assert err.count("\n") == 1 and words in err and "Traceback" not in err


def test_rank_writes_csv_html_png_and_lists_bad_files(smiles_onnx: Path, album, capsys,
                                                      tmp_path: Path) -> None:
    root = album["face_a"].parent
    out_dir = tmp_path / "report"
    # --top 3 shows every ranked photo, so the odd name is on the page whatever its score
    code, out, _ = _run(capsys, "rank", smiles_onnx, root, "--detect", "--top", "3", "--out",
                        out_dir, "--threads", "1", "--backend", "onnxruntime-cpu")
    assert code == 0
    assert "3 ranked, 2 without a face, 3 unreadable" in out
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "contact_sheet.html", "contact_sheet.png", "ranking.csv", "thumbs"]  # no temp files

    rows = list(csv.DictReader((out_dir / "ranking.csv").open(encoding="utf-8")))
    assert len(rows) == len(album)
    ranked = [r for r in rows if r["status"] == "ok"]
    assert [r["rank"] for r in ranked] == ["1", "2", "3"]
    scores = [float(r["expected_score"]) for r in ranked]
    assert scores == sorted(scores, reverse=True)
    with Runtime(smiles_onnx, backend="onnxruntime-cpu", threads=1, detect_faces=True) as rt:
        for row in ranked:
            best = rt.score(read_image(row["path"])).best
            assert float(row["expected_score"]) == pytest.approx(best.expected_score, abs=1e-4)
            assert row["level"] == best.level_name
            assert float(row["p_smiling"]) == pytest.approx(best.probabilities[1], abs=1e-5)
    status = {Path(r["path"]).name: r["status"] for r in rows}
    assert {k for k, v in status.items() if v == "unreadable"} == {
        "corrupt.jpg", "empty.jpg", "notes.jpg"}
    assert {k for k, v in status.items() if v == "no face"} == {"crop.png", "gradient.png"}

    page = (out_dir / "contact_sheet.html").read_text(encoding="utf-8")
    assert page.count("<figure>") == 3
    assert "a&lt;b&gt;&amp;&quot;c.jpg" in page and ODD_NAME not in page
    for name in ("corrupt.jpg", "empty.jpg", "notes.jpg", "gradient.png", "crop.png"):
        assert name in page.split("Left out")[1]
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 3
    for src in sources:
        thumb = cv2.imread(str(out_dir / src))
        assert thumb is not None and max(thumb.shape[:2]) == 200
    sheet = cv2.imread(str(out_dir / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] >= 200 and sheet.shape[1] >= 2 * 200
    assert sheet.std() > 10  # thumbnails were drawn, not a blank page


def test_rank_no_detect_and_default_out_folder(smiles_onnx: Path, album, capsys,
                                               tmp_path: Path) -> None:
    root = album["face_a"].parent
    code, out, _ = _run(capsys, "rank", smiles_onnx, root, "--no-detect", "--threads", "1",
                        "--backend", "onnxruntime-cpu")
    assert code == 0
    report = root.with_name(root.name + "-ranking")
    rows = list(csv.DictReader((report / "ranking.csv").open(encoding="utf-8")))
    # whole images are scored: every readable file is ranked, the gradient too
    assert sum(r["status"] == "ok" for r in rows) == 5
    assert "5 ranked, 0 without a face, 3 unreadable" in out
    html_page = (report / "contact_sheet.html").read_text(encoding="utf-8")
    assert html_page.count("<figure>") == 5
    assert len(list((report / "thumbs").iterdir())) == 5
    code, _, _ = _run(capsys, "rank", smiles_onnx, root, "--no-detect", "--top", "2", "--out",
                      report, "--threads", "1", "--backend", "onnxruntime-cpu")
    assert code == 0 and len(list((report / "thumbs").iterdir())) == 2  # stale ones removed
    # a report folder inside the album is not ranked on the next run (on a copy of the album)
    root = Path(shutil.copytree(root, tmp_path / "album"))
    inner = root / "report"
    code, _, _ = _run(capsys, "rank", smiles_onnx, root, "--no-detect", "--out", inner,
                      "--threads", "1", "--backend", "onnxruntime-cpu")
    assert code == 0
    code, _, _ = _run(capsys, "rank", smiles_onnx, root, "--no-detect", "--out", inner,
                      "--threads", "1", "--backend", "onnxruntime-cpu")
    rows = list(csv.DictReader((inner / "ranking.csv").open(encoding="utf-8")))
    assert code == 0 and len(rows) == len(album)
    assert np.isclose(sorted(float(r["expected_score"]) for r in rows if r["expected_score"]),
                      sorted(float(r["expected_score"]) for r in
                             csv.DictReader((report / "ranking.csv").open(encoding="utf-8"))
                             if r["expected_score"])).all()


def test_score_detector_flag_and_the_mismatch_error(smiles_onnx: Path, album, capsys,
                                                     tmp_path: Path) -> None:
    from tests.test_runtime import _with_contract

    face = album["face_a"]
    for detector in ("haar", "blazeface-short"):
        code, out, _ = _run(capsys, "score", smiles_onnx, face, "--json", "--threads", "1",
                            "--backend", "onnxruntime-cpu", "--detect", "--detector", detector)
        assert code == 0
        (record,) = [json.loads(line) for line in out.splitlines()]  # JSON Lines, one face
        assert record["face"] == 1
        assert ("landmarks" in record) == (detector != "haar")
    old = _with_contract(smiles_onnx, tmp_path / "old.onnx", trained_detect=True, old=True)
    code, out, err = _run(capsys, "score", old, face, "--threads", "1", "--backend",
                          "onnxruntime-cpu", "--detector", "blazeface-short")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "--allow-detector-mismatch" in err
    code, out, _ = _run(capsys, "score", old, face, "--json", "--threads", "1", "--backend",
                        "onnxruntime-cpu", "--detector", "blazeface-short",
                        "--allow-detector-mismatch")
    assert code == 0 and json.loads(out.splitlines()[0])["face"] == 1
    code, _, err = _run(capsys, "score", smiles_onnx, face, "--detect", "--detector", "yolo")
    assert code == 2 and "unknown face detector 'yolo'" in err


def test_an_out_that_is_a_file_is_one_line_exit_2(smiles_onnx: Path, album, capsys) -> None:
    """score/rank --out naming a file: one line before any work (Ray's used to trace back)."""
    pytest.importorskip("ray")
    root, a_file = album["face_a"].parent, album["gradient"]
    before = a_file.read_bytes()
    for argv in (["score", smiles_onnx, root, "--engine", "ray", "--out", a_file],
                 ["rank", smiles_onnx, root, "--engine", "ray", "--out", a_file],
                 ["rank", smiles_onnx, root, "--out", a_file]):
        code, _, err = _run(capsys, *argv)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, argv
        assert f"cannot write into {a_file}: it is a file" in err and "--out" in err
    assert a_file.read_bytes() == before


def test_rank_with_nothing_rankable_fails_and_keeps_the_last_report(
        smiles_onnx: Path, album, capsys, tmp_path: Path) -> None:
    """As score: exit 1 when no photo could be scored, and the last good report stays."""
    bad = tmp_path / "bad"
    bad.mkdir()
    for key in ("corrupt", "empty", "text"):
        shutil.copy(album[key], bad / album[key].name)
    out = tmp_path / "report"
    out.mkdir()
    (out / "ranking.csv").write_text("the last good ranking\n")
    code, stdout, err = _run(capsys, "rank", smiles_onnx, bad, "--no-detect", "--out", out,
                             "--threads", "1", "--backend", "onnxruntime-cpu")
    assert code == 1 and "edge-smw rank: no image could be scored" in err
    assert stdout.count("unreadable:") == 3
    assert (out / "ranking.csv").read_text() == "the last good ranking\n"
    assert sorted(p.name for p in out.iterdir()) == ["ranking.csv"]
