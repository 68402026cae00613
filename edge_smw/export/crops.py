"""Real face crops for calibration and parity, taken exactly as the model sees them.

Calibration crops come from the run's *training* split (stratified by level) or from a
folder given with ``--calib-data``; parity crops from the run's *validation* split. Every
crop goes through the checkpoint's own contract (and its face-detection flag), so the
quantizer sees the same pixels the camera will. Never random data.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_smw.artifacts.folders import SPLIT_NAME, RunDir
from edge_smw.contract import PreprocessContract
from edge_smw.data.crops import SkipReport, load_crop
from edge_smw.data.datasets import LabelledImage, SplitManifest, stratified_items
from edge_smw.errors import DataError, InputError
from edge_smw.images import is_image_path

MIN_CALIBRATION = 64


@dataclass
class CropSet:
    """Model pixels (N, H, W, 3 uint8, colour order of the contract) with their levels."""

    pixels: np.ndarray
    levels: np.ndarray  # int64, -1 where unlabelled
    paths: list[str]
    source: str
    skipped: SkipReport = field(default_factory=SkipReport)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def sha256(self) -> str:
        """Hash of exactly what the quantizer saw: the pixels, in order."""
        digest = hashlib.sha256()
        digest.update(str(self.pixels.shape).encode())
        digest.update(np.ascontiguousarray(self.pixels).tobytes())
        return digest.hexdigest()

    @property
    def labelled(self) -> bool:
        return bool(len(self.levels)) and bool(np.all(self.levels >= 0))

    def inputs(self, contract: PreprocessContract, start: int = 0,
               stop: int | None = None) -> np.ndarray:
        """Network input (float32 NCHW) for crops ``start:stop``."""
        return contract.normalize(self.pixels[start:stop])

    def subset(self, indices: Sequence[int]) -> CropSet:
        idx = np.asarray(indices, dtype=np.int64)
        return CropSet(self.pixels[idx], self.levels[idx], [self.paths[i] for i in idx],
                       self.source, self.skipped)

    def describe(self) -> dict:
        counts = {}
        if self.labelled:
            values, n = np.unique(self.levels, return_counts=True)
            counts = {int(v): int(c) for v, c in zip(values, n, strict=True)}
        return {"source": self.source, "count": len(self), "per_level_index": counts,
                "sha256": self.sha256, "skipped": self.skipped.summary()}


def load_crops(items: Sequence[LabelledImage | Path], contract: PreprocessContract, *,
               detect: bool, source: str, progress: bool = True, desc: str = "crops") -> CropSet:
    """Read, (detect,) crop and resize ``items`` with ``contract``; unusable files are listed."""
    from tqdm.auto import tqdm

    report = SkipReport()
    pixels, levels, paths = [], [], []
    for item in tqdm(items, desc=desc, unit="crop", disable=not progress, leave=False):
        path, level = (item.path, item.level) if isinstance(item, LabelledImage) else (item, -1)
        crop = load_crop(path, contract, detect=detect, report=report)
        if crop is None:
            continue
        pixels.append(crop)
        levels.append(level)
        paths.append(str(Path(path).absolute()))
    size = contract.input_size
    stacked = np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)
    return CropSet(stacked, np.asarray(levels, dtype=np.int64), paths, source, report)


# -- the run's split manifest ----------------------------------------------------------------
def find_split(run_or_checkpoint: str | Path) -> Path | None:
    """``split.json`` of a run folder, or beside a checkpoint file."""
    return RunDir.of(run_or_checkpoint).find_split()


def split_items(split_path: Path, split: str, levels: Sequence[str]) -> list[LabelledImage]:
    """The items of one split, paths resolved by the manifest (``SplitManifest.resolve``)."""
    manifest = SplitManifest.load(split_path)
    if tuple(manifest.levels) != tuple(levels):
        raise DataError(
            f"{split_path} lists levels {list(manifest.levels)} but the checkpoint has "
            f"{list(levels)}: the split belongs to another run"
        )
    items = manifest.items(split)
    if not items:
        raise DataError(f"{split_path} has no '{split}' images")
    missing = [item.path for item in items if not item.path.exists()]
    if len(missing) == len(items):
        # --calib-data stands in for the training split only (calibration and tuning crops).
        instead = ", or pass --calib-data" if split == "train" else ""
        where = (f"relative paths are read from the folder `edge-smw train` ran in "
                 f"({manifest.base}), the working folder and the run folder: make the data "
                 f"reachable from one of them" if manifest.base else
                 "run from the folder `edge-smw train` ran in (relative paths are read from the "
                 "working folder, then from the run folder)")
        raise DataError(
            f"none of the {len(items)} '{split}' images listed in {split_path} exist here (first: "
            f"{missing[0]}); {where}{instead}"
        )
    return items


def folder_items(folder: Path, levels: Sequence[str]) -> list[LabelledImage | Path]:
    """A ``--calib-data`` folder: level sub-folders (named like the model's levels) or images."""
    if not folder.is_dir():
        raise InputError(f"--calib-data {folder}: not a folder of face photos")
    subdirs = {p.name: p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if set(levels) <= set(subdirs):
        return [LabelledImage(p, i) for i, name in enumerate(levels)
                for p in sorted(subdirs[name].rglob("*")) if p.is_file() and is_image_path(p)]
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and is_image_path(p)]


def calibration_crops(
    contract: PreprocessContract, *, detect: bool, size: int, run_or_checkpoint: str | Path,
    calib_data: str | Path | None = None, seed: int = 0, progress: bool = True,
    purpose: str = "INT8 calibration", size_flag: str = "--calib-size",
) -> CropSet:
    """The calibration set: stratified train-split crops, or ``--calib-data``; >= 64 crops
    (``purpose`` and ``size_flag`` name the step and its option in messages: tuning crops
    are drawn the same way)."""
    if size < MIN_CALIBRATION:
        raise InputError(f"{size_flag} {size}: {purpose} needs at least {MIN_CALIBRATION} "
                         "face crops")
    if calib_data is not None:
        folder = Path(calib_data)
        found = folder_items(folder, contract.levels)
        labelled = [i for i in found if isinstance(i, LabelledImage)]
        if labelled and len(labelled) == len(found):
            chosen: list = stratified_items(labelled, size, seed)
        else:
            chosen = list(found)
            random.Random(f"calib-{seed}").shuffle(chosen)
            chosen = chosen[:size]
        source = f"--calib-data {folder}"
    else:
        split = find_split(run_or_checkpoint)
        if split is None:
            raise InputError(
                f"no {SPLIT_NAME} beside {run_or_checkpoint}: calibration crops come from the "
                "run's training split; export the run folder, or pass --calib-data DIR"
            )
        chosen = stratified_items(split_items(split, "train", contract.levels), size, seed)
        source = f"train split of {split.parent}"
    crops = load_crops(chosen, contract, detect=detect, source=source, progress=progress,
                       desc=f"{purpose} crops")
    if len(crops) < MIN_CALIBRATION:
        raise InputError(
            f"only {len(crops)} usable face crops for {purpose} from {source} (need at "
            f"least {MIN_CALIBRATION}; skipped: {crops.skipped.summary()}); add face photos or "
            "pass --calib-data DIR with more"
        )
    return crops


def validation_crops(contract: PreprocessContract, *, detect: bool,
                     run_or_checkpoint: str | Path, limit: int | None = None,
                     seed: int = 0, progress: bool = True) -> CropSet:
    """The run's validation crops (all, or a stratified ``limit``): what parity is measured on."""
    split = find_split(run_or_checkpoint)
    if split is None:
        raise InputError(
            f"no {SPLIT_NAME} beside {run_or_checkpoint}: export parity is measured on the run's "
            "validation crops; export the run folder made by `edge-smw train`"
        )
    items = split_items(split, "val", contract.levels)
    if limit is not None and limit < len(items):
        items = stratified_items(items, limit, seed)
    crops = load_crops(items, contract, detect=detect, source=f"val split of {split.parent}",
                       progress=progress, desc="validation crops")
    if len(crops) == 0:
        raise DataError(f"no usable validation crops in {split} ({crops.skipped.summary()})")
    return crops
