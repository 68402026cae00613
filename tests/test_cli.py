"""The CLI: every subcommand listed with examples, JSON where promised, one-line errors."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from edge_smw.cli.main import COMMANDS, build_parser, main
from tests.conftest import SMILES_LEVELS


def test_help_lists_every_subcommand_with_examples(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == list(COMMANDS)  # every command exists, in order
    for name, cmd in sub.choices.items():
        assert "examples:" in cmd.format_help(), name
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_bad_data_is_one_clear_line_and_exit_2(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0] and "not found" in err[0]
    assert main(["evaluate", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "holds neither a training checkpoint" in capsys.readouterr().err


def test_an_export_folder_where_a_run_is_needed_is_named_as_one(tmp_path, capsys):
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "model.onnx").write_bytes(b"")
    for argv in (["export", str(exported), "--out", str(tmp_path / "again")],
                 ["fool", str(exported), str(exported), "--target", "smiling"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is an export folder (model.onnx), not a training run" in err[0]
        assert "checkpoint.pt" in err[0]
    assert not (tmp_path / "again").exists()


def test_bad_finetune_flags_are_one_clear_line_before_any_work(small_labelled_folder, capsys):
    out = small_labelled_folder.parent / "run"
    for flag, value in [("--finetune-average", "-1"), ("--finetune-lr", "0")]:
        assert main(["train", "--data", str(small_labelled_folder), "--levels",
                     ",".join(SMILES_LEVELS), "--finetune-last", "6", flag, value,
                     "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0], err
        assert not out.exists()


@pytest.fixture()
def small_labelled_folder(smiles_dir, tmp_path):
    for level in SMILES_LEVELS:
        (tmp_path / "data" / level).mkdir(parents=True)
        for src in sorted((smiles_dir / level).glob("*.jpg"))[100:106]:
            shutil.copy(src, tmp_path / "data" / level / src.name)
    (tmp_path / "data" / "smiling" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    return tmp_path / "data"


@pytest.mark.parametrize("which", ["onnx", "run"])
def test_evaluate_json_and_predictions(which, smiles_onnx, smiles_run, small_labelled_folder,
                                       tmp_path, capsys):
    model = smiles_onnx if which == "onnx" else smiles_run
    preds = tmp_path / "preds.csv"
    code = main(["evaluate", str(model), "--data", str(small_labelled_folder), "--no-detect",
                 "--json", "--predictions", str(preds), "--out", str(tmp_path / "rep")])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 12 and 0.0 <= result["accuracy"] <= 1.0 and result["mae"] >= 0
    assert set(result["per_level"]) == set(SMILES_LEVELS)
    assert all(set(v) == {"accuracy", "mae", "count"} for v in result["per_level"].values())
    assert [s["path"].endswith("broken.jpg") for s in result["skipped"]["unreadable"]] == [True]
    rows = list(csv.DictReader(preds.open()))
    assert len(rows) == 12
    assert list(rows[0]) == ["path", "true_level", "predicted_level",
                             "p_not_smiling", "p_smiling"]
    assert (tmp_path / "rep" / "evaluation.md").is_file()


def test_evaluate_checkpoint_and_onnx_agree(smiles_onnx, smiles_run, small_labelled_folder):
    """The checkpoint path (training features) and the exported model give the same scores."""
    import numpy as np

    from edge_smw.data.datasets import load_dataset
    from edge_smw.predict import predict_items

    items = load_dataset(small_labelled_folder, levels=SMILES_LEVELS).items
    a = predict_items(smiles_run, items, detect=False, progress=False)
    b = predict_items(smiles_onnx, items, detect=False, progress=False)
    assert a.paths == b.paths
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-4)


def read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """``folder`` (and all under it) refuses new files as a read-only mount does; chmod
    cannot stand in for one where the tests run as root."""
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve().is_relative_to(folder.resolve()):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and "Traceback" not in err[0], err
    return err[0]


def test_bad_train_values_and_out_are_one_clear_line_before_any_work(
        small_labelled_folder, tmp_path, monkeypatch, capsys):
    """Seeds numpy refuses, a non-positive --max-per-level (it used to train on every image),
    an empty weights file and an --out that cannot be made: one line, nothing trained."""
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    a_file = small_labelled_folder / "smiling" / "broken.jpg"
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(monkeypatch, locked)
    out = tmp_path / "run"
    for flags, words in [
        (["--seed", "-1"], "--seed"),
        (["--seed", "99999999999"], "--seed"),
        (["--max-per-level", "0"], "--max-per-level"),
        (["--max-per-level", "-2"], "--max-per-level"),
        (["--backbone-weights", str(empty)], "is empty (0 bytes)"),
        (["--out", str(a_file)], "it is a file, not a folder"),
        (["--out", str(a_file / "run")], "is a file, not a folder"),
        (["--out", "/proc/edge-smw-run"], "--out"),
        (["--out", str(locked / "run")], "Read-only file system"),
    ]:
        argv = ["train", "--data", str(small_labelled_folder), "--levels",
                ",".join(SMILES_LEVELS), "--out", str(out), *flags]
        assert main(argv) == 2, flags
        assert words in _one_line_error(capsys), flags
        assert not out.exists() and not (locked / "run").exists()
    assert a_file.read_bytes() == b"\xff\xd8 not really"


def test_evaluate_outputs_are_checked_before_scoring(smiles_onnx, small_labelled_folder,
                                                    tmp_path, monkeypatch, capsys):
    """An output path that is a folder, a file or read-only: one line naming the option,
    before any image is scored, and an existing output left as it was."""
    import edge_smw.predict
    from edge_smw.atomic import write_text
    from edge_smw.errors import InputError

    def no_scoring(*_a, **_k):
        raise AssertionError("scored before the outputs were checked")

    monkeypatch.setattr(edge_smw.predict, "predict_items", no_scoring)
    kept = tmp_path / "kept.csv"
    kept.write_text("previous predictions\n")
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(monkeypatch, locked)
    for flags, words in [
        (["--predictions", str(tmp_path)], "is a folder, not a file; give a file path for "
                                           "--predictions"),
        (["--predictions", str(kept / "p.csv")], "--predictions"),
        (["--predictions", str(locked / "p.csv")], "Read-only file system"),
        (["--out", str(kept)], "choose a writable --out folder"),
        (["--out", str(locked / "rep")], "Read-only file system"),
    ]:
        assert main(["evaluate", str(smiles_onnx), "--data", str(small_labelled_folder),
                     "--no-detect", *flags]) == 2, flags
        assert words in _one_line_error(capsys), flags
    assert kept.read_text() == "previous predictions\n"
    # the same for every writer of a file, not only the checked options (compare --out ...)
    with pytest.raises(InputError, match="is a folder, not a file"):
        write_text(tmp_path, "text")
    assert not list(tmp_path.glob(".*.tmp"))


def test_evaluate_says_loudly_when_csv_rows_point_to_missing_files(
        smiles_onnx, small_labelled_folder, tmp_path, capsys):
    """A CSV read from the wrong folder used to score the one row left and report 100%."""
    lists = tmp_path / "lists"
    lists.mkdir()
    found = [p for p in sorted(small_labelled_folder.glob("*/*.jpg")) if p.name != "broken.jpg"]
    # relative to the data's folder, not to the CSV's: all but one row miss
    rows = [f"{p.relative_to(small_labelled_folder)},{p.parent.name}" for p in found]
    some = lists / "some.csv"
    some.write_text("path,score\n" + "\n".join(rows + [f"{found[0]},{found[0].parent.name}"]))
    code = main(["evaluate", str(smiles_onnx), "--data", str(some), "--no-detect", "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out)["n"] == 1
    [warning] = err.strip().splitlines()
    assert f"{len(rows)} of {len(rows) + 1} rows skipped" in warning
    assert str(lists / rows[0].split(",")[0]) in warning
    assert "relative to its folder" in warning
    every = lists / "every.csv"
    every.write_text("path,score\n" + "\n".join(rows))
    assert main(["evaluate", str(smiles_onnx), "--data", str(every), "--no-detect"]) == 2
    line = _one_line_error(capsys)
    assert f"no usable images among {len(rows)}" in line
    assert str(lists / rows[0].split(",")[0]) in line and "relative to its folder" in line


def test_bad_values_and_outs_are_one_line_before_the_slow_work(smiles_run, smiles_onnx,
                                                               small_labelled_folder, tmp_path,
                                                               monkeypatch, capsys):
    """Values and outputs each command used to check only after its slow part (parity,
    calibration, timing, an attack) or never: one line naming the flag, nothing written."""
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    photos = small_labelled_folder
    export_dir = smiles_onnx.parent
    cases = [
        (["bench", export_dir, "--threads", "100000"], "--threads=100000 is more than"),
        (["bench", export_dir, "--detector", "foo"], "unknown face detector 'foo'"),
        (["bench", export_dir, "--detector", tmp_path / "nope.onnx"], "file not found"),
        (["export", smiles_run, "--out", tmp_path / "e", "--calib-data", photos],
         "add --int8, or leave --calib-data out"),
        (["export", smiles_run, "--out", tmp_path / "e", "--int8", "--workspace-mb", "-1"],
         "--workspace-mb -1: give at least 16 MB"),
        (["export", smiles_run, "--out", tmp_path / "e", "--int8", "--dla-core", "-5"],
         "--dla-core -5"),
        (["compare", smiles_run, "--out", tmp_path], "give a file path for --out"),
        (["fool", smiles_run, photos, "--target", "smiling", "--out", a_file],
         "choose a writable --out folder"),
        (["explain", smiles_run, photos, "--out", a_file], "choose a writable --out folder"),
        (["quant-report", export_dir, "--out", a_file], "choose a writable --out folder"),
        (["score", smiles_onnx, photos, "--threads", "0"], "--threads must be a whole number"),
        (["score", smiles_onnx, photos, "--max-faces", "0"], "--max-faces must be"),
    ]
    for argv, words in cases:
        assert main([str(a) for a in argv]) == 2, argv
        assert words in _one_line_error(capsys), argv
    assert a_file.read_text() == "mine" and not (tmp_path / "e").exists()
