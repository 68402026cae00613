"""``edge-smw train`` as a library call: data -> split -> features -> tuned head -> run folder.

The run folder holds ``checkpoint.pt``, ``split.json`` (the manifest every later step
reuses), ``report.md``/``report.json`` (the poster's table, the tuning grid, both losses
side by side), the confusion matrix PNG, and ``skipped.json`` (every file not used, and why).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_smw.artifacts.folders import RunDir
from edge_smw.atomic import write_json
from edge_smw.data.crops import SkipReport
from edge_smw.data.datasets import LabelledImage, SplitManifest, make_split
from edge_smw.data.sources import DataSource
from edge_smw.detect import resolve_spec
from edge_smw.engines import ENGINE_INPROCESS, ENGINE_RAY, ENGINES, RayOptions
from edge_smw.evaluate import compute_metrics, poster_table, write_report
from edge_smw.train.backbones import DEFAULT_BACKBONE, get_backbone
from edge_smw.train.checkpoint import Checkpoint, current_versions
from edge_smw.train.features import FeaturePass, FeatureSet, compute_features
from edge_smw.train.heads import LOSSES, HeadConfig, grid_search, predict_proba, train_head

log = logging.getLogger("edge_smw.train")

DEFAULT_LRS = (0.001, 0.003, 0.01, 0.03)
DEFAULT_MOMENTA = (0.0, 0.5, 0.9)


@dataclass
class TrainOptions:
    backbone: str = DEFAULT_BACKBONE
    backbone_weights: str | None = None
    loss: str = "ce"
    compare_losses: bool = True
    seed: int = 0
    detect: bool = True
    detector: str = "auto"  # face detector for the crops; recorded in the contract
    class_weight: str = "none"
    flip: bool = False
    epochs: int = 40
    lrs: tuple[float, ...] = DEFAULT_LRS
    momenta: tuple[float, ...] = DEFAULT_MOMENTA
    crop_margin: float = 0.2
    max_per_level: int | None = None  # subsample (quick runs, tests)
    progress: bool = True
    engine: str = "inprocess"  # "ray": the feature pass runs on Ray Data (edge_smw.engines)
    ray: RayOptions | None = None


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    test_metrics: dict[str, Any]
    losses: dict[str, dict[str, Any]] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_run(source: DataSource, out: str | Path, options: TrainOptions) -> TrainResult:
    """Train and write a run folder; same inputs and seed -> identical head weights."""
    started = time.perf_counter()
    seed_everything(options.seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = RunDir(out)
    if options.loss not in LOSSES:
        from edge_smw.errors import InputError

        raise InputError(f"--loss {options.loss!r}: choose one of {list(LOSSES)}")
    dataset = source.dataset
    if options.max_per_level:
        dataset.items = _subsample(dataset.items, options.max_per_level, options.seed)
    manifest = make_split(dataset, seed=options.seed)
    manifest.save(run.split)
    detect = options.detect and not source.precropped
    spec = get_backbone(options.backbone)
    contract = spec.contract(dataset.levels, crop_margin=options.crop_margin,
                             detector=resolve_spec(options.detector))
    feature_pass = FeaturePass(spec, weights=options.backbone_weights)
    if options.engine != ENGINE_INPROCESS:
        _features_on_engine(options, manifest, contract, feature_pass, detect)
    skipped = SkipReport()
    feats: dict[str, FeatureSet] = {}
    for split in ("train", "val", "test"):
        feats[split] = compute_features(
            manifest.items(split), contract, feature_pass, detect=detect,
            flip=options.flip and split == "train", progress=options.progress,
            desc=f"features {split}",
        )
        skipped.unreadable += feats[split].skipped.unreadable
        skipped.no_face += feats[split].skipped.no_face
    write_json(run.skipped_json, skipped.to_dict())
    if skipped.count:
        log.warning("skipped %s (listed in %s)", skipped.summary(), run.skipped_json)

    k = len(dataset.levels)
    train_xy = (feats["train"].features, feats["train"].levels)
    val_xy = (feats["val"].features, feats["val"].levels)
    losses = [options.loss] + ([x for x in LOSSES if x != options.loss]
                               if options.compare_losses else [])
    by_loss: dict[str, dict[str, Any]] = {}
    heads = {}
    for loss in losses:
        base = HeadConfig(lr=0.0, momentum=0.0, loss=loss, epochs=options.epochs,
                          class_weight=options.class_weight)
        best, grid = grid_search(train_xy, val_xy, k, lrs=options.lrs, momenta=options.momenta,
                                 base=base, seed=options.seed, progress=options.progress)
        head = train_head(*train_xy, k, best, seed=options.seed)
        heads[loss] = head
        probs = predict_proba(head, feats["test"].features)
        by_loss[loss] = {
            "lr": best.lr, "momentum": best.momentum,
            "grid": [g.__dict__ for g in grid],
            "test": compute_metrics(feats["test"].levels, probs, dataset.levels),
            "val": compute_metrics(val_xy[1], predict_proba(head, val_xy[0]), dataset.levels),
        }
    chosen = by_loss[options.loss]
    head = heads[options.loss]
    config = {
        "loss": options.loss, "lr": chosen["lr"], "momentum": chosen["momentum"],
        "epochs": options.epochs, "batch_size": 64, "class_weight": options.class_weight,
        "flip": options.flip, "seed": options.seed, "data": source.name,
        "max_per_level": options.max_per_level,
    }
    checkpoint = Checkpoint(
        head_weight=head.weight.detach().numpy(), head_bias=head.bias.detach().numpy(),
        backbone=spec.name, backbone_fingerprint=feature_pass.fingerprint,
        backbone_weights=options.backbone_weights, contract=contract, detect=detect,
        split_sha256=manifest.sha256,
        metrics={"test": _brief(chosen["test"]), "val": _brief(chosen["val"])},
        config=config, versions=current_versions(),
    )
    ckpt_path = checkpoint.save(run.checkpoint)
    _write_train_report(out, source, manifest, options, by_loss, skipped, contract,
                        time.perf_counter() - started)
    return TrainResult(out, ckpt_path, chosen["test"], by_loss)


def _features_on_engine(options: TrainOptions, manifest: SplitManifest, contract: Any,
                        feature_pass: FeaturePass, detect: bool) -> None:
    """Fill the feature cache on another engine; the in-process pass then only reads it."""
    if options.engine != ENGINE_RAY:
        from edge_smw.errors import InputError

        raise InputError(f"--engine {options.engine!r}: choose one of {list(ENGINES)}")
    from edge_smw.engines.ray import warm_feature_cache

    splits = {split: manifest.items(split) for split in ("train", "val", "test")}
    items = [item for split in splits.values() for item in split]
    flips = [options.flip and split == "train" for split, group in splits.items()
             for _ in group]
    done = warm_feature_cache(items, contract, feature_pass, detect=detect, flip_items=flips,
                              options=options.ray or RayOptions(progress=options.progress))
    log.info("ray: features of %d of %d missing crops in %.1f s", done.computed, done.photos,
             done.seconds)


def _brief(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("accuracy", "mae", "spearman", "n")}


def _subsample(items: list[LabelledImage], per_level: int, seed: int) -> list[LabelledImage]:
    out: list[LabelledImage] = []
    for level in sorted({i.level for i in items}):
        group = sorted((i for i in items if i.level == level), key=lambda i: str(i.path))
        random.Random(f"sub-{seed}-{level}").shuffle(group)
        out += group[:per_level]
    return out


def _write_train_report(out: Path, source: DataSource, manifest: SplitManifest,
                        options: TrainOptions, by_loss: dict[str, dict[str, Any]],
                        skipped: SkipReport, contract: Any, seconds: float) -> None:
    chosen = by_loss[options.loss]
    counts = {s: len(manifest.items(s)) for s in ("train", "val", "test")}
    side = ["| Loss | lr | momentum | test accuracy | test MAE | Spearman |",
            "|---|---|---|---|---|---|"]
    for loss, r in by_loss.items():
        t = r["test"]
        side.append(f"| {loss}{' (saved)' if loss == options.loss else ''} | {r['lr']} | "
                    f"{r['momentum']} | {100 * t['accuracy']:.1f}% | {t['mae']:.3f} | "
                    f"{t['spearman'] if t['spearman'] is None else round(t['spearman'], 3)} |")
    grid = ["| loss | lr | momentum | val accuracy | val MAE |", "|---|---|---|---|---|"]
    for loss, r in by_loss.items():
        for g in r["grid"]:
            grid.append(f"| {loss} | {g['lr']} | {g['momentum']} | "
                        f"{100 * g['val_accuracy']:.1f}% | {g['val_mae']:.3f} |")
    detecting = options.detect and not source.precropped
    detection = f"on ({contract.detector.describe()})" if detecting else "off"
    extra = "\n".join([
        f"Data: `{source.name}`, levels {list(contract.levels)}, split train/val/test "
        f"{counts['train']}/{counts['val']}/{counts['test']} (seed {options.seed}, manifest "
        f"sha256 {manifest.sha256[:12]}). Backbone `{options.backbone}` (frozen), "
        f"face detection {detection}. "
        f"Skipped: {skipped.summary()} (see skipped.json). Took {seconds:.0f} s.",
        "", "## Losses side by side (test split)", "", *side,
        "", "## Learning rate x momentum grid (validation split)", "", *grid,
    ])
    write_report(out, "report", chosen["test"],
                 f"Test split: {options.backbone} + linear head ({options.loss})", extra)
    summary = {
        "data": source.name, "levels": list(contract.levels), "split_counts": counts,
        "split_sha256": manifest.sha256, "backbone": options.backbone, "loss": options.loss,
        "losses": by_loss, "skipped": skipped.to_dict(), "seconds": seconds,
        "poster_table": poster_table(chosen["test"]),
    }
    write_json(RunDir(out).train_json, summary)
