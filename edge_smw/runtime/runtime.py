"""``Runtime``: frames in, per-face scores out, on any backend, with no torch import.

faces (Haar) -> contract crop + normalise -> runner -> probabilities, level, expected score.
Everything about preprocessing and levels comes from the model's own metadata.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_smw.contract import Box
from edge_smw.errors import BackendUnavailableError, InputError, ModelError
from edge_smw.faces import detect_faces
from edge_smw.images import to_bgr
from edge_smw.metadata import OUTPUT_FEATURE_MAP, OUTPUT_PROBABILITIES, ModelInfo, sidecar_path
from edge_smw.runtime.backends import Runner, open_runner

log = logging.getLogger("edge_smw.runtime")

# Preference order for backend="auto", fastest first.
_AUTO_ORDER = ("onnxruntime-tensorrt", "onnxruntime-cuda", "onnxruntime-cpu")
# What an export folder offers, most deployable first.
_FOLDER_CANDIDATES = ("model.int8.onnx", "model.onnx", "model.fp16.onnx")


@dataclass
class FaceScore:
    """One face: where it is, how it scores."""

    box: Box | None
    probabilities: np.ndarray
    level: int  # 0-based index into levels
    level_name: str
    expected_score: float  # probability-weighted level, 1..K
    feature_map: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": list(self.box) if self.box is not None else None,
            "level": self.level_name,
            "level_index": self.level,
            "probabilities": [round(float(p), 6) for p in self.probabilities],
            "expected_score": round(float(self.expected_score), 4),
        }


@dataclass
class ScoreResult:
    faces: list[FaceScore]
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds
    frame_shape: tuple[int, ...] = ()

    @property
    def best(self) -> FaceScore | None:
        return max(self.faces, key=lambda f: f.expected_score) if self.faces else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "faces": [f.to_dict() for f in self.faces],
            "timings_ms": {k: round(v, 3) for k, v in self.timings.items()},
            "frame_shape": list(self.frame_shape),
        }


def resolve_model_path(model: str | Path) -> Path:
    """An .onnx or .engine file, or an export folder (its int8 model first, then fp32)."""
    path = Path(model)
    if path.is_dir():
        for name in _FOLDER_CANDIDATES:
            if (path / name).is_file():
                return path / name
        raise ModelError(f"{path} holds no exported model ({', '.join(_FOLDER_CANDIDATES)}); "
                         "run `edge-smw export RUN_DIR --out DIR` first")
    if not path.is_file():
        raise ModelError(f"model {path} not found")
    if path.suffix not in (".onnx", ".engine", ".plan"):
        raise ModelError(f"{path}: expected an .onnx or .engine model (or an export folder); a "
                         "training checkpoint must be exported first with `edge-smw export`")
    return path


class Runtime:
    """Score frames with an exported edge-smw model.

    ``backend``: ``onnxruntime-cpu``, ``onnxruntime-cuda``, ``onnxruntime-tensorrt``,
    ``tensorrt`` or ``auto`` (fastest available; the choice and why is logged).
    One instance may be shared by threads.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        backend: str = "auto",
        device: int = 0,
        threads: int | None = None,
        detect_faces: bool = True,
        max_faces: int = 5,
        warmup: bool = True,
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        self.path = resolve_model_path(model_path)
        self.detect = detect_faces
        self.max_faces = max_faces
        self._local = threading.local()
        self.runner = self._open(backend, device, threads, backend_options or {})
        if self.path.suffix == ".onnx":
            self.info = ModelInfo.from_props(self.runner.metadata(), source=self.path)
        else:
            self.info = ModelInfo.from_sidecar(sidecar_path(self.path))
        self.contract = self.info.contract
        self.levels = self.contract.levels
        self._scores = np.arange(1, len(self.levels) + 1, dtype=np.float64)
        if warmup:
            size = self.contract.input_size
            self.runner.infer(np.zeros((1, 3, size, size), np.float32))

    # -- lifecycle -------------------------------------------------------------------------
    def _open(self, backend: str, device: int, threads: int | None,
              options: dict[str, Any]) -> Runner:
        if backend != "auto":
            runner = open_runner(backend, self.path, device=device, threads=threads,
                                 options=options)
            runner.activate()
            return runner
        candidates = ("tensorrt",) if self.path.suffix != ".onnx" else _AUTO_ORDER
        reasons = []
        for name in candidates:
            try:
                runner = open_runner(name, self.path, device=device, threads=threads,
                                     options=options)
                runner.activate()
            except BackendUnavailableError as exc:
                reasons.append(f"{name}: {exc}")
                continue
            if reasons:
                log.info("backend auto -> %s (faster ones unavailable: %s)", name,
                         "; ".join(reasons))
            else:
                log.info("backend auto -> %s", name)
            return runner
        raise BackendUnavailableError("no backend can run " + str(self.path) + ": "
                                      + "; ".join(reasons))

    @property
    def backend(self) -> str:
        return self.runner.name

    def close(self) -> None:
        if self.runner.active:
            self.runner.deactivate()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- scoring ---------------------------------------------------------------------------
    def score(self, frame: np.ndarray, *, color: str = "bgr") -> ScoreResult:
        """Every detected face in ``frame`` (uint8, any size), best-first by size."""
        t0 = time.perf_counter()
        image = to_bgr(frame, color)
        if self.detect:
            boxes = detect_faces(image, max_faces=self.max_faces)
            crops = [self.contract.crop_face(image, box) for box in boxes]
        else:
            boxes = [(0, 0, image.shape[1], image.shape[0])]
            crops = [image]
        t1 = time.perf_counter()
        faces, prep_ms, infer_ms = self._score_crops(crops, boxes) if crops else ([], 0.0, 0.0)
        total = (time.perf_counter() - t0) * 1000
        timings = {"detect": (t1 - t0) * 1000, "preprocess": prep_ms, "infer": infer_ms,
                   "total": total}
        return ScoreResult(faces, timings, tuple(frame.shape))

    def score_crop(self, crop: np.ndarray, *, color: str = "bgr",
                   feature_map: bool = False) -> FaceScore:
        """One already-cropped face, scored whole."""
        faces, _, _ = self._score_crops([to_bgr(crop, color)], [None], feature_map)
        return faces[0]

    def score_batch(self, crops: Sequence[np.ndarray], *, color: str = "bgr",
                    feature_map: bool = False) -> list[FaceScore]:
        """Many crops in one inference call (split only where the model's batch limit says)."""
        if len(crops) == 0:
            return []
        faces, _, _ = self._score_crops([to_bgr(c, color) for c in crops], [None] * len(crops),
                                        feature_map)
        return faces

    def infer(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Raw network call on preprocessed NCHW float32 input (bench, parity, calibration)."""
        if inputs.dtype != np.float32 or inputs.ndim != 4:
            raise InputError(f"expected float32 NCHW input, got {inputs.dtype} {inputs.shape}")
        return self.runner.infer(inputs)

    def _buffer(self, n: int) -> np.ndarray:
        """A per-thread input buffer, reused across frames of the same batch size."""
        size = self.contract.input_size
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.shape[0] != n:
            buf = np.empty((n, 3, size, size), np.float32)
            self._local.buf = buf
        return buf

    def _score_crops(self, crops: list[np.ndarray], boxes: Sequence[Box | None],
                     feature_map: bool = False) -> tuple[list[FaceScore], float, float]:
        t0 = time.perf_counter()
        pixels = np.stack([self.contract.to_model_pixels(c) for c in crops])
        inputs = self.contract.normalize(pixels, out=self._buffer(len(crops)))
        t1 = time.perf_counter()
        limit = self.runner.max_batch or len(crops)
        parts = [self.runner.infer(inputs[i : i + limit]) for i in range(0, len(crops), limit)]
        outputs = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        t2 = time.perf_counter()
        probs = outputs[OUTPUT_PROBABILITIES].astype(np.float64)
        if not np.all(np.isfinite(probs)):
            raise ModelError(f"{self.path} produced non-finite probabilities; the model is "
                             "broken or was quantized badly: re-export it")
        maps = outputs.get(OUTPUT_FEATURE_MAP) if feature_map else None
        if feature_map and maps is None:
            raise ModelError(f"{self.path} has no feature_map output; export it with "
                             "`edge-smw export --feature-map` for heat maps on the device")
        expected = probs @ self._scores
        faces = [
            FaceScore(box, p, int(p.argmax()), self.levels[int(p.argmax())], float(e),
                      None if maps is None else maps[i])
            for i, (box, p, e) in enumerate(zip(boxes, probs, expected, strict=True))
        ]
        return faces, (t1 - t0) * 1000, (t2 - t1) * 1000
