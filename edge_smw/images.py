"""Safe image reading: EXIF orientation, odd formats and broken files, with clear errors.

Every place that reads a photo goes through ``read_image`` so phone photos are always shown
upright and a bad file always names itself. Decoding is Pillow's; we only normalise the
result to 8-bit BGR (OpenCV's order) and guard against decompression bombs.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import IO

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from edge_smw.errors import ImageReadError, InputError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
# The most pixels a photo may have to be decoded at all (after a JPEG's reduced-size draft);
# a setting: read_image(max_pixels=...), serve's upload limit.
MAX_PIXELS = 80_000_000
# Photos are shrunk to at most this long side after decoding: faces need no more.
MAX_SIDE = 4096


def is_image_path(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | os.PathLike[str], *, max_side: int = MAX_SIDE,
               max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read a photo as an upright 8-bit BGR array, or raise ``ImageReadError`` naming it.

    Large photos are decoded reduced (see ``_decode``) to at most about ``max_side`` pixels on
    the long side; ``max_pixels`` bounds what may be decoded at all.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot be read ({exc.strerror or exc})") from None
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image")
    if size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    return _decode(path, path, max_side, max_pixels)


def decode_image_bytes(
    data: bytes, *, name: str = "upload", max_side: int = MAX_SIDE, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Decode an in-memory image (an upload, an object-store file) with the same rules and
    the same reasons as ``read_image``, so a photo scores alike from bytes and from disk."""
    import io

    if not data:
        raise ImageReadError(name, "empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, max_side, max_pixels)


def _decode(source: Path | IO[bytes], name: object, max_side: int,
            max_pixels: int) -> np.ndarray:
    """Pillow decoding, bounded in memory: every failure is an ``ImageReadError``.

    A decoder fed untrusted bytes may fail in any way (Pillow raises OSError, ValueError,
    SyntaxError, struct.error, EOFError, ... and DecompressionBombError), so any exception
    from it means "this file cannot be decoded", never a crash of the caller.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                img = _load_reduced(img, name, max_side, max_pixels)
                img = ImageOps.exif_transpose(img)
                array = _to_bgr8(img)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(name, "not an image file Pillow can decode") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageReadError(name, "too large to decode safely; downscale it first") from None
    except MemoryError:
        raise ImageReadError(name, "too large to decode in the memory available; downscale "
                                   "it first") from None
    except Exception as exc:
        raise ImageReadError(name, f"truncated or corrupt image ({type(exc).__name__}: "
                                   f"{' '.join(str(exc).split())[:200]})") from None
    return _limit_side(array, max_side)


def _load_reduced(img: Image.Image, name: object, max_side: int,
                  max_pixels: int) -> Image.Image:
    """Decode ``img`` no larger than detection and the face crop need.

    Photos end up at most ``max_side`` on the long side anyway, so a JPEG is decoded at 1/2,
    1/4 or 1/8 scale in the decoder (``draft``), and any other format is box-reduced by an
    integer factor right after decoding (``reduce``), before any conversion copies it: the
    peak is the decoded image in its own mode once, not several full-size RGB copies.
    ``max_pixels`` bounds what the decoder may allocate at all.
    """
    width, height = img.size
    long_side = max(width, height)
    if long_side > max_side and img.format == "JPEG":
        scale = max_side / long_side
        img.draft(img.mode, (max(1, math.ceil(width * scale)),
                             max(1, math.ceil(height * scale))))
    if img.width * img.height > max_pixels:
        raise ImageReadError(name, f"too large ({width}x{height} pixels, limit {max_pixels}); "
                                   "downscale it first")
    img.load()
    factor = max(img.size) // max_side
    if factor < 2:
        return img
    decoded = img
    orientation = img.getexif().get(ExifTags.Base.Orientation)  # read after load(), as
    # exif_transpose does (a TIFF's orientation is applied by load() itself)
    if img.mode in ("P", "PA"):  # reduce() averages values: palette indices must go first
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode.startswith("I;16"):
        img = img.convert("I")
    reduced = img.reduce(factor)
    for full_size in {id(img): img, id(decoded): decoded}.values():
        full_size.close()  # frees the full-size pixels now, not when the caller is done
    if orientation is not None:  # not every format's EXIF survives reduce(): keep it
        reduced.getexif()[ExifTags.Base.Orientation] = orientation
    return reduced


def to_bgr(frame: np.ndarray, color: str = "bgr") -> np.ndarray:
    """Validate a caller's uint8 frame and return it as HxWx3 BGR (no copy when already BGR)."""
    if not isinstance(frame, np.ndarray):
        raise InputError(f"expected a numpy uint8 image, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise InputError(
            f"expected a uint8 image, got dtype {frame.dtype}; convert with "
            "np.clip(x, 0, 255).astype(np.uint8)"
        )
    if frame.size == 0 or frame.ndim not in (2, 3) or min(frame.shape[:2]) == 0:
        raise InputError(f"empty or malformed frame of shape {frame.shape}")
    if not isinstance(color, str):
        raise InputError(f"color must be 'bgr', 'rgb' or 'gray', got {color!r}")
    color = color.lower()
    if color == "gray":
        if frame.ndim == 3 and frame.shape[2] != 1:
            raise InputError(f"color='gray' needs an HxW frame, got shape {frame.shape}")
        return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
    if frame.ndim != 3 or frame.shape[2] != 3:
        if frame.ndim == 3 and frame.shape[2] == 4:
            raise InputError(f"color={color!r} needs an HxWx3 frame, got a 4-channel one "
                             f"(shape {frame.shape}); drop its alpha channel first, e.g. "
                             "cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)")
        raise InputError(
            f"color={color!r} needs an HxWx3 frame, got shape {frame.shape}; pass color='gray' "
            "for single-channel frames"
        )
    if color == "bgr":
        return frame
    if color == "rgb":
        return cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    raise InputError(f"color must be 'bgr', 'rgb' or 'gray', got {color!r}")


def write_image(path: str | os.PathLike[str], image_bgr: np.ndarray) -> Path:
    """Encode with OpenCV (PNG is lossless) and write atomically."""
    from edge_smw.atomic import write_bytes

    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".png", image_bgr)
    if not ok:
        raise InputError(f"cannot encode an image as {path.suffix!r} for {path}")
    return write_bytes(path, buf.tobytes())


def _to_bgr8(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        gray = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    if mode == "F":
        array = np.asarray(img, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        gray = ((array - lo) / (hi - lo or 1.0) * 255.0).astype(np.uint8)
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    rgb = np.asarray(img.convert("RGB"))
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def _limit_side(array: np.ndarray, max_side: int) -> np.ndarray:
    h, w = array.shape[:2]
    if max(h, w) <= max_side:
        return np.ascontiguousarray(array)
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(array, size, interpolation=cv2.INTER_AREA)
