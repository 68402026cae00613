"""One resolver from ``"auto" | "haar" | "<name>" | path.onnx`` to an open ``FaceDetector``.

Shipped DNN detectors are ONNX files inside the package (``weights/``, with their licence and
provenance); nothing is downloaded, ever. Where a shipped file is missing (a stripped install)
the detector falls back to Haar with one warning line, so a camera still runs.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edge_smw.contract import DEFAULT_DETECTOR, HAAR, DetectorSpec, PreprocessContract
from edge_smw.detect.base import Detection, FaceDetector
from edge_smw.errors import BackendUnavailableError, InputError, ModelError

log = logging.getLogger("edge_smw.detect")

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
AUTO = "auto"
# Faster first, as Runtime's backend="auto"; a detector falls back along it.
_BACKEND_ORDER = ("onnxruntime-tensorrt", "onnxruntime-cuda", "onnxruntime-cpu")


@dataclass(frozen=True)
class ShippedDetector:
    """A DNN detector that ships with the package."""

    file: str
    summary: str
    # Defaults chosen by measurement on the detection set (benchmarks/RESULTS.md):
    default_side: int  # long side of the detector's input
    # Further looks, in order, each only while the looks before found nothing: a farther one
    # for faces that fill the frame, then a closer one for small faces (empty: none).
    retry_sides: tuple[int, ...]
    score_threshold: float

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file


DETECTORS: dict[str, ShippedDetector] = {
    "blazeface-short": ShippedDetector(
        "blazeface-short.onnx",
        "MediaPipe BlazeFace short range (0.4 MB): faces within about 2 m; 6 landmarks",
        default_side=320, retry_sides=(192, 576), score_threshold=0.55),
}
NAMES = (HAAR, *DETECTORS)
_warned: set[str] = set()


def is_file_name(name: str) -> bool:
    return name.lower().endswith(".onnx")


def resolve_spec(detector: str | Path | DetectorSpec | None,
                 contract: PreprocessContract | None = None) -> DetectorSpec:
    """What to detect with. ``auto`` (or None): the model's own detector (its contract), or
    the default without a model. A name or file the contract also names keeps the contract's
    settings; another one gets that detector's defaults."""
    if isinstance(detector, DetectorSpec):
        return detector
    own = contract.detector if contract is not None else None
    if detector is None or str(detector) == AUTO:
        return own or DetectorSpec(name=DEFAULT_DETECTOR)
    name = str(detector)
    if not is_file_name(name) and name not in NAMES:
        raise InputError(f"unknown face detector {name!r}; choose one of "
                         f"{[AUTO, *NAMES]} or give an .onnx file")
    if own is not None and own.name == name:
        return own
    return DetectorSpec(name=name)


def open_detector(spec: DetectorSpec | str | Path | None = None, *, backend: str = "auto",
                  device: int = 0, threads: int | None = None,
                  options: dict[str, Any] | None = None) -> FaceDetector:
    """An open detector for ``spec``. ``backend``: a runner name (the scorer's, so a GPU runs
    both networks) or ``auto``; where that backend cannot run the detector, the next one in
    ``auto``'s order does, and the log says so."""
    from edge_smw.detect.blazeface import BlazeFaceDetector
    from edge_smw.detect.haar import HaarDetector

    spec = resolve_spec(spec)
    if spec.name == HAAR:
        return HaarDetector(spec)
    if is_file_name(spec.name):
        path, defaults = Path(spec.name), None
        if not path.is_file():
            raise ModelError(f"face detector {path} not found; give an existing .onnx file or "
                             f"one of {list(NAMES)}")
    else:
        shipped = DETECTORS[spec.name]
        path = shipped.path
        defaults = (shipped.default_side, shipped.retry_sides, shipped.score_threshold)
        if not path.is_file():
            if spec.name not in _warned:
                _warned.add(spec.name)
                log.warning("face detector %s: its weights %s are not installed; falling back "
                            "to Haar (reinstall edge-smw, or pass an .onnx file)", spec.name,
                            path)
            fallback = HaarDetector(DetectorSpec(name=HAAR))
            fallback.fallback_for = spec.name
            return fallback
    reasons = []
    for name in _candidates(backend):
        try:
            return BlazeFaceDetector(spec, path, defaults=defaults, backend=name,
                                     device=device, threads=threads, options=options)
        except BackendUnavailableError as exc:
            reasons.append(f"{name}: {exc}")
            log.debug("face detector %s: %s unavailable (%s)", spec.name, name, exc)
    raise BackendUnavailableError(f"no backend can run face detector {spec.name}: "
                                  + "; ".join(reasons))


def _candidates(backend: str) -> tuple[str, ...]:
    """The detector's backends to try, most preferred first.

    Native TensorRT runs engines, not ONNX files: next to a ``tensorrt`` scorer the detector
    runs on onnxruntime's TensorRT provider (the same GPU), or the next one available. Next
    to an OpenVINO scorer it runs on onnxruntime's CPU provider.
    """
    if backend in (AUTO, "tensorrt"):
        return _BACKEND_ORDER
    if backend == "openvino-cpu":  # a small network: onnxruntime's CPU kernels serve it
        return ("onnxruntime-cpu",)
    if backend not in _BACKEND_ORDER:
        raise InputError(f"unknown backend {backend!r} for the face detector; choose one of "
                         f"{list(_BACKEND_ORDER)} or 'auto'")
    return _BACKEND_ORDER[_BACKEND_ORDER.index(backend):]


def with_detector(contract: PreprocessContract,
                  detector: str | Path | DetectorSpec | None) -> PreprocessContract:
    """The contract with ``detector`` in it (``auto``/None: unchanged), for crop loaders that
    must cut crops the way a given detector would."""
    spec = resolve_spec(detector, contract)
    return contract if spec == contract.detector else replace(contract, detector=spec)


_shared: dict[DetectorSpec, FaceDetector] = {}
_shared_lock = threading.Lock()


def shared_detector(spec: DetectorSpec) -> FaceDetector:
    """One CPU detector per spec for this process (the crop loader calls it per photo).

    Detectors are thread-safe (onnxruntime sessions; Haar keeps one cascade per thread).
    """
    with _shared_lock:
        detector = _shared.get(spec)
        if detector is None:
            detector = _shared[spec] = open_detector(spec, backend="onnxruntime-cpu")
        return detector


def largest_face(image_bgr: Any, contract: PreprocessContract) -> Detection | None:
    """The largest face that the contract's own detector finds (the crop loaders' call)."""
    found = shared_detector(contract.detector).detect(image_bgr, max_faces=1)
    return found[0] if found else None
