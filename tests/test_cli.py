"""The CLI: every subcommand listed with examples, JSON where promised, one-line errors."""

from __future__ import annotations

import csv
import json
import shutil

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
