"""edge-smw compare: runs side by side from their train.json, exports timed together."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from edge_smw.cli.main import main


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["compare", *argv])
    return code, out.getvalue(), err.getvalue()


def test_rows_are_the_runs_own_figures(smiles_run: Path) -> None:
    from edge_smw.train.compare import compare, markdown

    summary = json.loads((smiles_run / "train.json").read_text())
    result = compare([smiles_run])
    (row,) = result["rows"]
    test = summary["losses"][summary["loss"]]["test"]
    assert row["saved"] and row["loss"] == summary["loss"] and row["head"] == "linear"
    assert row["accuracy"] == test["accuracy"] and row["mae"] == test["mae"]
    assert row["epoch"] == summary["losses"][summary["loss"]]["best_epoch"]
    assert row["train_seconds"] == summary["seconds"]["total"]
    assert set(row["per_level"]) == set(summary["levels"])
    table = markdown(result)
    assert f"{100 * test['accuracy']:.1f}%" in table and "not_smiling acc / MAE" in table


@pytest.fixture(scope="module")
def smiles_export(smiles_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32 + cpu INT8 export of ``smiles_run``, written whatever its gate says (compare
    reports the gate; it does not judge it)."""
    from edge_smw.export.pipeline import export_model
    from edge_smw.export.settings import ExportSettings

    out = tmp_path_factory.mktemp("compare_export")
    export_model(smiles_run, out, ExportSettings(int8=True, flavours=("cpu",), latency_runs=3,
                                                 force=True), progress=False)
    return out


def test_exports_are_timed_together_and_their_int8_gate_read(smiles_run: Path,
                                                             smiles_export: Path) -> None:
    from edge_smw.artifacts.formats import FP32, INT8_CPU

    export = smiles_export
    facts = json.loads((export / "export.json").read_text())["models"][INT8_CPU.key]
    code, out, err = run_cli(str(smiles_run), str(smiles_run), "--exports", str(export),
                             str(export), "--latency-runs", "3", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert len(result["rows"]) == 2 and len(result["exports"]) == 2
    first = result["exports"][0]
    assert first["int8_agreement"] == facts["parity"]["top1_agreement"]
    assert first["int8_gate_passed"] is facts["gate"]["passed"]
    assert set(first["latency_ms_p50"]) == {FP32.key, INT8_CPU.key}
    assert all(ms > 0 for ms in first["latency_ms_p50"].values())
    assert first["latency_vs_first"] == {FP32.key: 1.0, INT8_CPU.key: 1.0}
    assert first["latency_vs_first_range"] == {FP32.key: [1.0, 1.0], INT8_CPU.key: [1.0, 1.0]}
    second = result["exports"][1]  # the same files, timed as another run's: ratios per round
    for key, (low, high) in second["latency_vs_first_range"].items():
        assert 0 < low <= second["latency_vs_first"][key] <= high
    assert result["latency"]["rounds"] == 5
    code, out, err = run_cli(str(smiles_run), "--exports", str(export), "--latency-runs", "3")
    assert code == 0 and "1.00x (1.00-1.00)" in out, out + err


def _a_checkpoint_file(tmp: Path) -> list[str]:
    (tmp / "checkpoint.pt").write_bytes(b"a checkpoint, not its run folder")
    return [str(tmp / "checkpoint.pt")]


@pytest.mark.parametrize("make, expected", [
    (lambda tmp: [str(tmp)], "train.json not found"),
    (lambda tmp: [str(tmp), "--exports", str(tmp), str(tmp)], "2 export folders for 1 runs"),
    (lambda tmp: [str(tmp), "--exports", str(tmp), "--latency-runs", "0"],
     "--latency-runs must be >= 1, got 0"),
    (lambda tmp: [str(tmp), "--exports", str(tmp), "--latency-runs", "-1"],
     "--latency-runs must be >= 1, got -1"),
    (_a_checkpoint_file, "checkpoint.pt is not a folder: give a run folder made by"),
    (lambda tmp: [str(tmp / "absent")], "absent not found: give a run folder made by"),
])
def test_bad_input_is_one_clear_line(tmp_path: Path, make, expected: str) -> None:
    code, _, err = run_cli(*make(tmp_path))
    assert code == 2 and expected in err and "Traceback" not in err


def test_an_export_of_another_run_or_a_corrupt_model_is_refused(smiles_run: Path,
                                                                 tmp_path: Path) -> None:
    """Export figures are only reported for the run they were exported from (by checkpoint
    sha256, as bench checks), and a model that cannot be loaded is named, not a traceback."""
    from edge_smw.artifacts.folders import ExportDir, RunDir
    from edge_smw.artifacts.formats import INT8_CPU
    from edge_smw.cache import file_sha256

    export = ExportDir(tmp_path / "export")
    export.path.mkdir()
    export.export_json.write_text(json.dumps({"source": {
        "checkpoint_sha256": file_sha256(RunDir(smiles_run).checkpoint)}, "models": {}}))
    other = tmp_path / "other"
    other.mkdir()
    for path in (RunDir(smiles_run).train_json, RunDir(smiles_run).checkpoint):
        (other / path.name).write_bytes(path.read_bytes())
    RunDir(other).checkpoint.write_bytes(b"another run's checkpoint")
    code, _, err = run_cli(str(smiles_run), str(other), "--exports", str(export.path),
                           str(export.path))
    assert code == 2 and "Traceback" not in err
    assert f"{export.path} was exported from checkpoint" in err and str(other) in err
    (export.path / INT8_CPU.file_name).write_bytes(b"\x08\x07truncated")
    code, _, err = run_cli(str(smiles_run), "--exports", str(export.path))
    assert code == 2 and "Traceback" not in err
    assert f"{INT8_CPU.file_name} cannot be loaded" in err and "re-export" in err
