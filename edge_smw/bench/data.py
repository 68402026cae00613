"""The labelled crops the bench judges models on: by default the run's own test split.

Crops go through the same path as training and the runtime (read, EXIF upright, optional
Haar face, ``contract.to_model_pixels``), so parity measures the models, not a second
preprocessing. Subsampling is stratified by level and seeded: two benches of one export
see the same crops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_smw.artifacts.folders import RunDir
from edge_smw.bench.results import DataSummary
from edge_smw.contract import PreprocessContract
from edge_smw.data.crops import SkipReport, load_crop
from edge_smw.data.datasets import LabelledImage, stratified_indices
from edge_smw.errors import DataError
from edge_smw.export.crops import split_items


@dataclass
class BenchData:
    """uint8 NHWC model pixels with their true levels; ``files``: every image file of the
    source, not only the sample read into ``pixels`` (the feature-pass row reads its own);
    ``detect``: whether faces were found in them (photos) or they are crops already."""

    pixels: np.ndarray
    labels: np.ndarray
    paths: list[str]
    levels: tuple[str, ...]
    source: str
    skipped: SkipReport = field(default_factory=SkipReport)
    files: list[str] = field(default_factory=list)
    detect: bool = False

    def __len__(self) -> int:
        return len(self.labels)

    def summary(self) -> DataSummary:
        counts = {name: int((self.labels == i).sum()) for i, name in enumerate(self.levels)}
        return DataSummary(source=self.source, n=len(self), counts=counts,
                           skipped=self.skipped.to_dict())


def stratified_sample(labels: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Indices of about ``limit`` items, levels in proportion (each level at least one)."""
    return np.asarray(stratified_indices(labels, limit, seed), dtype=np.int64)


SPLIT_ADVICE = "run from the folder the model was trained in, or pass --data"


def load_items(items: list[LabelledImage], contract: PreprocessContract, *, detect: bool,
               source: str, limit: int = 0, seed: int = 0,
               advice: str = SPLIT_ADVICE) -> BenchData:
    """Read (a stratified sample of) ``items`` into model pixels; ``advice`` is what to do
    when none can be used (it depends on where the items came from)."""
    if not items:
        raise DataError(f"{source}: no labelled images")
    labels = np.array([item.level for item in items], dtype=np.int64)
    if labels.max() >= contract.num_levels:
        raise DataError(f"{source} has level index {labels.max()} but the model has "
                        f"{contract.num_levels} levels {list(contract.levels)}")
    keep = stratified_indices(labels, limit, seed, keys=[str(i.path) for i in items])
    report = SkipReport()
    pixels, kept_labels, paths = [], [], []
    for i in keep:
        path = Path(items[i].path)  # split items come resolved (SplitManifest.resolve)
        crop = load_crop(path, contract, detect=detect, report=report)
        if crop is None:
            continue
        pixels.append(crop)
        kept_labels.append(items[i].level)
        paths.append(str(path))
    if detect:
        from edge_smw.predict import check_faces_found

        check_faces_found(len(keep), len(report.no_face))
    if not pixels:
        missing = report.unreadable[0] if report.unreadable else ("?", "no face found")
        raise DataError(f"{source}: none of {len(keep)} images could be used (first: "
                        f"{missing[0]}: {missing[1]}); {advice}")
    return BenchData(np.stack(pixels), np.array(kept_labels, dtype=np.int64), paths,
                     contract.levels, source, report, [str(item.path) for item in items],
                     detect)


def load_bench_data(spec: str | None, contract: PreprocessContract, *,
                    run_dir: Path | None, trained_detect: bool, limit: int,
                    seed: int = 0, detect: bool | None = None) -> BenchData:
    """``--data`` (folder, CSV, ``synthetic``, ``smiles``) or, by default, the run's test split;
    faces are found as the model was trained unless ``detect`` says otherwise."""
    if spec is None:
        split = RunDir(run_dir).find_split() if run_dir is not None else None
        if split is None:
            raise DataError("no labelled data: pass --data DIR|synthetic|smiles (the default, "
                            "the run's test split, needs the run folder with split.json)")
        return load_items(split_items(split, "test", contract.levels), contract,
                          detect=trained_detect if detect is None else detect,
                          source=f"{split} (test split)", limit=limit, seed=seed)
    from edge_smw.data.sources import resolve_data

    data = resolve_data(spec, levels=contract.levels, progress=False)
    if tuple(data.dataset.levels) != contract.levels:
        raise DataError(f"--data {spec} has levels {list(data.dataset.levels)}, the model "
                        f"{list(contract.levels)}")
    return load_items(data.dataset.items, contract, detect=data.detect_for(trained_detect, detect),
                      source=spec, limit=limit, seed=seed,
                      advice=f"check that --data {spec} holds readable images (a CSV's paths "
                             "are read relative to the CSV's folder)")
