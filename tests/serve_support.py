"""Helpers for the serve tests: camera footage made of real face crops, and a served process.

The footage: real SMILEsmileD crops (64x64 grey) upscaled to 160x160 and pasted into 640x480
frames on a gradient background, so OpenCV's Haar detector finds them as it would a face in
front of a camera; written as an mp4v video with cv2.VideoWriter (or as a folder of PNGs).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
FRAME_W, FRAME_H, FACE = 640, 480, 160


def background(seed: int = 0) -> np.ndarray:
    ramp = np.tile(np.linspace(40, 200, FRAME_W, dtype=np.float32), (FRAME_H, 1))
    return cv2.merge([ramp, ramp * 0.8, 255 - ramp]).astype(np.uint8)


def face_frame(crop: np.ndarray, x: int = 240, y: int = 160, size: int = FACE) -> np.ndarray:
    """A 640x480 BGR frame with ``crop`` upscaled to ``size`` pasted at (x, y)."""
    frame = background()
    face = cv2.resize(crop, (size, size), interpolation=cv2.INTER_CUBIC)
    if face.ndim == 2:
        face = cv2.cvtColor(face, cv2.COLOR_GRAY2BGR)
    frame[y : y + size, x : x + size] = face
    return frame


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write mp4v to {path}")
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def read_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.1,
               what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def http(url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None,
         method: str | None = None, timeout: float = 20) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) without raising on 4xx/5xx."""
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(url: str, **kwargs: Any) -> tuple[int, Any]:
    status, _, body = http(url, **kwargs)
    return status, json.loads(body)


def metrics(url: str, token: str | None = None) -> dict[str, float]:
    from edge_smw.serve.metrics import parse_text

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, _, body = http(url + "/metrics", headers=headers)
    assert status == 200, body
    return parse_text(body.decode())


class ServeProcess:
    """``edge-smw serve`` in a subprocess on 127.0.0.1 and a free port."""

    def __init__(self, args: Sequence[str], *, env: dict[str, str] | None = None,
                 start_timeout: float = 90) -> None:
        args = [str(a) for a in args]
        cmd = [sys.executable, "-m", "edge_smw.cli.main", "serve", "--host", "127.0.0.1",
               "--port", "0", *args]
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        full_env.update(env or {})
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._ready = threading.Event()
        self.url = ""
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout, True),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr, False),
                         daemon=True).start()
        deadline = time.monotonic() + start_timeout
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"serve did not start (rc {self.proc.returncode}):\n"
                                     + self.log())

    def _pump(self, stream: Any, sink: list[str], watch: bool) -> None:
        for line in stream:
            sink.append(line)
            if watch:
                match = re.search(r"listening on (http://\S+?)/?$", line.strip())
                if match:
                    self.url = match.group(1).rstrip("/")
                    self._ready.set()

    def log(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- footage -----------------------------------------------------------------------------------
class Footage:
    """A video of real faces: [gap, not-smiling faces, gap, smiling faces, gap].

    ``scores[i]`` is the Runtime's expected score of the largest face in decoded frame ``i``
    (None where no face is found); ``threshold`` is the middle of the score range.
    """

    GAP = 10  # face-free frames between segments: tracks and streaks end there
    HOLD = 8  # frames each crop stays in view

    def __init__(self, smiles_dir: Path, model: Path, out_dir: Path, fps: float = 10.0) -> None:
        from edge_smw import Runtime
        from edge_smw.images import read_image

        self.model = model
        self.runtime = Runtime(model, backend="onnxruntime-cpu", threads=1, detect_faces=True)
        picks: dict[str, list[tuple[float, np.ndarray]]] = {}
        for level in ("not_smiling", "smiling"):
            found = []
            for path in sorted((smiles_dir / level).iterdir())[:24]:
                crop = read_image(path)
                faces = self.runtime.score(face_frame(crop)).faces
                if len(faces) == 1:
                    score = faces[0].expected_score
                    found.append((score if level == "not_smiling" else -score, crop))
            found.sort(key=lambda item: item[0])
            picks[level] = found[:3]
        assert len(picks["not_smiling"]) == 3 and len(picks["smiling"]) == 3, \
            "too few detectable crops in the shared SMILEsmileD folder"
        gap = [background()] * self.GAP
        frames: list[np.ndarray] = list(gap)
        self.low = (len(frames), len(frames) + 3 * self.HOLD)
        for _, crop in picks["not_smiling"]:
            frames += [face_frame(crop, x=200)] * self.HOLD
        frames += gap
        self.high = (len(frames), len(frames) + 3 * self.HOLD)
        for _, crop in picks["smiling"]:
            frames += [face_frame(crop, x=200)] * self.HOLD
        frames += gap
        self.fps = fps
        self.video = write_video(out_dir / "faces.mp4", frames, fps)
        self.frames = read_video(self.video)  # what the camera side will decode
        assert len(self.frames) == len(frames)
        self.scores: list[float | None] = []
        for frame in self.frames:
            faces = self.runtime.score(frame).faces
            self.scores.append(faces[0].expected_score if faces else None)
        # The model is very sure (scores near 1 or 2) and sensitive to the exact face box,
        # which video compression shifts by a pixel or two: the tests compare against these
        # decoded-frame scores, never against the crops' labels.
        k = len(self.runtime.levels)
        self.threshold = (1 + k) / 2
        above = [s is not None and s >= self.threshold for s in self.scores]
        below = [s is not None and s < self.threshold for s in self.scores]
        run = best = 0
        for flag in above:
            run = run + 1 if flag else 0
            best = max(best, run)
        assert sum(above) >= self.HOLD and sum(below) >= self.HOLD and best >= 4, (
            f"footage lacks high- and low-scoring faces: {self.scores}")

    def write_folder(self, folder: Path, step: int = 1) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(self.frames[::step]):
            cv2.imwrite(str(folder / f"frame{i * step:04d}.png"), frame)
        return folder

    def jpeg(self, index: int, quality: int = 92) -> bytes:
        ok, buf = cv2.imencode(".jpg", self.frames[index], [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        return buf.tobytes()


_FOOTAGE: dict[tuple[str, str], Footage] = {}


def get_footage(smiles_dir: Path, model: Path, out_dir: Callable[[], Path]) -> Footage:
    """One Footage per model for the whole session (several test modules share it)."""
    key = (str(smiles_dir), str(model))
    if key not in _FOOTAGE:
        _FOOTAGE[key] = Footage(smiles_dir, model, out_dir())
    return _FOOTAGE[key]


def read_events(url: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    """The first ``count`` server-sent ``data:`` events of ``url``, parsed as JSON."""
    events: list[dict[str, Any]] = []
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        for raw in resp:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
                if len(events) >= count:
                    break
    return events


def read_mjpeg(url: str, count: int, timeout: float = 60,
               until: Callable[[bytes], bool] | None = None) -> list[bytes]:
    """The first ``count`` JPEG parts of a multipart MJPEG stream (or up to the first part
    for which ``until`` is true)."""
    parts: list[bytes] = []
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        ctype = resp.headers["Content-Type"]
        assert ctype.startswith("multipart/x-mixed-replace"), ctype
        boundary = ("--" + ctype.split("boundary=")[1]).encode()
        while len(parts) < count:
            line = resp.readline()
            if not line:
                break
            if line.strip() != boundary:
                continue
            headers = {}
            while True:
                h = resp.readline().strip()
                if not h:
                    break
                k, _, v = h.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            parts.append(resp.read(int(headers["content-length"])))
            if until is not None and until(parts[-1]):
                break
    return parts


def green_pixels(image_bgr: np.ndarray) -> int:
    """Pixels of the stream's face-box green (the footage itself has none: grey faces on a
    red-to-blue gradient)."""
    b, g, r = (image_bgr[..., i].astype(int) for i in range(3))
    return int(np.count_nonzero((g > 150) & (r < 100) & (b < 100)))
