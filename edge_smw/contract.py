"""The preprocessing contract: the one definition of how an image becomes the model's input.

It is stored in every checkpoint and in every exported model's metadata, and read back by
training, calibration, runtime and bench. Nothing else in the package knows the input size,
crop margin, colour order or mean/std. numpy/OpenCV only: no torch here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from edge_smw.errors import InputError, ModelError

# 2: the face detector and its settings joined the contract (a version-1 contract has none:
# its crops came from OpenCV's Haar cascade, the only detector there was).
# 3: the detector's one second look (``retry_size``) became a list of looks (``retry_sizes``).
CONTRACT_VERSION = 3
Box = tuple[int, int, int, int]  # x, y, width, height in pixels of the source image
Point = tuple[float, float]

HAAR = "haar"
# Chosen by measurement on the detection set (benchmarks/RESULTS.md, "Face detection").
DEFAULT_DETECTOR = "blazeface-short"


def retry_sizes(values: Iterable[int]) -> tuple[int, ...]:
    """Retry sizes as a person writes them (``--detector-retry``, ``name>RETRY``) or as a
    version-2 contract stored its one ``retry_size``: a lone 0 means no retry."""
    sizes = tuple(values)
    return () if sizes == (0,) else sizes


@dataclass(frozen=True, kw_only=True)
class DetectorSpec:
    """Which face detector finds the faces that become crops, and its settings.

    Part of the contract because crops from different detectors differ (box size, centre,
    rotation): a head trained on one detector's crops should be served with the same one.
    ``name``: ``haar``, a shipped detector (``edge_smw.detect.DETECTORS``) or an ONNX file's
    own name. ``input_size``: the long side, in pixels, of the image the detector sees (the
    frame is resized to it keeping its aspect ratio; None: the detector's default).
    ``retry_sizes``: further looks at these long sides, in order, each only while the looks
    before found no face (a DNN detector sees faces in a window of sizes: a farther look finds
    faces that fill the frame, a closer one small faces; None: the detector's default, an
    empty tuple: no retry).
    ``score_threshold``: None for the detector's default. ``align``: rotate each crop so the
    eyes are level (needs a detector that gives landmarks).
    """

    name: str = DEFAULT_DETECTOR
    input_size: int | None = None
    retry_sizes: tuple[int, ...] | None = None
    score_threshold: float | None = None
    align: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise InputError(f"detector name must be a non-empty string, got {self.name!r}")
        if self.input_size is not None and (
                isinstance(self.input_size, bool) or not isinstance(self.input_size, int)
                or self.input_size < 32):
            raise InputError(f"detector input_size must be a whole number of pixels >= 32 (the "
                             f"long side), got {self.input_size!r}")
        if self.retry_sizes is not None:
            sizes = self.retry_sizes
            if not isinstance(sizes, list | tuple) or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 32 for v in sizes):
                raise InputError(f"detector retry_sizes must be a list of whole numbers of pixels "
                                 f">= 32 (the long side of each further look; empty: none), got "
                                 f"{sizes!r}")
            object.__setattr__(self, "retry_sizes", tuple(sizes))
        if self.score_threshold is not None and not 0.0 < float(self.score_threshold) < 1.0:
            raise InputError(f"detector score_threshold must be between 0 and 1, got "
                             f"{self.score_threshold!r}")
        if not isinstance(self.align, bool):
            raise InputError(f"detector align must be true or false, got {self.align!r}")
        if self.align and self.name == HAAR:
            raise InputError("alignment needs eye landmarks, which the Haar detector does not "
                             "give; choose a DNN detector or turn alignment off")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorSpec:
        if not isinstance(data, dict):
            raise ModelError(f"the contract's detector must be a JSON object, got {data!r}")
        data = dict(data)
        if "retry_size" in data and "retry_sizes" not in data:  # a version-2 contract
            legacy = data.pop("retry_size")
            data["retry_sizes"] = None if legacy is None else retry_sizes((legacy,))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ModelError(f"the contract's detector has unknown fields {sorted(unknown)}: it "
                             "was written by a newer edge-smw; upgrade edge-smw")
        return cls(**data)

    def describe(self) -> str:
        """One short line for logs and reports, e.g. ``blazeface-short@320 aligned``."""
        text = self.name + (f"@{self.input_size}" if self.input_size else "")
        text += "".join(f">{size}" for size in self.retry_sizes or ())
        text += ">0" if self.retry_sizes == () else ""  # no retry, not the default's
        if self.score_threshold is not None:
            text += f" score>={self.score_threshold:g}"
        return text + (" aligned" if self.align else "")


@dataclass(frozen=True, kw_only=True)
class PreprocessContract:
    """Crop -> resize -> colour order -> scale -> mean/std -> layout, plus the level names.

    ``crop_margin`` enlarges a detected face box by that fraction of its side on every side
    before the square crop is taken. ``--no-detect`` images are used whole (stretched to a
    square), as the poster's already-cropped photos were.
    """

    levels: tuple[str, ...]
    input_size: int = 224
    crop_margin: float = 0.2
    color_order: str = "RGB"
    layout: str = "NCHW"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    interpolation: str = "area"
    detector: DetectorSpec = field(default_factory=DetectorSpec)
    version: int = field(default=CONTRACT_VERSION)

    def __post_init__(self) -> None:
        levels = tuple(str(level) for level in self.levels)
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(levels) < 2:
            raise InputError(f"a model needs at least 2 ordered levels, got {list(levels)}")
        if len(set(levels)) != len(levels):
            raise InputError(f"level names must be unique, got {list(levels)}")
        if self.input_size < 8:
            raise InputError(f"input_size must be >= 8 pixels, got {self.input_size}")
        if self.color_order not in ("RGB", "BGR"):
            raise InputError(f"color_order must be RGB or BGR, got {self.color_order!r}")
        if self.layout != "NCHW":
            raise InputError(f"only the NCHW layout is supported, got {self.layout!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise InputError("mean and std need 3 values each, std > 0")
        if not isinstance(self.detector, DetectorSpec):
            raise InputError(f"detector must be a DetectorSpec, got {type(self.detector).__name__}")
        if self.interpolation not in _INTERPOLATIONS:
            raise InputError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}")
        if self.version > CONTRACT_VERSION:
            raise ModelError(
                f"preprocessing contract version {self.version} is newer than this edge-smw "
                f"understands ({CONTRACT_VERSION}); upgrade edge-smw"
            )

    # -- identity -------------------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        return len(self.levels)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["levels"] = list(self.levels)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessContract:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ModelError(
                f"preprocessing contract has unknown fields {sorted(unknown)}: it was written by "
                "a newer edge-smw; upgrade edge-smw"
            )
        if "levels" not in data:
            raise ModelError("preprocessing contract has no 'levels'")
        data = dict(data)
        # Before version 2 there was one detector, Haar: that is what those crops came from.
        detector = data.pop("detector", {"name": HAAR})
        return cls(detector=DetectorSpec.from_dict(detector), **data)

    @classmethod
    def from_json(cls, text: str) -> PreprocessContract:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"preprocessing contract is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ModelError("preprocessing contract must be a JSON object")
        return cls.from_dict(data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @property
    def geometry_sha256(self) -> str:
        """Hash of everything that shapes the crop (not the level names): cache keys use it."""
        data = self.to_dict()
        data.pop("levels")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    # -- geometry: source image -> square crop in model pixels ----------------------------
    def face_square(self, box: Box, image_shape: Sequence[int]) -> Box:
        """The square region (x, y, side, side) that a face box maps to, with the margin."""
        x, y, w, h = (int(v) for v in box)
        side = max(w, h) * (1.0 + 2.0 * self.crop_margin)
        cx, cy = x + w / 2.0, y + h / 2.0
        side_px = max(1, int(round(side)))
        return (int(round(cx - side / 2.0)), int(round(cy - side / 2.0)), side_px, side_px)

    def crop_face(self, image_bgr: np.ndarray, box: Box,
                  eyes: tuple[Point, Point] | None = None) -> np.ndarray:
        """Cut the face square out of ``image_bgr``; parts outside the frame are edge-padded.

        With ``detector.align`` and the two eye centres (the subject's right eye, which is on
        the image's left, first), the square is rotated about its centre so the eyes are level.
        """
        sx, sy, side, _ = self.face_square(box, image_bgr.shape)
        if self.detector.align and eyes is not None:
            (rx, ry), (lx, ly) = eyes
            angle = math.degrees(math.atan2(ly - ry, lx - rx))
            matrix = cv2.getRotationMatrix2D((sx + side / 2.0, sy + side / 2.0), angle, 1.0)
            matrix[:, 2] -= (sx, sy)  # and move the square's corner to (0, 0): one warp
            return cv2.warpAffine(image_bgr, matrix, (side, side), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)
        h, w = image_bgr.shape[:2]
        x0, y0, x1, y1 = sx, sy, sx + side, sy + side
        pad = (max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w))
        crop = image_bgr[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)]
        if any(pad):
            crop = cv2.copyMakeBorder(crop, *pad, cv2.BORDER_REPLICATE)
        return crop

    def to_model_pixels(self, crop_bgr: np.ndarray) -> np.ndarray:
        """Resize a BGR (or gray) crop to input_size and put it in the model's colour order.

        Returns uint8 HxWx3. This is the pixel space that heat maps and fooling images use.
        """
        crop = _as_bgr(crop_bgr)
        size = self.input_size
        if crop.shape[0] != size or crop.shape[1] != size:
            shrinking = crop.shape[0] > size or crop.shape[1] > size
            interp = _INTERPOLATIONS[self.interpolation] if shrinking else cv2.INTER_LINEAR
            crop = cv2.resize(crop, (size, size), interpolation=interp)
        if self.color_order == "RGB":
            crop = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
        return np.ascontiguousarray(crop)

    # -- photometry: model pixels -> network input ----------------------------------------
    def normalize(self, pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """uint8/float NHWC pixels (in colour order) -> float32 NCHW network input.

        ``out`` may be a preallocated float32 NCHW buffer (the runtime reuses one).
        """
        if pixels.ndim == 3:
            pixels = pixels[None]
        if pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise InputError(f"expected NHWC pixels with 3 channels, got shape {pixels.shape}")
        n = pixels.shape[0]
        shape = (n, 3, pixels.shape[1], pixels.shape[2])
        if out is None:
            out = np.empty(shape, dtype=np.float32)
        elif out.shape != shape or out.dtype != np.float32:
            raise InputError(f"output buffer must be float32 {shape}, got {out.dtype} {out.shape}")
        mul, add = self.affine()
        np.copyto(out, pixels.transpose(0, 3, 1, 2), casting="unsafe")
        out *= mul.reshape(1, 3, 1, 1)
        out += add.reshape(1, 3, 1, 1)
        return out

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (mul, add) with input = pixel * mul + add; folds scale, mean and std."""
        std = np.asarray(self.std, dtype=np.float64)
        mul = self.scale / std
        add = -np.asarray(self.mean, dtype=np.float64) / std
        return mul.astype(np.float32), add.astype(np.float32)

    def denormalize(self, inputs: np.ndarray) -> np.ndarray:
        """Network input NCHW -> float pixels NHWC (the inverse of ``normalize``)."""
        mul, add = self.affine()
        pixels = (inputs - add.reshape(1, 3, 1, 1)) / mul.reshape(1, 3, 1, 1)
        return pixels.transpose(0, 2, 3, 1)

    def apply(self, crop_bgr: np.ndarray) -> np.ndarray:
        """One BGR/gray crop -> float32 CHW network input."""
        return self.normalize(self.to_model_pixels(crop_bgr)[None])[0]

    def apply_batch(self, crops_bgr: Sequence[np.ndarray]) -> np.ndarray:
        """Many BGR/gray crops -> float32 NCHW network input."""
        if not crops_bgr:
            raise InputError("no crops to preprocess")
        pixels = np.stack([self.to_model_pixels(c) for c in crops_bgr])
        return self.normalize(pixels)


_INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


def _as_bgr(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise InputError(f"expected a numpy image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.size == 0:
        raise InputError(f"empty image of shape {image.shape}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image.reshape(image.shape[0], image.shape[1]), cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    raise InputError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}")
