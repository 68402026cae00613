"""The live page of edge-smw serve, loaded in a real headless browser (Debian's chromium).

Install it with scripts/install-test-deps.sh; without /usr/bin/chromium this test skips.
The page is opened with ?token=, so it also proves the page passes the token on to the
stream. The screenshot must show the MJPEG stream: the footage's red-to-blue background and
the green face boxes the service draws, inside the stream's place on the page.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.serve_support import ServeProcess, get_footage, green_pixels

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "browser-token"
# Where style.css puts the stream: 48 px header + 16 px padding, 640x480 (inset 8 px here).
STREAM_BOX = (slice(64 + 8, 64 + 480 - 8), slice(16 + 8, 16 + 640 - 8))

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium not installed (run scripts/install-test-deps.sh)")


@pytest.fixture(scope="session")
def footage(smiles_dir, smiles_onnx, tmp_path_factory):
    return get_footage(smiles_dir, smiles_onnx, lambda: tmp_path_factory.mktemp("footage"))


def screenshot(url: str, out: Path, profile: Path) -> np.ndarray:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
           f"--screenshot={out}", "--window-size=1280,900", "--hide-scrollbars", url]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.is_file(), f"chromium wrote no screenshot (rc {result.returncode}):\n" \
                          + result.stderr[-3000:]
    image = cv2.imread(str(out))
    assert image is not None and image.shape[:2] == (900, 1280), "unexpected screenshot size"
    return image


def test_live_page_shows_the_stream(footage, smiles_onnx, tmp_path):
    faces = [i for i, s in enumerate(footage.scores) if s is not None]
    folder = tmp_path / "frames"
    folder.mkdir()
    for n, i in enumerate(faces):  # every frame has a face, so every stream frame has a box
        cv2.imwrite(str(folder / f"f{n:03d}.png"), footage.frames[i])
    with ServeProcess(["--model", smiles_onnx, "--camera", folder, "--loop", "--fps", 8,
                       "--threads", 1, "--token", TOKEN]) as proc:
        image = screenshot(f"{proc.url}/?token={TOKEN}", tmp_path / "page.png",
                           tmp_path / "profile")
        assert proc.proc.poll() is None, proc.log()
    stream = image[STREAM_BOX]
    assert stream.std() > 20, "the stream area is blank"
    left, right = stream[:, :80].reshape(-1, 3).mean(0), stream[:, -80:].reshape(-1, 3).mean(0)
    assert left[2] - right[2] > 60 and right[0] - left[0] > 60, (
        f"the footage's red-to-blue background is not in the stream area: {left} {right}")
    assert green_pixels(stream) > 200, "no face box drawn in the stream area"
