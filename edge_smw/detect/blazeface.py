"""MediaPipe's BlazeFace (short and full range) as ONNX, run through the scorer's runners.

The network returns, per SSD anchor, 16 regression values (box centre, size and six
keypoints, in input pixels relative to the anchor) and one logit. Anchors, decoding and
suppression are numpy here; the recipe (strides, thresholds, keypoint names) is read from the
ONNX file's own ``edge_smw.detector`` metadata, written by scripts/convert-blazeface.sh.

The input resolution is a setting: the frame is resized so its long side is ``input_size``
(rounded up to the network's size multiple) and padded at the right and bottom, so a 640x480
frame is seen at 320x240 without letterbox waste. The network is fully convolutional: its
anchors grow with the input. It finds faces in a window of sizes (short range: about 1/10 to
1/2 of the input's long side), so where the first look finds nothing further looks
(``retry_sizes``) try again: a farther one (192) for a face that fills the frame, then a
closer one (576) for small faces. A camera pays for them only on frames where the looks
before found no face.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_smw.contract import DetectorSpec
from edge_smw.detect.base import Detection, FaceDetector, largest_first
from edge_smw.detect.nms import weighted_nms
from edge_smw.errors import InputError, ModelError
from edge_smw.runtime.backends import Runner, open_runner

METADATA_KEY = "edge_smw.detector"
REGRESSORS, CLASSIFICATORS = "regressors", "classificators"
_LOGIT_LIMIT = 80.0  # sigmoid stays finite in float32 (MediaPipe clips at 100)


@dataclass(frozen=True)
class Recipe:
    """How to decode one BlazeFace file (its ``edge_smw.detector`` metadata)."""

    name: str
    strides: tuple[int, ...]
    interpolated_scale_aspect_ratio: float
    trained_size: tuple[int, int]
    size_multiple: int
    score_threshold: float
    nms_iou: float
    keypoints: tuple[str, ...]

    @classmethod
    def from_metadata(cls, props: dict[str, str], source: object) -> Recipe:
        text = props.get(METADATA_KEY)
        if text is None:
            raise ModelError(f"{source} carries no '{METADATA_KEY}' metadata: it is not a face "
                             "detector edge-smw knows how to decode; use one of the shipped "
                             "detectors or convert BlazeFace with scripts/convert-blazeface.sh")
        try:
            data = json.loads(text)
            if data.get("family") != "blazeface":
                raise ModelError(f"{source} is a {data.get('family')!r} detector; this "
                                 "edge-smw decodes 'blazeface' detectors")
            return cls(str(data["name"]), tuple(int(s) for s in data["strides"]),
                       float(data["interpolated_scale_aspect_ratio"]),
                       (int(data["trained_size"][0]), int(data["trained_size"][1])),
                       int(data["size_multiple"]), float(data["score_threshold"]),
                       float(data["nms_iou"]), tuple(str(k) for k in data["keypoints"]))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ModelError(f"{source}: bad '{METADATA_KEY}' metadata ({exc})") from None


def anchor_centres(recipe: Recipe, width: int, height: int) -> np.ndarray:
    """SSD anchor centres (n, 2) as fractions of the input, in the network's output order.

    MediaPipe's SsdAnchorsCalculator with fixed-size anchors: consecutive layers that share a
    stride share one feature map, with two anchors per cell and layer (one when
    ``interpolated_scale_aspect_ratio`` is 0); order is row, column, anchor.
    """
    per_cell = 2 if recipe.interpolated_scale_aspect_ratio > 0 else 1
    parts, i = [], 0
    strides = recipe.strides
    while i < len(strides):
        same = 1
        while i + same < len(strides) and strides[i + same] == strides[i]:
            same += 1
        rows, cols = math.ceil(height / strides[i]), math.ceil(width / strides[i])
        ys, xs = np.meshgrid((np.arange(rows) + 0.5) / rows, (np.arange(cols) + 0.5) / cols,
                             indexing="ij")
        cells = np.stack([xs.ravel(), ys.ravel()], axis=1)
        parts.append(np.repeat(cells, same * per_cell, axis=0))
        i += same
    return np.concatenate(parts).astype(np.float32)


def decode(regressors: np.ndarray, logits: np.ndarray, anchors: np.ndarray, width: int,
           height: int, score_threshold: float, nms_iou: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw outputs -> (boxes x1 y1 x2 y2, scores, keypoints (n, k, 2)) in input pixels.

    ``regressors`` (n, 4 + 2k) are centre x, centre y, width, height and keypoints in input
    pixels, centre and keypoints relative to the anchor; ``logits`` (n,). Vectorised; the
    suppression loop runs only over candidates above the threshold.
    """
    if regressors.size != len(anchors) * regressors.shape[-1] or logits.size != len(anchors):
        raise ModelError(f"the detector returned {regressors.shape} / {logits.shape} for "
                         f"{len(anchors)} anchors at {width}x{height}: its recipe does not fit "
                         "the network")
    regressors = regressors.reshape(len(anchors), -1)
    logits = logits.reshape(len(anchors))
    # score >= t  <=>  logit >= log(t / (1 - t)): threshold before any sigmoid
    keep = np.flatnonzero(logits >= math.log(score_threshold / (1.0 - score_threshold)))
    raw = regressors[keep].astype(np.float64)
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits[keep].astype(np.float64), -_LOGIT_LIMIT,
                                          _LOGIT_LIMIT)))
    origin = anchors[keep].astype(np.float64) * (width, height)
    centre = raw[:, :2] + origin
    half = np.abs(raw[:, 2:4]) / 2.0
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    points = raw[:, 4:].reshape(len(keep), (raw.shape[1] - 4) // 2, 2) + origin[:, None, :]
    return weighted_nms(boxes, scores, points, nms_iou)


# What makes a detector: `edge-smw export` makes scoring models, never detectors.
DETECTOR_ADVICE = ("use a shipped detector (--detector blazeface-short or haar), or a BlazeFace "
                   ".onnx converted by scripts/convert-blazeface.sh (see "
                   "edge_smw/detect/weights/PROVENANCE.md); `edge-smw export` does not make "
                   "detectors")


class BlazeFaceDetector(FaceDetector):
    """A BlazeFace ONNX file on any runner backend; gives boxes and six landmarks."""

    gives_landmarks = True

    def __init__(self, spec: DetectorSpec, path: str | Path, *,
                 defaults: tuple[int, tuple[int, ...], float] | None = None,
                 backend: str = "onnxruntime-cpu", device: int = 0,
                 threads: int | None = None, options: dict[str, Any] | None = None) -> None:
        super().__init__(spec)
        self.path = Path(path)
        self.runner: Runner = open_runner(backend, self.path, device=device, threads=threads,
                                          options=options)
        try:
            self.runner.activate()
        except ModelError:  # the runner's advice is for scoring models ("re-export it")
            empty = self.path.is_file() and self.path.stat().st_size == 0
            what = "is empty (0 bytes)" if empty else "is truncated, corrupt or not an ONNX model"
            raise ModelError(f"face detector {self.path} {what}; {DETECTOR_ADVICE}") from None
        try:
            self.recipe = Recipe.from_metadata(self.runner.metadata(), self.path)
            outputs = set(self.runner.output_names)
            if not {REGRESSORS, CLASSIFICATORS} <= outputs:
                raise ModelError(f"{self.path} has outputs {sorted(outputs)}; a BlazeFace "
                                 f"detector has '{REGRESSORS}' and '{CLASSIFICATORS}'")
            self.name = self.recipe.name
            self.backend = self.runner.name
            side, retry, threshold = defaults or (max(self.recipe.trained_size), (),
                                                  self.recipe.score_threshold)
            self.side = int(spec.input_size or side)
            self.retry_sides = tuple(int(v) for v in (
                retry if spec.retry_sizes is None else spec.retry_sizes))
            self.score_threshold = float(spec.score_threshold or threshold)
            self._fixed = self.runner.input_shape  # (3, H, W) where the file fixes it (engines)
        except BaseException:
            self.close()
            raise
        self._anchors: dict[tuple[int, int], np.ndarray] = {}

    def input_dims(self, frame_w: int, frame_h: int, side: int) -> tuple[int, int, float]:
        """(input width, input height, scale from frame to input) for a frame size."""
        if self._fixed is not None:
            _, ih, iw = self._fixed
            return iw, ih, min(iw / frame_w, ih / frame_h)
        scale = side / max(frame_w, frame_h)
        step = self.recipe.size_multiple
        iw = max(step, math.ceil(frame_w * scale / step) * step)
        ih = max(step, math.ceil(frame_h * scale / step) * step)
        return iw, ih, scale

    def anchors(self, width: int, height: int) -> np.ndarray:
        key = (width, height)
        if key not in self._anchors:  # a camera has one frame size: computed once
            self._anchors[key] = anchor_centres(self.recipe, width, height)
        return self._anchors[key]

    def preprocess(self, image_bgr: np.ndarray, side: int) -> tuple[np.ndarray, float]:
        """Frame -> float32 (1, 3, H, W) in [-1, 1], RGB, padded right and bottom; and the
        frame-to-input scale."""
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
            image_bgr = cv2.cvtColor(image_bgr.reshape(image_bgr.shape[:2]), cv2.COLOR_GRAY2BGR)
        fh, fw = image_bgr.shape[:2]
        iw, ih, scale = self.input_dims(fw, fh, side)
        rw, rh = min(iw, max(1, round(fw * scale))), min(ih, max(1, round(fh * scale)))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        small = cv2.resize(image_bgr, (rw, rh), interpolation=interp)
        tensor = np.zeros((1, 3, ih, iw), np.float32)  # 0 = mid-grey after normalising
        for channel in range(3):  # BGR -> RGB while normalising, one pass per plane
            np.multiply(small[:, :, 2 - channel], 1.0 / 127.5, out=tensor[0, channel, :rh, :rw],
                        casting="unsafe")
        tensor[0, :, :rh, :rw] -= 1.0
        return tensor, scale

    def detect(self, image_bgr: np.ndarray, *, max_faces: int | None = None) -> list[Detection]:
        if image_bgr.size == 0:
            raise InputError(f"empty image of shape {image_bgr.shape}")
        found = self._look(image_bgr, self.side)
        if self._fixed is None:  # an engine built for one input size cannot look again
            for side in self.retry_sides:
                if found:
                    break
                found = self._look(image_bgr, side)
        return largest_first(found, max_faces)

    def _look(self, image_bgr: np.ndarray, side: int) -> list[Detection]:
        """One pass of the network with the frame's long side at ``side`` pixels."""
        tensor, scale = self.preprocess(image_bgr, side)
        _, _, ih, iw = tensor.shape
        outputs = self.runner.infer(tensor)
        boxes, scores, points = decode(outputs[REGRESSORS], outputs[CLASSIFICATORS],
                                       self.anchors(iw, ih), iw, ih, self.score_threshold,
                                       self.recipe.nms_iou)
        boxes = boxes / scale
        points = points / scale
        fh, fw = image_bgr.shape[:2]
        found = []
        for box, score, pts in zip(boxes, scores, points, strict=True):
            x1, y1 = max(0.0, box[0]), max(0.0, box[1])
            x2, y2 = min(float(fw), box[2]), min(float(fh), box[3])
            if x2 - x1 < 2 or y2 - y1 < 2:
                continue
            found.append(Detection(
                (int(round(x1)), int(round(y1)), int(round(x2 - x1)), int(round(y2 - y1))),
                float(score),
                {k: (float(x), float(y)) for k, (x, y) in zip(self.recipe.keypoints, pts,
                                                              strict=False)}))
        return found

    def close(self) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None and runner.active:
            runner.deactivate()
