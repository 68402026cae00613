"""Photo -> face crop in model pixels, with a report of every file that could not be used.

Crops are what the backbone sees, so they follow the preprocessing contract exactly:
read (EXIF upright) -> largest Haar face + margin (or the whole image with ``detect=False``)
-> ``contract.to_model_pixels``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_smw.contract import PreprocessContract
from edge_smw.errors import ImageReadError
from edge_smw.faces import largest_face
from edge_smw.images import read_image


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
    path: str | Path, contract: PreprocessContract, *, detect: bool, report: SkipReport
) -> np.ndarray | None:
    """Model pixels (uint8 HxWx3) for one photo, or None (and a line in ``report``)."""
    try:
        image = read_image(path)
    except ImageReadError as exc:
        report.unreadable.append((str(path), exc.reason))
        return None
    if detect:
        box = largest_face(image)
        if box is None:
            report.no_face.append(str(path))
            return None
        image = contract.crop_face(image, box)
    return contract.to_model_pixels(image)
