"""Photo folders for the ``edge-smw label`` tests, built from the real SMILEsmileD crops.

The shared crops are 64x64 and cut tight to the face, too tight for the Haar detector, so
"photos" are made the way a camera frames a face: the real crop enlarged and set in a wider
frame. Only files the detector really finds one face in are used.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from edge_smw.detect import DetectorSpec, shared_detector
from edge_smw.images import read_image

REPO = Path(__file__).resolve().parents[1]


def framed(crop: np.ndarray) -> np.ndarray:
    """A real face crop as a wider photo: enlarged 3x, grey frame around it."""
    big = cv2.resize(crop, (192, 192), interpolation=cv2.INTER_CUBIC)
    return cv2.copyMakeBorder(big, 64, 64, 96, 96, cv2.BORDER_CONSTANT, value=(128, 128, 128))


def face_photos(smiles_dir: Path, count: int) -> list[np.ndarray]:
    """``count`` framed photos in which the detector finds exactly one face (deterministic)."""
    photos: list[np.ndarray] = []
    smiling = sorted((smiles_dir / "smiling").glob("*.jpg"))
    plain = sorted((smiles_dir / "not_smiling").glob("*.jpg"))
    for pair in zip(smiling, plain, strict=False):
        for path in pair:
            photo = framed(read_image(path))
            if len(photos) < count and len(shared_detector(DetectorSpec()).detect(photo)) == 1:
                photos.append(photo)
        if len(photos) == count:
            break
    if len(photos) < count:
        raise AssertionError(f"only {len(photos)} framed crops had a detectable face")
    return photos[:count]


def copy_crops(smiles_dir: Path, folder: Path, count: int) -> list[str]:
    """Copy ``count`` real crops (both levels, alternating) into ``folder``; their names."""
    folder.mkdir(parents=True, exist_ok=True)
    smiling = sorted((smiles_dir / "smiling").glob("*.jpg"))
    plain = sorted((smiles_dir / "not_smiling").glob("*.jpg"))
    names = []
    for i in range(count):
        src = (smiling if i % 2 == 0 else plain)[i // 2]
        name = f"crop{i:03d}.jpg"
        shutil.copyfile(src, folder / name)
        names.append(name)
    return names


def write_corrupt(path: Path, smiles_dir: Path) -> Path:
    """A JPEG cut off after its first 300 bytes, as an interrupted copy leaves it."""
    data = next((smiles_dir / "smiling").glob("*.jpg")).read_bytes()
    path.write_bytes(data[:300])
    return path


def start_label(*args: str) -> tuple[subprocess.Popen, str]:
    """Start ``edge-smw label ... --no-browser --port 0``; return it and the address it prints."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_smw.cli.main", "label", *args, "--no-browser",
         "--port", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        match = re.search(r"labelling at (http://127\.0\.0\.1:\d+/\?token=\S+)", line)
        if match:
            return proc, match.group(1)
    proc.wait(timeout=30)
    raise AssertionError("edge-smw label did not start:\n" + "".join(seen))


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out
