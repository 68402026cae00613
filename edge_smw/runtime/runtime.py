"""``Runtime``: frames in, per-face scores out, on any backend, with no torch import.

face detector (``edge_smw.detect``, on the scorer's backend) -> contract crop (aligned where
the contract says) + normalise -> runner -> probabilities, level, expected score.
Everything about preprocessing, the detector and levels comes from the model's own metadata.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from edge_smw.artifacts.folders import is_onnx, resolve_model_path
from edge_smw.artifacts.formats import CPU_BACKENDS, ENGINE_BACKENDS
from edge_smw.artifacts.sessions import check_threads
from edge_smw.contract import Box, DetectorSpec, Point
from edge_smw.detect import FaceDetector, open_detector, resolve_spec
from edge_smw.errors import BackendUnavailableError, InputError, ModelError
from edge_smw.faces import face_crops
from edge_smw.images import to_bgr
from edge_smw.metadata import (
    INPUT_NAME,
    OUTPUT_FEATURE_MAP,
    OUTPUT_PROBABILITIES,
    ModelInfo,
    sidecar_path,
)
from edge_smw.runtime.backends import Runner, open_runner

log = logging.getLogger("edge_smw.runtime")

# Preference order for backend="auto", fastest first.
_AUTO_ORDER = ("onnxruntime-tensorrt", "onnxruntime-cuda", "onnxruntime-cpu")

__all__ = ["FaceScore", "Runtime", "ScoreResult", "resolve_model_path"]


@dataclass
class FaceScore:
    """One face: where it is, how it scores."""

    box: Box | None
    probabilities: np.ndarray
    level: int  # 0-based index into levels
    level_name: str
    expected_score: float  # probability-weighted level, 1..K
    feature_map: np.ndarray | None = None
    detection_score: float | None = None  # the detector's confidence (Haar gives none: 1.0)
    landmarks: dict[str, Point] | None = None  # eyes, nose, mouth... where the detector gives them

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "box": list(self.box) if self.box is not None else None,
            "level": self.level_name,
            "level_index": self.level,
            "probabilities": [round(float(p), 6) for p in self.probabilities],
            "expected_score": round(float(self.expected_score), 4),
        }
        if self.detection_score is not None:
            out["detection_score"] = round(float(self.detection_score), 4)
        if self.landmarks:
            out["landmarks"] = {k: [round(float(x), 1), round(float(y), 1)]
                                for k, (x, y) in self.landmarks.items()}
        return out


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


_CHOICES_LOGGED: set[tuple[str, ...]] = set()
_CPU_WARNED: set[str] = set()


def check_max_faces(max_faces: object, what: str = "max_faces") -> int:
    """``max_faces`` as an int, or ``InputError`` naming it as ``what`` (a CLI passes its
    flag)."""
    if not isinstance(max_faces, Integral) or max_faces < 1:
        raise InputError(f"{what} must be a whole number >= 1, got {max_faces!r}")
    return int(max_faces)


def _log_choice_once(chosen: str, reasons: list[str]) -> None:
    """``auto``'s choice, and why faster backends were passed over, once per process and at
    DEBUG (-v): a CPU machine has no GPU provider every time a Runtime opens, which is no
    news; a user who asks for a backend by name gets its error instead."""
    key = (chosen, *reasons)
    if key in _CHOICES_LOGGED:
        return
    _CHOICES_LOGGED.add(key)
    if reasons:
        log.debug("backend auto -> %s (faster ones unavailable: %s)", chosen,
                  " | ".join(reasons))
    else:
        log.debug("backend auto -> %s", chosen)


def cpu_mismatch(info: ModelInfo, backend: str) -> str | None:
    """Why a model's INT8 settings give wrong numbers on this CPU with ``backend`` (its
    weight width, ``edge_smw.cpu.int8_mismatch``), or None: the Runtime warns with it, the
    bench does not run such a pair."""
    if info.precision != "int8" or backend not in CPU_BACKENDS:
        return None
    from edge_smw.cpu import int8_mismatch

    return int8_mismatch(info.extra.get("int8") or {}, backend=backend)


def layout_advice(info: ModelInfo, backend: str) -> str | None:
    """A note (not an error) when an INT8 model's layout was made for another backend's
    kernels: its stem padded for onnxruntime's (``edge_smw.export.layout``), on OpenVINO."""
    channels = (info.extra.get("int8") or {}).get("stem_input_channels")
    if info.precision != "int8" or not channels or not backend.startswith("openvino"):
        return None
    return (f"its stem reads {channels[1]} input channels ({channels[1] - channels[0]} of zeros) "
            "for onnxruntime's int8 kernels; OpenVINO runs the unpadded stem a little faster "
            "(benchmarks/RESULTS.md): `edge-smw export --int8 --no-pad-stem` writes it for "
            "OpenVINO (same scores)")


class Runtime:
    """Score frames with an exported edge-smw model.

    ``backend``: ``onnxruntime-cpu``, ``onnxruntime-cuda``, ``onnxruntime-tensorrt``,
    ``tensorrt``, ``openvino-cpu`` (the ``openvino`` extra; never chosen by ``auto``) or
    ``auto`` (fastest available of the others; the choice and why is logged).
    ``detect_faces``: find faces in each frame (True, the default: camera frames hold faces
    to find) or score the whole frame as one face crop (False); None does what the model was
    trained on (files that may be face crops already: ``score``, ``evaluate``).
    ``backend_options`` go to the backend (onnxruntime: ``allow_spinning``;
    onnxruntime-tensorrt also ``trt_fp16``, ``trt_int8``, ``trt_cache_dir``,
    ``trt_workspace_bytes``; tensorrt: ``profile``); one it would not use is refused.
    ``detector``: ``auto`` (the model's own, from its contract: Haar for models made before
    detectors were recorded), ``haar``, a shipped detector's name, an ``.onnx`` file or a
    ``DetectorSpec``. It runs on the scorer's backend where it can (on a GPU both networks
    do). A model trained on one detector's crops is refused with another unless
    ``allow_detector_mismatch`` (then it warns): crops differ, and so would the scores.
    One instance may be shared by threads: input buffers are per thread, the backends are
    thread-safe (onnxruntime's ``run``; TensorRT behind a lock).
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        backend: str = "auto",
        device: int = 0,
        threads: int | None = None,
        detect_faces: bool | None = True,
        max_faces: int = 5,
        warmup: bool = True,
        backend_options: dict[str, Any] | None = None,
        detector: str | Path | DetectorSpec = "auto",
        allow_detector_mismatch: bool = False,
    ) -> None:
        if not isinstance(backend, str):
            raise InputError(f"backend must be a name such as 'auto', got {backend!r}")
        threads = check_threads(threads)
        check_max_faces(max_faces)
        if not isinstance(device, Integral) or device < 0:
            raise InputError(f"device must be a GPU index >= 0, got {device!r}")
        if not isinstance(model_path, (str, os.PathLike)):
            raise InputError(f"model_path must be the path of an export folder or an .onnx or "
                             f".engine file (made by `edge-smw export`), got {model_path!r}")
        if detect_faces is not None and not isinstance(detect_faces, (bool, np.bool_)):
            # "no" would be truthy: a camera would look for faces the caller turned off
            raise InputError(f"detect_faces must be True, False or None, got {detect_faces!r}")
        resolve_spec(detector)  # a wrong detector name is wrong whether or not faces are found
        self.path = resolve_model_path(model_path)
        self.max_faces = int(max_faces)
        device = int(device)
        self._local = threading.local()
        self.detector: FaceDetector | None = None
        # An engine's metadata is read first: a missing sidecar is reported even where
        # TensorRT itself is not installed.
        sidecar = None if is_onnx(self.path) else ModelInfo.from_sidecar(
            sidecar_path(self.path))
        self.runner = self._open(backend, device, threads, backend_options or {})
        try:
            self.info = sidecar or ModelInfo.from_props(self.runner.metadata(), source=self.path)
            # None: as the model was trained (on detected faces, or on whole face crops).
            self.detect = self.info.detect if detect_faces is None else bool(detect_faces)
            self.contract = self.info.contract
            self.levels = self.contract.levels
            self._scores = np.arange(1, len(self.levels) + 1, dtype=np.float64)
            self._check_io()
            self._check_cpu()
            if self.detect:
                self.detector = self._open_detector(detector, device, threads,
                                                    allow_detector_mismatch)
            if warmup:  # also proves the network's outputs fit its metadata
                size = self.contract.input_size
                self._probabilities(self._run(np.zeros((1, 3, size, size), np.float32)), 1)
                if self.detector is not None:
                    self.detector.detect(np.zeros((480, 640, 3), np.uint8))
        except BaseException:
            self.close()
            raise

    # -- lifecycle -------------------------------------------------------------------------
    def _open(self, backend: str, device: int, threads: int | None,
              options: dict[str, Any]) -> Runner:
        if backend != "auto":
            runner = open_runner(backend, self.path, device=device, threads=threads,
                                 options=options)
            runner.activate()
            log.debug("backend %s for %s", backend, self.path)
            return runner
        candidates = ENGINE_BACKENDS if not is_onnx(self.path) else _AUTO_ORDER
        reasons = []
        for name in candidates:
            refused: InputError | None = None
            try:
                try:
                    runner = open_runner(name, self.path, device=device, threads=threads,
                                         options=options)
                except InputError as exc:
                    # Options this backend does not take matter only if auto chooses it:
                    # open it without them to learn whether it would be chosen here.
                    refused = exc
                    runner = open_runner(name, self.path, device=device, threads=threads)
                runner.activate()
            except BackendUnavailableError as exc:
                reasons.append(f"{name}: {exc}")
                continue
            if refused is not None:
                runner.deactivate()
                raise InputError(f"{refused} (backend 'auto' chose {name!r} on this "
                                 "machine)") from None
            _log_choice_once(name, reasons)
            return runner
        raise BackendUnavailableError("no backend can run " + str(self.path) + ": "
                                      + "; ".join(reasons))

    def _open_detector(self, detector: str | Path | DetectorSpec, device: int,
                       threads: int | None, allow_mismatch: bool) -> FaceDetector:
        spec = resolve_spec(detector, self.contract)
        # The detector's threads sleep even inside its run (the scorer's spin there): spinning
        # them was measured on 2 cores at 0-8% more frames a second at p50, with a heavier
        # tail when the machine was busy (benchmarks/RESULTS.md), and pipelined frames run the
        # scorer beside it.
        opened = open_detector(spec, backend=self.runner.name, device=device, threads=threads,
                               options={"allow_spinning": False})
        trained = self.contract.detector
        same = opened.name == trained.name and opened.spec.align == trained.align
        if not same and self.info.detect:
            message = (f"{self.path} was trained on crops from the {trained.describe()} face "
                       f"detector; detecting with {opened.spec.describe()} gives other crops "
                       "and other scores")
            fallback = getattr(opened, "fallback_for", None)
            if not (allow_mismatch or fallback):
                opened.close()
                raise InputError(message + "; use the model's own (detector='auto'), or allow "
                                 "it with allow_detector_mismatch=True "
                                 "(--allow-detector-mismatch)")
            if not fallback:  # a fallback has said so already
                log.warning("%s (allowed)", message)
        log.debug("face detector %s on %s", opened.spec.describe(), opened.backend)
        return opened

    def _check_io(self) -> None:
        """The network's declared inputs/outputs must agree with its own metadata."""
        if self.runner.input_name != INPUT_NAME:
            raise ModelError(f"{self.path} takes input '{self.runner.input_name}', not "
                             f"'{INPUT_NAME}': it is not an edge-smw model; export one with "
                             "`edge-smw export RUN_DIR`")
        outputs = self.runner.output_names
        if OUTPUT_PROBABILITIES not in outputs:
            raise ModelError(f"{self.path} has outputs {list(outputs)}, no "
                             f"'{OUTPUT_PROBABILITIES}': it is not an edge-smw model; export "
                             "one with `edge-smw export RUN_DIR`")
        size = self.contract.input_size
        declared = self.runner.input_shape
        if declared is not None and tuple(declared) != (3, size, size):
            raise ModelError(f"{self.path} takes input {tuple(declared)} but its metadata says "
                             f"(3, {size}, {size}): the metadata belongs to another model; "
                             "re-export it")

    def _check_cpu(self) -> None:
        """Warn (once per model) when an INT8 model's weight width does not suit this CPU;
        note (once) when its layout was made for another backend."""
        key = str(self.path.resolve())
        if key in _CPU_WARNED:
            return
        reason = cpu_mismatch(self.info, self.runner.name)
        advice = layout_advice(self.info, self.runner.name)
        if reason or advice:
            _CPU_WARNED.add(key)
        if reason:
            log.warning("%s: %s", self.path, reason)
        if advice:
            log.info("%s: %s", self.path, advice)

    @property
    def backend(self) -> str:
        return self.runner.name

    @property
    def max_batch(self) -> int | None:
        """Largest batch one backend call takes (None: any); larger batches are split."""
        return self.runner.max_batch

    @property
    def closed(self) -> bool:
        return not self.runner.active

    def _check_open(self) -> None:
        """Every scoring call on a closed Runtime fails, even one that would find no face."""
        if self.closed:
            raise ModelError(f"this Runtime for {self.path} is closed; open a new one")

    def close(self) -> None:
        """Release the model, its face detector and their device memory; idempotent."""
        detector = getattr(self, "detector", None)
        if detector is not None:
            detector.close()
        runner = getattr(self, "runner", None)
        if runner is not None and runner.active:
            runner.deactivate()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.backend
        return f"Runtime({str(self.path)!r}, {state}, levels={list(self.levels)})"

    # -- scoring ---------------------------------------------------------------------------
    def score(self, frame: np.ndarray, *, color: str = "bgr") -> ScoreResult:
        """Every detected face in ``frame`` (uint8, any size), largest first.

        With ``detect_faces=False`` the whole frame is one face (already-cropped photos).
        A frame without faces gives a result with no faces, not an error.
        """
        self._check_open()
        t0 = time.perf_counter()
        image = to_bgr(frame, color)
        found, crops = face_crops(image, self.contract, detect=self.detector is not None,
                                  max_faces=self.max_faces, detector=self.detector)
        boxes: list[Box | None] = [d.box for d in found]
        t1 = time.perf_counter()
        faces, prep_ms, infer_ms = self._score_crops(crops, boxes) if crops else ([], 0.0, 0.0)
        if self.detector is not None:
            for face, detection in zip(faces, found, strict=True):
                face.detection_score = detection.score
                face.landmarks = detection.landmarks
        total = (time.perf_counter() - t0) * 1000
        timings = {"detect": (t1 - t0) * 1000, "preprocess": prep_ms, "infer": infer_ms,
                   "total": total}
        return ScoreResult(faces, timings, tuple(frame.shape))

    def score_crop(self, crop: np.ndarray, *, color: str = "bgr",
                   feature_map: bool = False) -> FaceScore:
        """One already-cropped face, scored whole."""
        self._check_open()
        faces, _, _ = self._score_crops([to_bgr(crop, color)], [None], feature_map)
        return faces[0]

    def score_batch(self, crops: Sequence[np.ndarray], *, color: str = "bgr",
                    feature_map: bool = False) -> list[FaceScore]:
        """Many crops in one inference call (split only where the model's batch limit says)."""
        self._check_open()
        if isinstance(crops, np.ndarray):  # a stacked batch: N x H x W (x C)
            if crops.ndim == 4 or (crops.ndim == 3 and color == "gray"):
                crops = list(crops)
            else:
                raise InputError(f"score_batch takes a list of crops or an N x H x W x C array, "
                                 f"got an array of shape {crops.shape}; use score_crop for one")
        if len(crops) == 0:
            return []
        bgr = []
        for i, crop in enumerate(crops):
            try:
                bgr.append(to_bgr(crop, color))
            except InputError as exc:
                raise InputError(f"crop {i}: {exc}") from None
        faces, _, _ = self._score_crops(bgr, [None] * len(bgr), feature_map)
        return faces

    def infer(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Raw network call on preprocessed NCHW float32 input (bench, parity, calibration).

        Checked fully (dtype, shape, finite values) because nothing downstream would notice
        a NaN: the network would just return confident nonsense.
        """
        self._check_open()
        size = self.contract.input_size
        want = f"float32 (N, 3, {size}, {size})"
        if not isinstance(inputs, np.ndarray):
            raise InputError(f"expected a numpy {want} array, got {type(inputs).__name__}")
        if inputs.dtype != np.float32:
            raise InputError(f"expected {want} input, got dtype {inputs.dtype}; preprocess with "
                             "runtime.contract.apply_batch(crops) or .astype(np.float32)")
        if inputs.ndim != 4 or tuple(inputs.shape[1:]) != (3, size, size):
            raise InputError(f"expected {want} input, got shape {inputs.shape}; preprocess with "
                             "runtime.contract.apply_batch(crops)")
        if inputs.shape[0] == 0:
            raise InputError("empty batch (0 images); pass at least one")
        # Finite extremes mean every value is finite (a NaN makes both NaN): no temporary
        # array, and a third of a float64 sum's time (16 vs 49 us at batch 1, 224 px).
        if not (np.isfinite(inputs.max()) and np.isfinite(inputs.min())):
            bad = int(np.count_nonzero(~np.isfinite(inputs)))
            raise InputError(f"input holds {bad} NaN/infinite value(s); fix the preprocessing "
                             "(runtime.contract.apply_batch gives finite values)")
        return self._run(np.ascontiguousarray(inputs))

    def _run(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """One backend call, or several where the model's batch limit says."""
        limit = self.runner.max_batch or inputs.shape[0]
        if inputs.shape[0] <= limit:
            return self.runner.infer(inputs)
        parts = [self.runner.infer(inputs[i : i + limit])
                 for i in range(0, inputs.shape[0], limit)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _probabilities(self, outputs: dict[str, np.ndarray], n: int) -> np.ndarray:
        """The checked (n, K) probabilities: a network that disagrees with its metadata, or
        yields NaN (a bad quantization), must not produce scores."""
        probs = np.asarray(outputs[OUTPUT_PROBABILITIES], dtype=np.float64)
        if probs.shape != (n, len(self.levels)):
            raise ModelError(f"{self.path} returned probabilities of shape {probs.shape} for "
                             f"{n} input(s) and {len(self.levels)} levels; its metadata does not "
                             "match the network: re-export it")
        if not np.all(np.isfinite(probs)):
            raise ModelError(f"{self.path} produced non-finite probabilities; the model is "
                             "broken or was quantized badly: re-export it")
        return probs

    def _buffers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-thread pixel and input buffers, grown when needed, reused across frames."""
        local = self._local
        if getattr(local, "capacity", 0) < n:
            size = self.contract.input_size
            local.pixels = np.empty((n, size, size, 3), np.uint8)
            local.inputs = np.empty((n, 3, size, size), np.float32)
            local.capacity = n
        return local.pixels[:n], local.inputs[:n]

    def _score_crops(self, crops: list[np.ndarray], boxes: Sequence[Box | None],
                     feature_map: bool = False) -> tuple[list[FaceScore], float, float]:
        t0 = time.perf_counter()
        pixels, buffer = self._buffers(len(crops))
        for i, crop in enumerate(crops):
            pixels[i] = self.contract.to_model_pixels(crop)
        inputs = self.contract.normalize(pixels, out=buffer)
        t1 = time.perf_counter()
        outputs = self._run(inputs)
        t2 = time.perf_counter()
        probs = self._probabilities(outputs, len(crops))
        maps = outputs.get(OUTPUT_FEATURE_MAP) if feature_map else None
        if feature_map and maps is None:
            raise ModelError(f"{self.path} has no feature_map output; export it with "
                             "`edge-smw export --feature-map` for heat maps on the device")
        expected = probs @ self._scores
        top = probs.argmax(axis=1)
        faces = [
            FaceScore(box, p, int(k), self.levels[int(k)], float(e),
                      None if maps is None else maps[i])
            for i, (box, p, k, e) in enumerate(zip(boxes, probs, top, expected, strict=True))
        ]
        return faces, (t1 - t0) * 1000, (t2 - t1) * 1000
