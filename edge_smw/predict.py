"""Score a labelled data set with any model: a run/checkpoint, or an exported model.

Checkpoints are scored through the same cached feature pass as training (fast, and what the
head was fit on); exported models (.onnx / .engine / export folder) through
``edge_smw.Runtime``, with no torch. Either way the crops follow the model's own contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from edge_smw.artifacts.folders import is_exported_model
from edge_smw.contract import PreprocessContract
from edge_smw.data.crops import SkipReport, iter_crop_batches
from edge_smw.data.datasets import LabelledImage
from edge_smw.evaluate import compute_metrics


@dataclass
class Predictions:
    paths: list[str]
    true_levels: np.ndarray
    probs: np.ndarray
    levels: tuple[str, ...]
    skipped: SkipReport

    def metrics(self) -> dict[str, Any]:
        return compute_metrics(self.true_levels, self.probs, self.levels)


def model_contract(model: str | Path) -> tuple[PreprocessContract, bool]:
    """The model's contract and whether it was trained on detected faces."""
    if is_exported_model(model):
        from edge_smw.artifacts.folders import resolve_model_path
        from edge_smw.metadata import ModelInfo

        info = ModelInfo.from_file(resolve_model_path(model))
        return info.contract, info.detect
    from edge_smw.train.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(model)
    return checkpoint.contract, checkpoint.detect


def predict_items(
    model: str | Path, items: Sequence[LabelledImage], *, detect: bool | None = None,
    backend: str = "auto", progress: bool = True, batch_size: int = 32,
    detector: str = "auto",
) -> Predictions:
    """Score ``items``; ``detect`` None finds faces only if the model was trained on them.
    ``detector``: ``auto`` crops as the model was trained (its contract), another name or
    .onnx file crops with that detector instead (to measure what a change would cost).

    Refuses (one line naming the flag) when most images yield no face: an accuracy over the
    few that did would read as the whole set's.
    """
    if detect is None:
        detect = model_contract(model)[1]
    if is_exported_model(model):
        preds = _predict_runtime(model, items, detect=detect, backend=backend,
                                 progress=progress, batch_size=batch_size, detector=detector)
    else:
        preds = _predict_checkpoint(model, items, detect=detect, progress=progress,
                                    detector=detector)
    check_faces_found(len(items), len(preds.skipped.no_face))
    return preds


def check_faces_found(total: int, no_face: int) -> None:
    """More than half the images without a face means the wrong detection setting."""
    if total and 2 * no_face > total:
        from edge_smw.errors import DataError

        raise DataError(f"{no_face} of {total} images yield no face with face detection on: "
                        "they look like face crops already; score them whole with --no-detect")


def _predict_checkpoint(model: str | Path, items: Sequence[LabelledImage], *, detect: bool,
                        progress: bool, detector: str) -> Predictions:
    from edge_smw.detect import with_detector
    from edge_smw.train.checkpoint import load_checkpoint
    from edge_smw.train.features import score_items

    checkpoint = load_checkpoint(model)
    contract = with_detector(checkpoint.contract, detector)
    feats, probs = score_items(checkpoint, items, detect=detect, progress=progress,
                               contract=contract)
    return Predictions(feats.paths, feats.levels, probs, checkpoint.levels, feats.skipped)


def _predict_runtime(model: str | Path, items: Sequence[LabelledImage], *, detect: bool,
                     backend: str, progress: bool, batch_size: int,
                     detector: str) -> Predictions:
    from edge_smw.detect import with_detector
    from edge_smw.runtime import Runtime

    report = SkipReport()
    paths: list[str] = []
    true: list[int] = []
    probs: list[np.ndarray] = []
    # Crops come from the loader (the Runtime only infers): it needs no detector of its own.
    with Runtime(model, backend=backend, detect_faces=False, warmup=False) as rt:
        contract = with_detector(rt.contract, detector)
        bar = tqdm(total=len(items), desc="scoring", unit="crop", disable=not progress)
        for seen, kept, pixels in iter_crop_batches(items, contract, detect=detect,
                                                    report=report, batch_size=batch_size):
            bar.update(seen)
            if pixels is None:
                continue
            outputs = rt.infer(contract.normalize(pixels))
            probs.append(outputs["probabilities"].astype(np.float64))
            paths += [str(i.path) for i in kept]
            true += [i.level for i in kept]
        bar.close()
        levels = rt.levels
    if not probs:
        from edge_smw.errors import DataError

        if detect:
            check_faces_found(len(items), len(report.no_face))
        raise DataError(f"no usable images among {len(items)} ({report.summary()})")
    return Predictions(paths, np.asarray(true), np.concatenate(probs), levels, report)
