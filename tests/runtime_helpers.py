"""Helpers for the runtime, score and rank tests: real crops, and photos made from them."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge_smw.detect import DetectorSpec, shared_detector
from edge_smw.images import read_image


def crops_by_level(items, per_level: int) -> list[np.ndarray]:
    """``per_level`` real crops of each level from a split (items are sorted by level)."""
    chosen = []
    for level in sorted({item.level for item in items}):
        chosen += [item.path for item in items if item.level == level][:per_level]
    return [read_image(path) for path in chosen]


def paste_face(crop: np.ndarray, *, side: int = 288, frame_hw: tuple[int, int] = (480, 640),
               at: tuple[int, int] = (96, 176)) -> np.ndarray:
    """A photo-like frame: the tight crop given some border, enlarged, on a grey background.

    Haar needs a little context around a face and more than 64 pixels of it.
    """
    padded = cv2.copyMakeBorder(crop, 16, 16, 16, 16, cv2.BORDER_REPLICATE)
    big = cv2.resize(padded, (side, side), interpolation=cv2.INTER_CUBIC)
    frame = np.full((*frame_hw, 3), 128, np.uint8)
    y, x = at
    frame[y : y + side, x : x + side] = big
    return frame


def detectable_frames(paths: list[Path], count: int) -> list[tuple[Path, np.ndarray]]:
    """The first ``count`` crops among ``paths`` whose pasted frame the default detector
    (the one a model trained on crops is served with) finds a face in."""
    found = []
    for path in paths:
        frame = paste_face(read_image(path))
        if shared_detector(DetectorSpec()).detect(frame):
            found.append((path, frame))
            if len(found) == count:
                return found
    raise AssertionError(f"the detector found no face in {len(paths)} pasted real crops")


def gradient(h: int = 240, w: int = 320) -> np.ndarray:
    """A smooth colour gradient: a photo with no face in it."""
    ys, xs = np.mgrid[0:h, 0:w]
    return np.stack([xs * 255 // w, ys * 255 // h, (xs + ys) * 255 // (h + w)],
                    axis=-1).astype(np.uint8)


def with_int8_settings(model_path: Path, out: Path, **settings: object) -> Path:
    """A copy of an INT8 model whose metadata says other INT8 settings (e.g. 8-bit weights
    built for a VNNI CPU): the same graph, judged by what it claims to be."""
    import json

    import onnx

    model = onnx.load(str(model_path))
    for prop in model.metadata_props:
        if prop.key == "edge_smw.info":
            info = json.loads(prop.value)
            info["extra"]["int8"].update(settings)
            prop.value = json.dumps(info)
    onnx.save(model, str(out))
    return out
