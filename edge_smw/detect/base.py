"""What every face detector is: an image in, detections out (box, score, landmarks).

Detectors are small objects with one ``detect`` method so the runtime, the crop loader, bench,
serve and label can hold any of them, and a DNN detector can keep its network open (on the
same backend as the scorer) between frames.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_smw.contract import Box, DetectorSpec, Point


@dataclass(frozen=True)
class Detection:
    """One face: its box (x, y, w, h) in the image's pixels, a score and, where the detector
    gives them, named landmarks in the image's pixels."""

    box: Box
    score: float
    landmarks: dict[str, Point] | None = None

    @property
    def eyes(self) -> tuple[Point, Point] | None:
        """(subject's right eye, subject's left eye), the order ``crop_face`` aligns with."""
        if not self.landmarks or "right_eye" not in self.landmarks:
            return None
        return self.landmarks["right_eye"], self.landmarks["left_eye"]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"box": list(self.box), "score": round(float(self.score), 4)}
        if self.landmarks:
            out["landmarks"] = {k: [round(float(x), 1), round(float(y), 1)]
                                for k, (x, y) in self.landmarks.items()}
        return out


class FaceDetector(abc.ABC):
    """``detect(image) -> detections``, largest face first; ``close`` frees its network."""

    #: the name recorded in contracts (``haar``, ``blazeface-short``, an ONNX file's own name)
    name: str = "detector"
    #: which backend runs it (``opencv`` for Haar, a runner name for DNN detectors)
    backend: str = "cpu"
    gives_landmarks: bool = False
    #: set when this detector stands in for another whose weights are missing (warned once)
    fallback_for: str | None = None

    def __init__(self, spec: DetectorSpec) -> None:
        self.spec = spec

    @abc.abstractmethod
    def detect(self, image_bgr: np.ndarray, *, max_faces: int | None = None) -> list[Detection]:
        """Faces in a uint8 BGR (or gray) image, largest first, at most ``max_faces``."""

    def close(self) -> None:  # noqa: B027 - optional: only network-backed detectors override
        """Release the detector's network (idempotent); Haar has nothing to release."""

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.describe()!r}, backend={self.backend!r})"


def largest_first(found: list[Detection], max_faces: int | None) -> list[Detection]:
    found.sort(key=lambda d: d.box[2] * d.box[3], reverse=True)
    return found[:max_faces] if max_faces else found
