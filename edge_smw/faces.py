"""The faces a frame is scored on, cut one way everywhere (the Runtime, the Ray engine).

Finding faces is ``edge_smw.detect`` (the given detector, else the contract's own); cutting
them is the contract's ``crop_face`` (eyes levelled where the contract says).
"""

from __future__ import annotations

import numpy as np

from edge_smw.contract import PreprocessContract
from edge_smw.detect import Detection, FaceDetector, shared_detector


def face_crops(
    image_bgr: np.ndarray, contract: PreprocessContract, *, detect: bool,
    max_faces: int | None, detector: FaceDetector | None = None,
) -> tuple[list[Detection], list[np.ndarray]]:
    """(detections, crops), largest first; with ``detect=False`` the whole frame is one face
    (already-cropped photos), as a detection with score 1 and no landmarks."""
    if not detect:
        whole = Detection((0, 0, image_bgr.shape[1], image_bgr.shape[0]), 1.0)
        return [whole], [image_bgr]
    found = (detector or shared_detector(contract.detector)).detect(image_bgr,
                                                                     max_faces=max_faces)
    return found, [contract.crop_face(image_bgr, d.box, d.eyes) for d in found]
