"""Images built to exhaust a decoder: huge dimensions in a tiny file, in every way a header can
claim them, posted to ``serve`` and scored from disk.

Each must be refused as a 4xx with a one-line reason (never a 500), and a photo just under the
pixel limit must be decoded reduced, within a memory bound measured here in a child process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.faults.support import gif_header_only, jpeg_with_size, png_bomb, png_header_only
from tests.serve_support import REPO, ServeProcess, http, metrics

pytestmark = pytest.mark.faults

# 8,900 x 8,876 = 78,996,400 pixels: just under the 80-megapixel limit; about 230 KB as a PNG.
HUGE = (8900, 8876)


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    path.write_bytes(png_bomb(*HUGE))
    assert path.stat().st_size < 400_000
    return path


@pytest.fixture(scope="module")
def served(smiles_onnx, tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    cv2.imwrite(str(folder / "f.png"), np.full((120, 160, 3), 90, np.uint8))
    with ServeProcess(["--model", smiles_onnx, "--camera", folder, "--loop", "--threads",
                       1]) as proc:
        yield proc


def _hwm_kb(pid: int) -> int:
    """Peak resident memory of a process so far (VmHWM), in KB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _bombs(huge_png: Path) -> dict[str, bytes]:
    return {
        "png 100000x100000": png_header_only(100_000, 100_000),
        "png 1x4000000000": png_header_only(1, 4_000_000_000),
        "png 79 MP of zeros": huge_png.read_bytes(),  # over serve's 40 MP upload limit
        "png cut off mid-data": png_bomb(3000, 3000)[:3000],
        "gif 65535x65535": gif_header_only(65535, 65535),
        "jpeg 65000x65000": jpeg_with_size(65000, 65000),
        "tiff header only": b"II*\x00\x08\x00\x00\x00\x01\x00\x00\x01\x04\x00\x01\x00\x00\x00"
                            b"\xff\xff\x00\x00\x00\x00\x00\x00",
    }


def test_decompression_bombs_uploaded_are_refused_with_one_line(served, huge_png):
    before = _hwm_kb(served.proc.pid)
    for name, data in _bombs(huge_png).items():
        status, _, body = http(served.url + "/api/score", data=data,
                               headers={"Content-Type": "application/octet-stream"})
        assert 400 <= status < 500, (name, status, body[:300])
        error = json.loads(body)["error"]
        assert error and "\n" not in error, (name, error)
    # refused from the header: the server never held the decoded pixels
    assert _hwm_kb(served.proc.pid) - before < 150_000
    assert http(served.url + "/healthz")[0] == 200
    values = metrics(served.url)
    assert values.get('edge_smw_score_requests_total{code="500"}', 0) == 0
    assert "Traceback" not in served.log()


PEAK = r"""
import json, resource, sys
from edge_smw.cli.main import main
code = main(["score", sys.argv[1], sys.argv[2], "--json", "--threads", "1", "--no-detect"])
print(json.dumps({"code": code, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}),
      file=sys.stderr)
"""


def _score_peak_kb(model: Path, image: Path) -> tuple[int, list[dict], int]:
    """``edge-smw score`` in a fresh process: its exit code, JSON records and peak RSS."""
    proc = subprocess.run([sys.executable, "-c", PEAK, str(model), str(image)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return report["code"], records, report["peak_kb"]


def test_a_huge_png_is_scored_within_a_memory_bound(smiles_onnx, huge_png, tmp_path):
    """79 megapixels of RGB decode to 237 MB; before reduced decoding, `score` peaked near
    1.5 GB. Now the photo is box-reduced right after decoding, so the peak above the same
    command on a small photo stays well under 700 MB (measured: see docs/faults.md)."""
    small = tmp_path / "small.png"
    small.write_bytes(png_bomb(640, 480))
    code, _, baseline = _score_peak_kb(smiles_onnx, small)
    assert code == 0
    code, records, peak = _score_peak_kb(smiles_onnx, huge_png)
    assert code == 0 and len(records) == 1 and records[0]["face"] == 1, records
    assert peak - baseline < 700_000, (peak, baseline)
