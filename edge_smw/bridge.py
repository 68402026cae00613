"""Camera frame buffers -> BGR images and scores: the Python half of the C firmware bridge.

Firmware hands over frames as the camera produced them (BGR24, RGB24, GRAY8, YUYV from
V4L2/UVC, NV12 from Jetson/Argus), row-padded to a stride. Here they become NumPy *views* of
that memory (no copy), are converted to BGR once with OpenCV's own conversion codes, and
are scored by ``Runtime``. ``firmware_bridge/`` calls ``FrameScorer`` through CPython's C API;
Python firmware can use it directly for raw buffers. numpy/OpenCV only: no torch here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_smw.errors import (
    BackendUnavailableError,
    EdgeSmwError,
    InputError,
    ModelError,
)
from edge_smw.runtime import Runtime, ScoreResult

PIXEL_FORMATS = ("bgr24", "rgb24", "gray8", "yuyv", "nv12")
# Bytes per pixel of one row (NV12: the Y row and the interleaved UV row are both `width`).
_ROW_BYTES = {"bgr24": 3, "rgb24": 3, "gray8": 1, "yuyv": 2, "nv12": 1}
# Largest side a frame may have (matches firmware_bridge's check).
MAX_SIDE = 32768

Buffer = Any  # anything exposing the buffer protocol: bytes, bytearray, memoryview, ndarray


def _check_geometry(width: int, height: int, fmt: str, stride: int | None) -> int:
    """Validate a frame's size and pixel format; return the effective stride."""
    if fmt not in _ROW_BYTES:
        raise InputError(f"unknown pixel format {fmt!r}; use one of {list(PIXEL_FORMATS)}")
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise InputError(f"frame size {width}x{height} is out of range (1..{MAX_SIDE})")
    if fmt in ("yuyv", "nv12") and width % 2:
        raise InputError(f"{fmt} needs an even width (2 pixels share chroma), got {width}")
    if fmt == "nv12" and height % 2:
        raise InputError(f"nv12 needs an even height (2 rows share chroma), got {height}")
    row = width * _ROW_BYTES[fmt]
    stride = row if not stride else int(stride)
    if stride < row:
        raise InputError(f"stride {stride} is too small for a {width}-pixel-wide {fmt} row "
                         f"(needs at least {row} bytes)")
    return stride


def frame_bytes(width: int, height: int, fmt: str, stride: int | None = None) -> int:
    """Bytes one frame occupies (rows x stride; NV12 has height * 3/2 rows): V4L2's sizeimage."""
    stride = _check_geometry(width, height, fmt, stride)
    rows = height + height // 2 if fmt == "nv12" else height
    return rows * stride


def _plane(buffer: Buffer, rows: int, cols: int, channels: int, stride: int,
           what: str) -> np.ndarray:
    """A (rows, cols[, channels]) uint8 view of ``buffer`` with rows ``stride`` bytes apart."""
    flat = np.frombuffer(buffer, dtype=np.uint8)
    need = stride * (rows - 1) + cols * channels
    if flat.size < need:
        raise InputError(f"{what} buffer holds {flat.size} bytes, a {cols}x{rows} plane with "
                         f"stride {stride} needs at least {need}")
    if channels == 1:
        shape, strides = (rows, cols), (stride, 1)
    else:
        shape, strides = (rows, cols, channels), (stride, channels, 1)
    return np.ndarray(shape, np.uint8, buffer=flat, strides=strides)


def frame_view(buffer: Buffer, width: int, height: int, fmt: str,
               stride: int | None = None) -> np.ndarray:
    """A zero-copy NumPy view of a packed frame, or of an NV12 frame's Y plane.

    bgr24/rgb24 -> (H, W, 3); gray8 -> (H, W); yuyv -> (H, W, 2); nv12 -> the Y plane (H, W)
    (use ``nv12_planes`` for both planes).
    """
    stride = _check_geometry(width, height, fmt, stride)
    channels = {"bgr24": 3, "rgb24": 3, "gray8": 1, "yuyv": 2, "nv12": 1}[fmt]
    return _plane(buffer, height, width, channels, stride, fmt)


def nv12_planes(y_buffer: Buffer, width: int, height: int, y_stride: int | None = None,
                uv_buffer: Buffer | None = None,
                uv_stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Zero-copy views (Y (H, W), UV (H/2, W/2, 2)) of an NV12 frame.

    Without ``uv_buffer`` the UV plane follows the Y plane in ``y_buffer`` (V4L2 NV12 layout:
    at byte ``y_stride * height``); with it, the planes are separate (Argus, V4L2 NV12M).
    """
    y_stride = _check_geometry(width, height, "nv12", y_stride)
    y = _plane(y_buffer, height, width, 1, y_stride, "nv12 Y")
    if uv_buffer is None:
        uv_buffer = memoryview(y_buffer).cast("B")[y_stride * height :]
        uv_stride = y_stride
    uv_stride = _check_geometry(width, height, "nv12", uv_stride)
    uv = _plane(uv_buffer, height // 2, width // 2, 2, uv_stride, "nv12 UV")
    return y, uv


def decode_frame(buffer: Buffer, width: int, height: int, fmt: str, stride: int | None = None,
                 *, uv_buffer: Buffer | None = None,
                 uv_stride: int | None = None) -> np.ndarray:
    """A camera frame -> BGR uint8 (H, W, 3), converted once with OpenCV.

    BGR24 comes back as a view of ``buffer`` (no copy); everything else is one cvtColor.
    YUV is OpenCV's BT.601 video-range conversion (what V4L2 UVC cameras and Argus deliver).
    """
    if fmt == "nv12":
        y, uv = nv12_planes(buffer, width, height, stride, uv_buffer, uv_stride)
        return cv2.cvtColorTwoPlane(y, uv, cv2.COLOR_YUV2BGR_NV12)
    view = frame_view(buffer, width, height, fmt, stride)
    if fmt == "bgr24":
        return view
    code = {"rgb24": cv2.COLOR_RGB2BGR, "gray8": cv2.COLOR_GRAY2BGR,
            "yuyv": cv2.COLOR_YUV2BGR_YUYV}[fmt]
    return cv2.cvtColor(view, code)


def encode_frame(image_bgr: np.ndarray, fmt: str, stride: int | None = None) -> bytes:
    """BGR uint8 -> the bytes a camera would deliver in ``fmt``, rows padded to ``stride``.

    For firmware simulators and tests (a frame file for the example loop); uses OpenCV's
    BGR->YUV conversions, the inverse of ``decode_frame``'s.
    """
    if not isinstance(image_bgr, np.ndarray) or image_bgr.dtype != np.uint8 or \
            image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise InputError("encode_frame needs a uint8 HxWx3 BGR image")
    height, width = image_bgr.shape[:2]
    stride = _check_geometry(width, height, fmt, stride)
    if fmt == "bgr24":
        rows = image_bgr
    elif fmt == "rgb24":
        rows = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
    elif fmt == "gray8":
        rows = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    elif fmt == "yuyv":
        rows = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2YUV_YUYV)
    else:  # nv12: OpenCV writes I420 (Y, U plane, V plane); interleave U and V
        i420 = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2YUV_I420).reshape(-1)
        n = (height // 2) * (width // 2)
        luma = i420[: height * width].reshape(height, width)
        u = i420[height * width : height * width + n]
        v = i420[height * width + n :]
        chroma = np.stack([u, v], axis=1).reshape(height // 2, width)
        rows = np.concatenate([luma, chroma])
    rows = rows.reshape(rows.shape[0], -1)
    out = np.zeros((rows.shape[0], stride), np.uint8)
    out[:, : rows.shape[1]] = rows
    return out.tobytes()


def face_dtype(max_levels: int) -> np.dtype:
    """NumPy twin of the C ``esmw_face`` struct (natural C alignment)."""
    return np.dtype([
        ("x", np.int32), ("y", np.int32), ("width", np.int32), ("height", np.int32),
        ("level", np.int32), ("num_levels", np.int32), ("expected_score", np.float64),
        ("probabilities", np.float64, (max_levels,)),
    ], align=True)


class FrameScorer:
    """A ``Runtime`` that takes raw camera buffers and can write results into C structs.

    ``face_layout`` = (sizeof, offsetof level, offsetof expected_score, offsetof
    probabilities, max levels) of the caller's ``esmw_face``: checked against ``face_dtype`` so
    a compiler with other alignment is an error at open, not garbage at score time.
    """

    def __init__(self, model: str | Path, *, backend: str = "auto", threads: int | None = None,
                 detect_faces: bool = True, max_faces: int = 5, device: int = 0,
                 face_layout: tuple[int, int, int, int, int] | None = None) -> None:
        self.dtype: np.dtype | None = None
        if face_layout is not None:
            size, off_level, off_expected, off_probs, max_levels = (int(v) for v in face_layout)
            dtype = face_dtype(max_levels)
            ours = (dtype.itemsize, dtype.fields["level"][1], dtype.fields["expected_score"][1],
                    dtype.fields["probabilities"][1])
            if ours != (size, off_level, off_expected, off_probs):
                raise LayoutError(f"esmw_face layout {size, off_level, off_expected, off_probs} "
                                  f"differs from the bridge's {ours}; rebuild firmware_bridge "
                                  "with the same compiler settings as the caller")
            self.dtype = dtype
        self.runtime = Runtime(model, backend=backend or "auto", threads=threads or None,
                               detect_faces=bool(detect_faces), max_faces=max_faces or 5,
                               device=device)
        self.levels = self.runtime.levels
        if self.dtype is not None and len(self.levels) > self.dtype["probabilities"].shape[0]:
            limit = self.dtype["probabilities"].shape[0]
            self.runtime.close()
            raise ModelError(f"{self.runtime.path} has {len(self.levels)} levels; the C ABI "
                             f"carries at most {limit} (EDGE_SMW_MAX_LEVELS)")

    @property
    def backend(self) -> str:
        return self.runtime.backend

    def score(self, buffer: Buffer, width: int, height: int, fmt: str,
              stride: int | None = None, *, uv_buffer: Buffer | None = None,
              uv_stride: int | None = None) -> ScoreResult:
        """Score one raw frame (see ``decode_frame`` for the layouts)."""
        image = decode_frame(buffer, width, height, fmt, stride, uv_buffer=uv_buffer,
                             uv_stride=uv_stride)
        return self.runtime.score(image)

    def score_into(self, out: Buffer | None, fmt: str, width: int, height: int,
                   plane0: Buffer, stride0: int, plane1: Buffer | None = None,
                   stride1: int | None = None) -> int:
        """Score a frame and write up to len(out) faces into ``out`` (esmw_face structs).

        Returns the number of faces found, which may be more than were written.
        """
        if self.dtype is None:
            raise LayoutError("score_into needs the FrameScorer opened with face_layout")
        if fmt == "nv12" and plane1 is not None:
            result = self.score(plane0, width, height, fmt, stride0, uv_buffer=plane1,
                                uv_stride=stride1)
        else:
            result = self.score(plane0, width, height, fmt, stride0)
        if out is not None and result.faces:
            records = np.frombuffer(out, dtype=self.dtype)
            k = len(self.levels)
            for record, face in zip(records, result.faces, strict=False):
                box = face.box if face.box is not None else (0, 0, width, height)
                record["x"], record["y"], record["width"], record["height"] = box
                record["level"] = face.level
                record["num_levels"] = k
                record["expected_score"] = face.expected_score
                record["probabilities"][:k] = face.probabilities
                record["probabilities"][k:] = 0.0
        return len(result.faces)

    def close(self) -> None:
        self.runtime.close()


class LayoutError(EdgeSmwError, RuntimeError):
    """The C caller's struct layout is not the one this module writes."""


def error_category(exc: BaseException) -> tuple[str, str]:
    """(category, one-line text) for an exception, for the C bridge's status codes."""
    if isinstance(exc, LayoutError):
        category = "abi"
    elif isinstance(exc, ModelError):
        category = "model"
    elif isinstance(exc, BackendUnavailableError):
        category = "backend"
    elif isinstance(exc, InputError):
        category = "argument"
    elif isinstance(exc, ImportError):
        category = "package"
    else:
        category = "internal"
    text = str(exc) if isinstance(exc, EdgeSmwError) else f"{type(exc).__name__}: {exc}"
    return category, " ".join(text.split())
