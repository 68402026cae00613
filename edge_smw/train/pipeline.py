"""``edge-smw train`` as a library call: data -> split -> features -> tuned head -> run folder.

The run folder holds ``checkpoint.pt``, ``split.json`` (the manifest every later step
reuses), ``report.md``/``report.json`` (the poster's table, the tuning grid, both losses
side by side), the confusion matrix PNG, and ``skipped.json`` (every file not used, and why).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_smw.artifacts.folders import RunDir
from edge_smw.atomic import check_writable_folder, write_json
from edge_smw.data.crops import SkipReport
from edge_smw.data.datasets import LabelledImage, SplitManifest, make_split
from edge_smw.data.sources import DataSource
from edge_smw.detect import resolve_spec
from edge_smw.engines import ENGINE_INPROCESS, ENGINE_RAY, ENGINES, RayOptions
from edge_smw.errors import DataError, InputError
from edge_smw.evaluate import compute_metrics, poster_table, write_report
from edge_smw.train.backbones import DEFAULT_BACKBONE, build_feature_maps, get_backbone
from edge_smw.train.checkpoint import Checkpoint, current_versions
from edge_smw.train.features import FeaturePass, FeatureSet, compute_features
from edge_smw.train.finetune import (
    CachedHeadInputs,
    FinetuneResult,
    finetune_units,
    head_features,
    head_logits,
)
from edge_smw.train.heads import HeadConfig, HeadFit, grid_search, predict_proba
from edge_smw.train.settings import (
    AUTO_LOSS,
    DEFAULT_HEAD,
    DEFAULT_PATIENCE,
    LOSS_CHOICES,
    LOSSES,
    FinetuneConfig,
    HeadKind,
    check_seed,
    get_head_kind,
)

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
    epochs: int = 40  # a cap: early stopping on the validation split decides
    patience: int = DEFAULT_PATIENCE
    lrs: tuple[float, ...] = DEFAULT_LRS
    momenta: tuple[float, ...] = DEFAULT_MOMENTA
    crop_margin: float = 0.2
    max_per_level: int | None = None  # subsample (quick runs, tests)
    progress: bool = True
    head: str = DEFAULT_HEAD
    finetune_last: int = 0  # backbone units trained with the head (0: frozen backbone)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    engine: str = "inprocess"  # "ray": the feature pass runs on Ray Data (edge_smw.engines)
    ray: RayOptions | None = None


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    test_metrics: dict[str, Any]
    losses: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, Any] = field(default_factory=dict)
    loss: str = "ce"  # the saved head's loss (what --loss auto chose)


class PhaseClock:
    """Wall time and this process's CPU time (all its threads) per named phase, summed when
    a phase runs more than once. On a shared machine the wall time stretches with the load;
    the CPU time says what the phase itself cost."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        tick, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - tick
            self.cpu_seconds[name] = (self.cpu_seconds.get(name, 0.0)
                                      + time.process_time() - cpu)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def validate_options(options: TrainOptions) -> HeadKind:
    if options.loss not in LOSS_CHOICES:
        raise InputError(f"--loss {options.loss!r}: choose one of {list(LOSS_CHOICES)}")
    if options.loss == AUTO_LOSS and not options.compare_losses:
        raise InputError("--loss auto chooses between both losses, so it cannot go with "
                         "--no-compare; name one loss (--loss ce or emd) or drop --no-compare")
    if options.epochs < 1:
        raise InputError(f"--epochs must be >= 1, got {options.epochs}")
    if options.patience < 1:
        raise InputError(f"--patience must be >= 1, got {options.patience}")
    check_seed(options.seed)
    if options.max_per_level is not None and options.max_per_level < 1:
        raise InputError(f"--max-per-level must be >= 1 (leave it out to use every image), "
                         f"got {options.max_per_level}")
    weights = options.backbone_weights
    if weights and Path(weights).is_file() and Path(weights).stat().st_size == 0:
        # torch's own error for it is an empty pair of brackets
        raise InputError(f"--backbone-weights {weights} is empty (0 bytes), likely an "
                         "interrupted download or copy; download or copy the weights again")
    if options.finetune_last < 0:
        raise InputError(f"--finetune-last must be >= 0, got {options.finetune_last}")
    if not 0 < options.finetune.lr < float("inf"):  # NaN fails this too
        raise InputError(f"--finetune-lr must be a number > 0, got {options.finetune.lr}")
    if not 0 <= options.finetune.average_epochs < float("inf"):
        raise InputError(f"--finetune-average must be a number >= 0 (0: no averaging), "
                         f"got {options.finetune.average_epochs}")
    if options.finetune_last and options.engine != ENGINE_INPROCESS:
        raise InputError(f"--finetune-last caches activation maps, which --engine "
                         f"{options.engine} does not compute: use --engine {ENGINE_INPROCESS}")
    return get_head_kind(options.head)


def train_run(source: DataSource, out: str | Path, options: TrainOptions) -> TrainResult:
    """Train and write a run folder; same inputs and seed -> identical head weights."""
    started = time.perf_counter()
    clock = PhaseClock()
    kind = validate_options(options)
    seed_everything(options.seed)
    out = check_writable_folder(out, "choose a writable --out folder")
    run = RunDir(out)  # written only once the run has succeeded: a failed one keeps the old
    with clock("data"):
        dataset = source.dataset
        if options.max_per_level:
            dataset.items = _subsample(dataset.items, options.max_per_level, options.seed)
        manifest = make_split(dataset, seed=options.seed)
        _check_split(manifest, source.name)
    detect = options.detect and not source.precropped
    spec = get_backbone(options.backbone)
    contract = spec.contract(dataset.levels, crop_margin=options.crop_margin,
                             detector=resolve_spec(options.detector))
    with clock("backbone"):
        maps = build_feature_maps(spec, options.backbone_weights)
        start = _finetune_start(maps, options.finetune_last)
        feature_pass = FeaturePass(spec, weights=options.backbone_weights, head=kind,
                                   start=start, module=maps)
    skipped = SkipReport()
    feats: dict[str, FeatureSet] = {}
    with clock("feature_pass"):
        if options.engine != ENGINE_INPROCESS:
            _features_on_engine(options, manifest, contract, feature_pass, detect)
        for split in ("train", "val", "test"):
            feats[split] = compute_features(
                manifest.items(split), contract, feature_pass, detect=detect,
                flip=options.flip and split == "train", progress=options.progress,
                desc=f"features {split}",
            )
            skipped.unreadable += feats[split].skipped.unreadable
            skipped.no_face += feats[split].skipped.no_face
    if skipped.count:
        log.warning("skipped %s (listed in %s)", skipped.summary(), run.skipped_json)

    k = len(dataset.levels)
    frozen = (CachedHeadInputs(maps, kind, start, feature_pass.entry_shape).eval()
              if start else None)
    with clock("head_inputs"):  # fine-tuning: the frozen units' features, from the cache
        xs = {s: head_features(frozen, f.features) if start else f.features
              for s, f in feats.items()}
    train_xy = (xs["train"], feats["train"].levels)
    val_xy = (xs["val"], feats["val"].levels)
    if options.loss == AUTO_LOSS:
        losses = list(LOSSES)
    else:
        losses = [options.loss] + ([x for x in LOSSES if x != options.loss]
                                   if options.compare_losses else [])
    by_loss: dict[str, dict[str, Any]] = {}
    heads: dict[str, HeadFit] = {}
    for loss in losses:
        base = HeadConfig(lr=0.0, momentum=0.0, loss=loss, epochs=options.epochs,
                          class_weight=options.class_weight, patience=options.patience)
        with clock(f"tuning_{loss}"):
            fit, grid = grid_search(train_xy, val_xy, k, lrs=options.lrs,
                                    momenta=options.momenta, base=base, seed=options.seed)
        heads[loss] = fit
        head = fit.linear()
        by_loss[loss] = {
            "lr": fit.lr, "momentum": fit.momentum, "best_epoch": fit.best_epoch,
            "epochs_run": fit.epochs_run, "grid": [g.__dict__ for g in grid],
            "finetune": None,
            "test": compute_metrics(feats["test"].levels, predict_proba(head, xs["test"]),
                                    dataset.levels),
            "val": compute_metrics(val_xy[1], predict_proba(head, val_xy[0]), dataset.levels),
        }
    if options.loss == AUTO_LOSS:
        options = dataclasses.replace(options, loss=pick_loss(by_loss))
        log.info("--loss auto: %s validates better; it is the saved head", options.loss)
    chosen = by_loss[options.loss]
    head = heads[options.loss].linear()
    tuned_state: dict[str, np.ndarray] = {}
    with clock("final_fit"):  # the grid's own head is kept; fine-tuning trains from it
        if start:
            tuned = _final_finetune(frozen, heads[options.loss], feats, options)
            head, tuned_state = tuned.head, tuned.state
            chosen["finetune"] = {**tuned.describe(), "units": options.finetune_last,
                                  "first_unit": maps.unit_names[start],
                                  "config": dataclasses.asdict(options.finetune)}
            for split in ("test", "val"):
                logits = head_logits(tuned.inputs, head, feats[split].features)
                chosen[split] = compute_metrics(feats[split].levels,
                                                logits.softmax(1).numpy(), dataset.levels)
    with clock("report"):
        config = {
            "loss": options.loss, "lr": chosen["lr"], "momentum": chosen["momentum"],
            "epochs": heads[options.loss].best_epoch, "epoch_cap": options.epochs,
            "patience": options.patience, "batch_size": 64,
            "class_weight": options.class_weight, "flip": options.flip, "seed": options.seed,
            "data": source.name, "max_per_level": options.max_per_level, "head": kind.name,
            "finetune_last": options.finetune_last,
        }
        checkpoint = Checkpoint(
            head_weight=head.weight.detach().numpy(), head_bias=head.bias.detach().numpy(),
            backbone=spec.name, backbone_fingerprint=feature_pass.fingerprint,
            backbone_weights=options.backbone_weights, contract=contract, detect=detect,
            split_sha256=manifest.sha256, head_kind=kind.name,
            finetune_last=options.finetune_last, tuned_state=tuned_state,
            metrics={"test": _brief(chosen["test"]), "val": _brief(chosen["val"])},
            config=config, versions=current_versions(),
        )
        out.mkdir(parents=True, exist_ok=True)
        manifest.save(run.split)
        write_json(run.skipped_json, skipped.to_dict())
        ckpt_path = checkpoint.save(run.checkpoint)
        summary = _write_train_report(out, source, manifest, options, by_loss, skipped,
                                      contract, _timings(clock, feats, started))
    seconds = _timings(clock, feats, started)  # now with the report's own time
    write_json(run.train_json, {**summary, "seconds": seconds})
    return TrainResult(out, ckpt_path, chosen["test"], by_loss, seconds, loss=options.loss)


def _check_split(manifest: SplitManifest, data: str) -> None:
    """Every split needs images: name the levels too small to give each one (at least 3)."""
    empty = [split for split in ("train", "val", "test") if not manifest.items(split)]
    if empty:
        counts = Counter(manifest.levels[e["level"]] for e in manifest.entries)
        small = ", ".join(f"{level} {counts.get(level, 0)}" for level in manifest.levels
                          if counts.get(level, 0) < 3)
        raise DataError(f"{data}: too few images to split into train, val and test (no "
                        f"{' or '.join(empty)} images; images per level: {small}); give every "
                        f"level at least 3 images")


def pick_loss(by_loss: dict[str, dict[str, Any]]) -> str:
    """The loss whose tuned head validates better: accuracy, then MAE; ties keep the first
    of ``LOSSES`` (ce, the poster's). The validation split only: test stays unseen."""
    return min(by_loss, key=lambda loss: (-by_loss[loss]["val"]["accuracy"],
                                          by_loss[loss]["val"]["mae"], LOSSES.index(loss)))


def _finetune_start(maps: torch.nn.Module, last: int) -> int:
    """The first fine-tuned unit's index (0: none), checked against the backbone."""
    if not last:
        return 0
    names = maps.unit_names
    if last >= len(names):
        raise InputError(f"--finetune-last {last}: the backbone has {len(names)} units "
                         f"({names[0]} ... {names[-1]}); fine-tune fewer")
    return len(names) - last


def _final_finetune(inputs: CachedHeadInputs, head: HeadFit,
                    feats: dict[str, FeatureSet], options: TrainOptions) -> FinetuneResult:
    config = dataclasses.replace(options.finetune, loss=options.loss, epochs=options.epochs,
                                 class_weight=options.class_weight,
                                 patience=options.finetune.patience)
    return finetune_units(inputs, head, (feats["train"].features, feats["train"].levels),
                          (feats["val"].features, feats["val"].levels), config,
                          seed=options.seed, progress=options.progress)


def _timings(clock: PhaseClock, feats: dict[str, FeatureSet], started: float
             ) -> dict[str, Any]:
    """train.json's ``seconds``: wall time per phase, and what the feature pass did."""
    passes = [f.timings for f in feats.values()]
    computed = sum(t.get("computed", 0) for t in passes)
    network = sum(t.get("network", 0.0) for t in passes)
    out: dict[str, Any] = {name: round(value, 3) for name, value in clock.seconds.items()}
    out["feature_pass_detail"] = {
        "crops_computed": computed,
        "crops_cached": sum(t.get("cached", 0) for t in passes),
        "decode": round(sum(t.get("decode", 0.0) for t in passes), 3),
        "network": round(network, 3),
        "cache_lookup": round(sum(t.get("lookup", 0.0) for t in passes), 3),
        "crops_per_s": round(computed / clock.seconds["feature_pass"], 1) if computed else None,
        "note": "decode runs in a background thread, overlapped with the network",
    }
    tuning = sum(v for k, v in clock.seconds.items() if k.startswith("tuning_"))
    out["tuning_vs_feature_pass"] = (round(tuning / clock.seconds["feature_pass"], 4)
                                     if clock.seconds.get("feature_pass") else None)
    out["total"] = round(time.perf_counter() - started, 3)
    out["cpu"] = {name: round(value, 3) for name, value in clock.cpu_seconds.items()}
    out["cpu"]["total"] = round(time.process_time(), 3)
    return out


def _features_on_engine(options: TrainOptions, manifest: SplitManifest, contract: Any,
                        feature_pass: FeaturePass, detect: bool) -> None:
    """Fill the feature cache on another engine; the in-process pass then only reads it."""
    if options.engine != ENGINE_RAY:
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
                        skipped: SkipReport, contract: Any, seconds: dict[str, Any]
                        ) -> dict[str, Any]:
    chosen = by_loss[options.loss]
    counts = {s: len(manifest.items(s)) for s in ("train", "val", "test")}
    side = ["| Loss | lr | momentum | epoch | fine-tuned | test accuracy | test MAE | Spearman |",
            "|---|---|---|---|---|---|---|---|"]
    for loss, r in by_loss.items():
        t = r["test"]
        ft = r["finetune"]
        tuned = f"last {ft['units']} (epoch {ft['best_epoch']})" if ft else "no"
        side.append(f"| {loss}{' (saved)' if loss == options.loss else ''} | {r['lr']} | "
                    f"{r['momentum']} | {r['best_epoch']} | {tuned} | "
                    f"{100 * t['accuracy']:.1f}% | {t['mae']:.3f} | "
                    f"{t['spearman'] if t['spearman'] is None else round(t['spearman'], 3)} |")
    grid = ["| loss | lr | momentum | best epoch | val accuracy | val MAE |",
            "|---|---|---|---|---|---|"]
    for loss, r in by_loss.items():
        for g in r["grid"]:
            grid.append(f"| {loss} | {g['lr']} | {g['momentum']} | {g['best_epoch']} | "
                        f"{100 * g['val_accuracy']:.1f}% | {g['val_mae']:.3f} |")
    phases = ["| phase | wall seconds | CPU seconds (this process) |", "|---|---|---|"]
    cpu = seconds.get("cpu", {})
    phases += [f"| {name} | {value:.1f} | {cpu.get(name, float('nan')):.1f} |"
               for name, value in seconds.items()
               if isinstance(value, float | int) and name != "tuning_vs_feature_pass"]
    tuned = (f", last {options.finetune_last} units fine-tuned" if options.finetune_last
             else " (frozen)")
    detecting = options.detect and not source.precropped
    detection = f"on ({contract.detector.describe()})" if detecting else "off"
    extra = "\n".join([
        f"Data: `{source.name}`, levels {list(contract.levels)}, split train/val/test "
        f"{counts['train']}/{counts['val']}/{counts['test']} (seed {options.seed}, manifest "
        f"sha256 {manifest.sha256[:12]}). Backbone `{options.backbone}`{tuned}, head "
        f"`{options.head}`, face detection {detection}. "
        f"Skipped: {skipped.summary()} (see skipped.json). Took {seconds['total']:.0f} s.",
        "", "## Losses side by side (test split)", "", *side,
        "", "## Learning rate x momentum grid (validation split, early stopping: best epoch "
        f"of at most {options.epochs})", "", *grid,
        "", "## Where the time went (wall seconds)", "", *phases,
    ])
    write_report(out, "report", chosen["test"],
                 f"Test split: {options.backbone} + {options.head} head ({options.loss})", extra)
    summary = {
        "data": source.name, "levels": list(contract.levels), "split_counts": counts,
        "split_sha256": manifest.sha256, "backbone": options.backbone, "loss": options.loss,
        "head": options.head, "finetune_last": options.finetune_last,
        "losses": by_loss, "skipped": skipped.to_dict(), "seconds": seconds,
        "poster_table": poster_table(chosen["test"]),
    }
    write_json(RunDir(out).train_json, summary)
    return summary
