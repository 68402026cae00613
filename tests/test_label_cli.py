"""``edge-smw label`` as a user runs it: a real process, a real port, Ctrl-C at the end."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from edge_smw.data.datasets import load_dataset
from edge_smw.label.server import TOKEN_HEADER
from tests.label_support import copy_crops, start_label, stop, write_corrupt

REPO = Path(__file__).resolve().parents[1]


def post(base: str, token: str, route: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{base}{route}", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", TOKEN_HEADER: token})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def test_cli_serves_saves_and_stops_cleanly(smiles_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    copy_crops(smiles_dir, folder, 4)
    write_corrupt(folder / "broken.jpg", smiles_dir)
    csv_path = tmp_path / "out" / "labels.csv"
    proc, url = start_label(str(folder), "--levels", "not_smiling,smiling", "--labels",
                            str(csv_path), "--no-detect")
    try:
        base, token = url.split("/?token=")
        with urllib.request.urlopen(urllib.request.Request(
                f"{base}/api/state", headers={TOKEN_HEADER: token}), timeout=30) as response:
            state = json.load(response)
        assert state["levels"] == ["not_smiling", "smiling"] and state["total"] == 5
        post(base, token, "/api/label", {"path": "crop000.jpg", "score": "smiling"})
        post(base, token, "/api/label", {"path": "crop001.jpg", "score": "not_smiling"})
        post(base, token, "/api/skip", {"path": "crop002.jpg"})
        with urllib.request.urlopen(urllib.request.Request(
                f"{base}/api/photo?path=broken.jpg", headers={TOKEN_HEADER: token}),
                timeout=30) as response:
            assert json.load(response)["error"]
    finally:
        code, out = stop(proc)
    assert code == 0, out
    assert f"saved 2 labels (1 skipped) to {csv_path}" in out
    assert "unreadable, skipped: broken.jpg" in out
    assert f"edge-smw train --data {csv_path} --levels not_smiling,smiling" in out
    assert "--no-detect" in out.splitlines()[-1]
    assert "Traceback" not in out
    dataset = load_dataset(csv_path, levels=("not_smiling", "smiling"))
    assert sorted((i.path.name, i.level) for i in dataset.items) == [("crop000.jpg", 1),
                                                                      ("crop001.jpg", 0)]
    assert not (csv_path.parent / ".labels.csv.lock").exists()


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "is not a folder"),
    (["{folder}", "--levels", "1"], "at least 2"),
    (["{folder}", "--order", "uncertainty"], "--model"),
    (["{folder}", "--model", "{folder}/nothing.onnx"], "not found"),
    (["{folder}", "--levels", "a,,b"], "a level name is empty"),
    (["{folder}", "--labels", "{semi}", "--levels", "a,b"], "expected a 'path,score' row"),
])
def test_cli_errors_are_one_line_exit_2(smiles_dir: Path, tmp_path: Path, args: list[str],
                                        message: str) -> None:
    folder = tmp_path / "photos"
    copy_crops(smiles_dir, folder, 1)
    semi = tmp_path / "semi.csv"
    semi.write_text("crop000.jpg;a\n", encoding="utf-8")
    argv = [a.format(folder=folder, missing=tmp_path / "missing", semi=semi) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "edge_smw.cli.main", "label", *argv, "--no-browser"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-smw label: error:"), result.stderr
    assert message in lines[0]
    assert semi.read_text(encoding="utf-8") == "crop000.jpg;a\n"  # a refused file is untouched


def test_a_second_cli_on_the_same_csv_is_refused(smiles_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    copy_crops(smiles_dir, folder, 2)
    proc, _ = start_label(str(folder))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "edge_smw.cli.main", "label", str(folder), "--no-browser"],
            cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        code, out = stop(proc)
    assert result.returncode == 2 and "another `edge-smw label`" in result.stderr
    assert code == 0, out


def test_label_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "import edge_smw.label, edge_smw.cli.label\n"
        "from edge_smw.cli.main import build_parser\n"
        "build_parser().parse_args(['label', 'x'])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'torchvision', 'timm'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
