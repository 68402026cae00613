"""Photo -> face crop in model pixels, with a report of every file that could not be used.

Crops are what the backbone sees, so they follow the preprocessing contract exactly:
read (EXIF upright) -> largest face from the contract's own detector + margin (aligned
where the contract says; or the whole image with ``detect=False``) ->
``contract.to_model_pixels``. Detected crops are cached by file hash (detection on a
full-size photo costs far more than reading a small PNG back).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge_smw.atomic import atomic_path, write_text
from edge_smw.cache import cache_root, file_sha256
from edge_smw.contract import PreprocessContract
from edge_smw.data.datasets import LabelledImage
from edge_smw.detect import largest_face
from edge_smw.errors import ImageReadError, InputError
from edge_smw.images import read_image

_NO_FACE = "no-face"


@dataclass
class SkipReport:
    """Files that were skipped, each with its reason; shown to the user, never silent."""

    unreadable: list[tuple[str, str]] = field(default_factory=list)
    no_face: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.unreadable) + len(self.no_face)

    def to_dict(self) -> dict:
        return {
            "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable],
            "no_face": list(self.no_face),
        }

    def summary(self) -> str:
        return f"{len(self.unreadable)} unreadable, {len(self.no_face)} without a face"


def load_crop(
    path: str | Path, contract: PreprocessContract, *, detect: bool, report: SkipReport,
    cache: bool = True,
) -> np.ndarray | None:
    """Model pixels (uint8 HxWx3) for one photo, or None (and a line in ``report``)."""
    cached = _crop_cache_file(path, contract) if detect and cache else None
    if cached is not None:
        if cached.with_suffix(".noface").is_file():
            report.no_face.append(str(path))
            return None
        pixels = cv2.imread(str(cached), cv2.IMREAD_UNCHANGED) if cached.is_file() else None
        if pixels is not None and pixels.shape == (contract.input_size, contract.input_size, 3):
            return pixels
    faceless = len(report.no_face)
    image = read_face(path, contract, detect=detect, report=report)
    if image is None:
        if cached is not None and len(report.no_face) > faceless:  # remember: no face here
            _quietly(lambda: write_text(cached.with_suffix(".noface"), _NO_FACE))
        return None
    pixels = contract.to_model_pixels(image)
    if cached is not None:
        _quietly(lambda: _write_png(cached, pixels))
    return pixels


def read_face(path: str | Path, contract: PreprocessContract, *, detect: bool,
              report: SkipReport) -> np.ndarray | None:
    """The face as the contract crops it from a photo (BGR, its own size; the whole image
    with ``detect=False``), or None (and a line in ``report``): ``load_crop`` before the
    resize to model pixels."""
    try:
        image = read_image(path)
    except ImageReadError as exc:
        report.unreadable.append((str(path), exc.reason))
        return None
    if not detect:
        return image
    face = largest_face(image, contract)
    if face is None:
        report.no_face.append(str(path))
        return None
    return contract.crop_face(image, face.box, face.eyes)


def _crop_cache_file(path: str | Path, contract: PreprocessContract) -> Path | None:
    try:
        digest = file_sha256(path)
    except OSError:
        return None  # read_image will name the problem
    return cache_root() / "crops" / contract.geometry_sha256[:12] / digest[:2] / f"{digest}.png"


def _write_png(target: Path, pixels: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", pixels)  # raw channel order kept: read back as written
    if ok:
        with atomic_path(target) as tmp:
            tmp.write_bytes(buf.tobytes())


def _quietly(write) -> None:  # noqa: ANN001 - a thunk
    try:
        write()
    except (OSError, InputError):
        pass  # a read-only cache only costs speed


def iter_crop_batches(
    items: Sequence[LabelledImage], contract: PreprocessContract, *, detect: bool,
    report: SkipReport, batch_size: int = 32,
) -> Iterator[tuple[int, list[LabelledImage], np.ndarray | None]]:
    """Per batch of ``items``: (how many were read, the usable ones, their stacked pixels).

    Unusable files go to ``report``; a batch with none usable yields ``([], None)``, so
    progress bars still advance.
    """
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        kept, pixels = [], []
        for item in chunk:
            crop = load_crop(item.path, contract, detect=detect, report=report)
            if crop is not None:
                kept.append(item)
                pixels.append(crop)
        yield len(chunk), kept, (np.stack(pixels) if pixels else None)
