"""The photos being labelled: which files they are, where their face is, what a model says.

Only files found by ``list_photos`` inside PHOTOS_DIR are ever opened; every open goes
through ``resolve_inside`` again, so a symlink swapped in later cannot point the server at a
file outside the folder. Face boxes and crops follow the preprocessing contract (the model's
own, or the contract's defaults without a model), exactly as training will crop them.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edge_smw.contract import Box, PreprocessContract
from edge_smw.detect import shared_detector
from edge_smw.errors import ImageReadError, InputError
from edge_smw.images import IMAGE_SUFFIXES, is_image_path, read_image

if TYPE_CHECKING:  # pragma: no cover
    from edge_smw.runtime.runtime import Runtime

log = logging.getLogger("edge_smw.label")

DISPLAY_SIDE = 1600  # the photo is sent to the page at most this long (it stays local anyway)
FACE_DISPLAY_MIN = 192  # a face crop smaller than this is enlarged for the page
_RENDER_CACHE = 24  # photos whose page images are kept ready


class PathRejected(InputError):
    """A requested path that is not a file inside PHOTOS_DIR."""


@dataclass
class Listing:
    keys: list[str]  # POSIX paths relative to the folder, sorted
    outside: list[str]  # symlinks that point outside the folder: never shown


def list_photos(root: str | os.PathLike[str], *, exclude: set[str] | None = None) -> Listing:
    """Every image file under ``root`` (hidden files and folders left out), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"PHOTOS_DIR {root} is not a folder; give the folder of your photos")
    real_root = Path(os.path.realpath(root))
    keys: list[str] = []
    outside: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or not is_image_path(name):
                continue
            path = Path(dirpath) / name
            key = path.relative_to(root).as_posix()
            if exclude and key in exclude:
                continue
            try:
                resolve_inside(real_root, key)
            except PathRejected:
                outside.append(key)
                continue
            keys.append(key)
    if not keys:
        raise InputError(
            f"no photos in {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, in "
            "sub-folders too); give the folder that holds your photos"
        )
    return Listing(sorted(keys), sorted(outside))


def resolve_inside(real_root: Path, key: str) -> Path:
    """The real file for ``key``, or ``PathRejected`` if it is not a file inside the folder.

    Rejects absolute paths, drive letters, NUL bytes, ``..`` and symlinks that lead outside.
    """
    if not key or "\x00" in key or "\\" in key:
        raise PathRejected(f"{key!r} is not a photo path")
    posix = PurePosixPath(key)
    if posix.is_absolute() or PureWindowsPath(key).drive or ".." in posix.parts:
        raise PathRejected(f"{key!r} is outside the photos folder")
    real = Path(os.path.realpath(real_root / posix))
    if not real.is_relative_to(real_root) or real == real_root:
        raise PathRejected(f"{key!r} leads outside the photos folder")
    if not real.is_file():
        raise PathRejected(f"{key!r} is not a file")
    return real


@dataclass
class PhotoInfo:
    """What the page shows beside a photo. ``error`` set: the photo cannot be read."""

    path: str
    error: str | None = None
    width: int = 0
    height: int = 0
    faces: int = 0
    box: Box | None = None  # the largest face, the one training uses
    square: Box | None = None  # the crop the contract takes around it (with its margin)
    suggestion: dict[str, Any] | None = None  # the model's score of that crop
    entropy: float | None = None  # 0 (certain) .. 1 (uniform), over the levels
    margin: float | None = None  # top-1 minus top-2 probability: small = unsure

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "error": self.error, "width": self.width, "height": self.height,
            "faces": self.faces, "box": list(self.box) if self.box else None,
            "square": list(self.square) if self.square else None,
            "suggestion": self.suggestion, "entropy": self.entropy, "margin": self.margin,
        }


def uncertainty(probabilities: np.ndarray) -> tuple[float, float]:
    """(normalised entropy, top-1 minus top-2 margin) of one probability vector."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum() / math.log(len(p)))
    top = np.sort(p)[::-1]
    return entropy, float(top[0] - top[1])


class PhotoAnalyser:
    """Reads, finds the face, crops and scores one photo at a time; remembers the results.

    Thread-safe: several threads may ask for the same photo; it is analysed once.
    """

    def __init__(self, root: str | os.PathLike[str], contract: PreprocessContract, *,
                 detect: bool = True, runtime: Runtime | None = None) -> None:
        self.real_root = Path(os.path.realpath(root))
        self.contract = contract
        self.detect = detect
        self.runtime = runtime
        self._lock = threading.Lock()
        self._infos: dict[str, Future[PhotoInfo]] = {}
        self._renders: OrderedDict[str, dict[str, bytes]] = OrderedDict()

    def path(self, key: str) -> Path:
        return resolve_inside(self.real_root, key)

    def known(self) -> list[PhotoInfo]:
        """The photos analysed so far (for the unreadable list and the progress of checking)."""
        with self._lock:
            futures = list(self._infos.values())
        return [f.result() for f in futures if f.done() and f.exception() is None]

    def info(self, key: str) -> PhotoInfo:
        with self._lock:
            future = self._infos.get(key)
            owner = future is None
            if owner:
                future = Future()
                self._infos[key] = future
        assert future is not None
        if owner:
            try:
                future.set_result(self._analyse(key))
            except BaseException as exc:
                with self._lock:
                    self._infos.pop(key, None)  # let a later call try again
                future.set_exception(exc)
                raise
        return future.result()

    def _analyse(self, key: str) -> PhotoInfo:
        info = PhotoInfo(key)
        try:
            image = read_image(self.path(key))
        except ImageReadError as exc:
            info.error = exc.reason
            log.warning("unreadable photo %s: %s", key, exc.reason)
            return info
        info.height, info.width = image.shape[:2]
        crop = self._face_crop(image, info)
        if crop is not None and self.runtime is not None:
            face = self.runtime.score_crop(crop)
            info.suggestion = face.to_dict()
            info.entropy, info.margin = uncertainty(face.probabilities)
        return info

    def _face_crop(self, image: np.ndarray, info: PhotoInfo) -> np.ndarray | None:
        """The crop training would use for this photo (None: no face, training skips it)."""
        if not self.detect:
            info.faces = 1
            return image
        found = shared_detector(self.contract.detector).detect(image)
        info.faces = len(found)
        if not found:
            return None
        info.box = found[0].box
        info.square = self.contract.face_square(found[0].box, image.shape)
        return self.contract.crop_face(image, found[0].box, found[0].eyes)

    def render(self, key: str, kind: str) -> bytes:
        """JPEG bytes for the page: ``photo`` (downscaled, upright) or ``face`` (the crop).

        Raises ``ImageReadError`` for an unreadable photo and ``PathRejected`` for a path that
        is not a photo inside the folder; ``LookupError`` when the photo has no face.
        """
        if kind not in ("photo", "face"):
            raise InputError(f"kind must be 'photo' or 'face', got {kind!r}")
        self.path(key)  # still a file inside the folder (even when its images are cached)
        with self._lock:
            cached = self._renders.get(key)
            if cached is not None:
                self._renders.move_to_end(key)
        if cached is None:
            cached = self._render_both(key)
            with self._lock:
                self._renders[key] = cached
                while len(self._renders) > _RENDER_CACHE:
                    self._renders.popitem(last=False)
        if kind not in cached:
            raise LookupError(f"{key}: no face was found in this photo")
        return cached[kind]

    def _render_both(self, key: str) -> dict[str, bytes]:
        info = self.info(key)
        if info.error:
            raise ImageReadError(key, info.error)
        image = read_image(self.path(key))
        out = {"photo": _jpeg(_fit(image, DISPLAY_SIDE))}
        crop = None
        if not self.detect:
            crop = image
        elif info.box is not None:
            crop = self.contract.crop_face(image, info.box)
        if crop is not None:
            pixels = self.contract.to_model_pixels(crop)  # exactly what the model is fed
            if self.contract.color_order == "RGB":
                pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
            if pixels.shape[0] < FACE_DISPLAY_MIN:
                pixels = cv2.resize(pixels, (FACE_DISPLAY_MIN, FACE_DISPLAY_MIN),
                                    interpolation=cv2.INTER_NEAREST)
            out["face"] = _jpeg(pixels)
        return out


def _fit(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    if max(h, w) <= side:
        return image
    scale = side / max(h, w)
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                      interpolation=cv2.INTER_AREA)


def _jpeg(image_bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 BGR
        raise InputError("could not encode a photo for the page")
    return buf.tobytes()
