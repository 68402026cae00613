"""Face detection: one ``FaceDetector`` interface, Haar and DNN detectors behind it.

``open_detector("auto" | "haar" | "<name>" | "path.onnx")``; the DNN detectors run on the
same runner backends as the scorer (``edge_smw.runtime.backends``). No torch here.
"""

from edge_smw.contract import DEFAULT_DETECTOR, HAAR, DetectorSpec
from edge_smw.detect.base import Detection, FaceDetector
from edge_smw.detect.registry import (
    AUTO,
    DETECTORS,
    NAMES,
    largest_face,
    open_detector,
    resolve_spec,
    shared_detector,
    with_detector,
)

__all__ = ["AUTO", "DEFAULT_DETECTOR", "DETECTORS", "HAAR", "NAMES", "Detection",
           "DetectorSpec", "FaceDetector", "largest_face", "open_detector", "resolve_spec",
           "shared_detector", "with_detector"]
