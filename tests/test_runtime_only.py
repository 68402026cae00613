"""The runtime-only install (`pip install .`, no extras): scoring works, and every command
that needs an extra says which one in one line (exit 2), never with a traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import tomllib

from edge_smw.cli.main import EXTRA_FOR_MODULE

REPO = Path(__file__).resolve().parents[1]

# What a runtime-only environment lacks: every module an extra brings.
_RUNTIME_ONLY = r"""
import contextlib, io, json, sys

for name in json.loads(sys.argv[1]):  # as if not installed: import fails, find_spec is None
    sys.modules[name] = None
from edge_smw.cli.main import main
results = {}
for argv in json.loads(sys.argv[2]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    results[" ".join(argv[:1])] = {"code": code, "stderr": err.getvalue()}
print(json.dumps(results))
"""


def test_commands_name_the_extra_they_need(smiles_run: Path, smiles_onnx: Path,
                                           smiles_test_items, tmp_path: Path) -> None:
    crop = str(smiles_test_items[0].path)
    folder = str(Path(crop).parent)
    commands = [
        ["train", "--data", "synthetic", "--out", str(tmp_path / "run")],
        ["export", str(smiles_run), "--out", str(tmp_path / "export")],
        ["explain", str(smiles_run), crop, "--out", str(tmp_path / "heat")],
        ["serve", "--model", str(smiles_onnx), "--camera", folder],
        ["evaluate", str(smiles_run), "--data", folder],
        ["fool", str(smiles_run), crop, "--target", "smiling", "--out", str(tmp_path / "f")],
    ]
    proc = subprocess.run([sys.executable, "-c", _RUNTIME_ONLY, json.dumps(list(EXTRA_FOR_MODULE)),
                           json.dumps(commands)], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    for name, result in results.items():
        err = result["stderr"].strip()
        assert result["code"] == 2, (name, err)
        assert "Traceback" not in err and len(err.splitlines()) == 1, (name, err)
        extra = "serve" if name == "serve" else "train"
        assert f"pip install 'edge-smw[{extra}]'" in err, (name, err)


def test_bench_without_torch_says_torch_is_missing(smiles_onnx: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.onnx").write_bytes(smiles_onnx.read_bytes())  # no export.json, no run
    proc = subprocess.run([sys.executable, "-c", _RUNTIME_ONLY, json.dumps(["torch"]),
                           json.dumps([["bench", str(export), "--out", str(tmp_path / "b")]])],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)["bench"]
    assert result["code"] == 2
    assert "needs torch" in result["stderr"] and "--golden check" in result["stderr"]
    assert "cannot find the torch checkpoint" not in result["stderr"]


def test_extra_table_matches_pyproject() -> None:
    """Every module the CLI maps to an extra is installed by that extra."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    for module, extra in EXTRA_FOR_MODULE.items():
        assert extra in extras, (module, extra)
        wanted = {re.split(r"[<>=!~\[; ]", r)[0].lower().replace("_", "-")
                  for r in extras[extra]}
        owners = {d.lower().replace("_", "-") for d in dists.get(module, [])}
        assert owners & wanted or not owners, (module, extra, owners, wanted)
