"""Image paths -> face crops, and level names -> indices, for ``explain`` and ``fool``.

Torch-free: the device-side ``explain`` on an exported model uses it too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_smw.contract import Box, PreprocessContract
from edge_smw.detect import largest_face
from edge_smw.errors import ImageReadError, InputError
from edge_smw.images import IMAGE_SUFFIXES, read_image
from edge_smw.rank import collect_images


@dataclass
class FaceCrop:
    """One input image's face, cut out by the contract (BGR, any size) and where it was."""

    path: Path
    crop_bgr: np.ndarray
    box: Box | None  # None: the whole image was used (--no-detect)


@dataclass
class CropBatch:
    crops: list[FaceCrop] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def resolve_level(spec: str | int | None, levels: Sequence[str]) -> int | None:
    """A level's name, or its 1-based position -> 0-based index (names win over positions)."""
    if spec is None:
        return None
    text = str(spec).strip()
    if text in levels:
        return list(levels).index(text)
    if text.isdigit() and 1 <= int(text) <= len(levels):
        return int(text) - 1
    raise InputError(
        f"unknown level {text!r}: this model's levels are {list(levels)}; give a name or a "
        f"position 1..{len(levels)}"
    )


def expand_images(inputs: Iterable[str | Path]) -> tuple[list[Path], list[bool]]:
    """Files stay as given; a folder becomes its image files, sub-folders too, as ``score``
    lists them (``edge_smw.rank.collect_images``: sorted, dot-files left out).

    Returns the paths and, for each, whether the user named it explicitly (an explicit file
    that fails is an error; a folder's file that fails is skipped and reported).
    """
    paths: list[Path] = []
    explicit: list[bool] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            try:
                found = collect_images([path])
            except InputError:
                suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
                raise InputError(f"{path} holds no image files ({suffixes}), nor do its "
                                 "sub-folders") from None
            paths += found
            explicit += [False] * len(found)
        elif path.exists():
            paths.append(path)
            explicit.append(True)
        else:
            raise InputError(f"{path} not found; give image files or folders of images")
    if not paths:
        raise InputError("no images given")
    return paths, explicit


def face_crop(path: str | Path, contract: PreprocessContract, *, detect: bool) -> FaceCrop:
    """Read one photo and cut out its largest face (or take it whole), or raise naming it."""
    path = Path(path)
    image = read_image(path)
    if not detect:
        return FaceCrop(path, image, None)
    face = largest_face(image, contract)
    if face is None:
        raise InputError(
            f"{path}: no face found; if the image is already a face crop, pass --no-detect"
        )
    return FaceCrop(path, contract.crop_face(image, face.box, face.eyes), face.box)


def load_crops(inputs: Iterable[str | Path], contract: PreprocessContract, *,
               detect: bool) -> CropBatch:
    """Crops for every input; files found inside folders that fail are skipped with a reason."""
    paths, explicit = expand_images(inputs)
    batch = CropBatch()
    for path, named in zip(paths, explicit, strict=True):
        try:
            batch.crops.append(face_crop(path, contract, detect=detect))
        except (ImageReadError, InputError) as exc:
            if named:
                raise
            batch.skipped.append((str(path), str(exc)))
    if not batch.crops:
        reasons = "; ".join(f"{p}: {r}" for p, r in batch.skipped[:3])
        raise InputError(f"none of the images could be used ({reasons})")
    return batch


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """File-name stems made unique (a/x.jpg and b/x.jpg -> x, x-2) for output names."""
    taken: set[str] = set()
    out = []
    for path in paths:
        stem = path.stem or "image"
        name, n = stem, 1
        while name in taken:
            n += 1
            name = f"{stem}-{n}"
        taken.add(name)
        out.append(name)
    return out

