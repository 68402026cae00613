"""Per-face temporal smoothing and the scoring thread.

A face's raw score jumps from frame to frame (pose, blur, detector jitter), so the display and
the auto-capture trigger use a smoothed score. Faces are followed across frames by box overlap
(IoU); each followed face ("track") smooths its probability vector, either exponentially or
over a sliding window, and the smoothed level and expected score are read from that vector,
so smoothed level and smoothed score always agree.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_smw.contract import Box
from edge_smw.errors import EdgeSmwError, InputError
from edge_smw.runtime import FaceScore, Runtime
from edge_smw.serve.sources import Frame, FrameSlot

log = logging.getLogger("edge_smw.serve.scoring")

SMOOTHING_METHODS = ("ema", "window", "none")


@dataclass(frozen=True)
class SmoothingOptions:
    """``ema``: s = alpha * new + (1 - alpha) * s; ``window``: mean of the last ``window``."""

    method: str = "ema"
    alpha: float = 0.5
    window: int = 5
    match_iou: float = 0.3  # a box overlapping a track's last box this much is the same face
    max_missed: int = 5  # frames a face may go undetected before its track is forgotten

    def __post_init__(self) -> None:
        if self.method not in SMOOTHING_METHODS:
            raise InputError(f"--smooth must be one of {', '.join(SMOOTHING_METHODS)}, "
                             f"got {self.method!r}")
        if not 0.0 < self.alpha <= 1.0:
            raise InputError(f"--smooth-alpha must be in (0, 1], got {self.alpha}")
        if self.window < 1:
            raise InputError(f"--smooth-window must be >= 1 frame, got {self.window}")
        if not 0.0 < self.match_iou <= 1.0:
            raise InputError(f"match IoU must be in (0, 1], got {self.match_iou}")
        if self.max_missed < 0:
            raise InputError(f"max missed frames must be >= 0, got {self.max_missed}")


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


@dataclass
class _Track:
    id: int
    box: Box
    history: deque[np.ndarray]
    smoothed: np.ndarray
    missed: int = 0
    seen: int = 0


@dataclass
class TrackedFace:
    """One face in one scored frame: the raw score and its track's smoothed score."""

    track: int
    face: FaceScore
    smoothed_probabilities: np.ndarray
    smoothed_score: float
    smoothed_level: int
    frames_tracked: int

    def to_dict(self, levels: Sequence[str]) -> dict[str, Any]:
        d = self.face.to_dict()
        d.update({
            "track": self.track,
            "smoothed_score": round(float(self.smoothed_score), 4),
            "smoothed_level": levels[self.smoothed_level],
            "smoothed_probabilities": [round(float(p), 6) for p in self.smoothed_probabilities],
            "frames_tracked": self.frames_tracked,
        })
        return d


class FaceTracker:
    """Follows faces across frames by IoU and smooths each one's probabilities."""

    def __init__(self, options: SmoothingOptions, num_levels: int) -> None:
        self.options = options
        self.scores = np.arange(1, num_levels + 1, dtype=np.float64)
        self.tracks: list[_Track] = []
        self._ids = itertools.count(1)

    def update(self, faces: Sequence[FaceScore]) -> list[TrackedFace]:
        """Match ``faces`` to tracks (greedy, highest IoU first), smooth, age out lost tracks."""
        pairs = sorted(
            ((iou(t.box, f.box), ti, fi) for ti, t in enumerate(self.tracks)
             for fi, f in enumerate(faces) if f.box is not None),
            reverse=True,
        )
        track_of: dict[int, _Track] = {}
        used: set[int] = set()
        for overlap, ti, fi in pairs:
            if overlap < self.options.match_iou:
                break
            if ti in used or fi in track_of:
                continue
            used.add(ti)
            track_of[fi] = self.tracks[ti]
        for ti, track in enumerate(self.tracks):
            if ti not in used:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.options.max_missed]
        out = []
        for fi, face in enumerate(faces):
            probs = np.asarray(face.probabilities, dtype=np.float64)
            track = track_of.get(fi)
            if track is None:
                track = _Track(next(self._ids), face.box or (0, 0, 0, 0),
                               deque(maxlen=self.options.window), probs.copy())
                self.tracks.append(track)
            else:
                track.missed = 0
                track.box = face.box or track.box
                if self.options.method == "ema":
                    a = self.options.alpha
                    track.smoothed = a * probs + (1.0 - a) * track.smoothed
            track.seen += 1
            track.history.append(probs)
            if self.options.method == "window":
                track.smoothed = np.mean(np.stack(track.history), axis=0)
            elif self.options.method == "none":
                track.smoothed = probs
            smoothed = track.smoothed
            out.append(TrackedFace(track.id, face, smoothed.copy(), float(smoothed @ self.scores),
                                   int(smoothed.argmax()), track.seen))
        return out


@dataclass
class ScoredFrame:
    """A captured frame with its faces scored and smoothed."""

    frame: Frame
    faces: list[TrackedFace]
    timings: dict[str, float]  # milliseconds, from Runtime.score
    scored_at: float = field(default_factory=time.time)

    @property
    def best(self) -> TrackedFace | None:
        return max(self.faces, key=lambda f: f.smoothed_score) if self.faces else None

    def to_dict(self, levels: Sequence[str]) -> dict[str, Any]:
        best = self.best
        h, w = self.frame.image.shape[:2]
        return {
            "time": round(self.frame.time, 3),
            "scored_at": round(self.scored_at, 3),
            "frame": self.frame.number,
            "position": self.frame.position,
            "width": w,
            "height": h,
            "faces": [f.to_dict(levels) for f in self.faces],
            "best": None if best is None else {
                "track": best.track,
                "level": levels[best.smoothed_level],
                "smoothed_score": round(best.smoothed_score, 4),
                "expected_score": round(best.face.expected_score, 4),
            },
            "timings_ms": {k: round(v, 3) for k, v in self.timings.items()},
        }


class ScoringThread(threading.Thread):
    """Scores the newest captured frame, over and over; never a queue of old frames."""

    def __init__(self, runtime: Runtime, slot: FrameSlot, tracker: FaceTracker,
                 on_scored: Callable[[ScoredFrame], None],
                 on_error: Callable[[Exception], None] | None = None) -> None:
        super().__init__(name="edge-smw-scoring", daemon=True)
        self.runtime = runtime
        self.slot = slot
        self.tracker = tracker
        self.on_scored = on_scored
        self.on_error = on_error
        self._halt = threading.Event()
        self._last_error = ""

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self._halt.is_set():
            frame = self.slot.take(timeout=0.25)
            if frame is None:
                continue
            try:
                result = self.runtime.score(frame.image)
            except Exception as exc:  # a bad frame, a model or backend error: report, go on
                text = str(exc) if isinstance(exc, EdgeSmwError) else \
                    f"{type(exc).__name__}: {exc}"
                if text != self._last_error:  # once per distinct error, not once per frame
                    log.error("scoring frame %d failed: %s", frame.number, text)
                    self._last_error = text
                if self.on_error:
                    self.on_error(exc)
                continue
            try:
                tracked = self.tracker.update(result.faces)
                self.on_scored(ScoredFrame(frame, tracked, result.timings))
            except Exception:  # a bug downstream must not silently stop a camera service
                log.exception("handling scored frame %d failed", frame.number)
