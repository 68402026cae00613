"""Do heat maps mean something? Measured on the synthetic faces, where the rule is known.

The synthetic demo set's level is decided by the eyes, gaze and mouth (plus strong blur,
which touches every pixel), and ``attributes.csv`` records the eye and mouth boxes of
every face. For held-out faces of a model trained on that set, each method's heat map is
scored against the union of those boxes:

- ``mass share``: heat inside the boxes / all heat; ``area share``: the boxes' pixels / all
  pixels (what a flat map would score); ``energy ratio`` = mass share / area share, so > 1
  means the method puts more heat on eyes and mouth than chance.
- ``pointing game``: how often the map's peak lies inside the boxes.

A centred Gaussian blob ("centre prior") is scored the same way: the faces are centred, so a
method has to beat that, not just 1, to show it finds the features rather than the middle.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_smw.artifacts.folders import RunDir
from edge_smw.atomic import write_json, write_text
from edge_smw.errors import DataError
from edge_smw.explain import METHODS
from edge_smw.explain.cam_numpy import RegionScore, region_mask, region_score
from edge_smw.images import read_image

CENTRE_PRIOR = "centre prior (baseline)"
EYES = ("left_eye", "right_eye")
MOUTH = ("mouth",)


@dataclass
class MethodScore:
    method: str
    n: int
    empty: int  # maps with no positive evidence (excluded from the means)
    mass_share: float
    area_share: float
    energy_ratio: float  # mean over images of the per-image ratio
    pointing: float  # hit rate of the peak
    eyes_mass_share: float
    mouth_mass_share: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class CheckReport:
    run_dir: Path
    test_accuracy: float | None
    scores: list[MethodScore]
    examples: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"run": str(self.run_dir), "test_accuracy": self.test_accuracy,
                "scores": [s.to_dict() for s in self.scores],
                "examples": [str(p) for p in self.examples]}

    def to_markdown(self) -> str:
        acc = "n/a" if self.test_accuracy is None else f"{100 * self.test_accuracy:.1f}%"
        lines = [
            "# Heat-map check on the synthetic faces", "",
            f"Model: `{self.run_dir}` (test accuracy {acc}). Regions: both eye boxes and the "
            "mouth box from attributes.csv. Energy ratio > 1: more heat on eyes and mouth "
            "than a flat map; compare with the centre prior, which knows only that faces "
            "are centred.", "",
            "| method | n | energy ratio | mass share | area share | pointing game | "
            "eyes mass | mouth mass | empty maps |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for s in self.scores:
            lines.append(f"| {s.method} | {s.n} | {s.energy_ratio:.2f} | {s.mass_share:.3f} | "
                         f"{s.area_share:.3f} | {100 * s.pointing:.0f}% | "
                         f"{s.eyes_mass_share:.3f} | {s.mouth_mass_share:.3f} | {s.empty} |")
        return "\n".join(lines) + "\n"


def aggregate(method: str, heats: Sequence[np.ndarray], masks: Sequence[np.ndarray],
              eye_masks: Sequence[np.ndarray], mouth_masks: Sequence[np.ndarray]) -> MethodScore:
    """Mean region scores over images; all-zero maps are counted, not averaged."""
    scores: list[RegionScore] = []
    eyes: list[float] = []
    mouth: list[float] = []
    empty = 0
    for heat, mask, eye, mth in zip(heats, masks, eye_masks, mouth_masks, strict=True):
        score = region_score(heat, mask)
        if not np.isfinite(score.mass_share):
            empty += 1
            continue
        scores.append(score)
        eyes.append(region_score(heat, eye).mass_share)
        mouth.append(region_score(heat, mth).mass_share)
    if not scores:
        nan = float("nan")
        return MethodScore(method, 0, empty, nan, nan, nan, nan, nan, nan)
    return MethodScore(
        method, len(scores), empty,
        float(np.mean([s.mass_share for s in scores])),
        float(np.mean([s.area_share for s in scores])),
        float(np.mean([s.energy_ratio for s in scores])),
        float(np.mean([s.hit for s in scores])),
        float(np.mean(eyes)), float(np.mean(mouth)),
    )


def centre_prior(size: int) -> np.ndarray:
    """A Gaussian blob in the middle (sigma = size / 6): the 'faces are centred' baseline."""
    grid = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    sigma = size / 6.0
    g = np.exp(-(grid**2) / (2 * sigma**2))
    return np.outer(g, g)


def train_synthetic_run(run_dir: str | Path, *, count: int = 700, size: int = 128,
                        seed: int = 0, max_per_level: int | None = 120,
                        progress: bool = True) -> Path:
    """A small run on the synthetic faces (features cached; a minute or two on 2 cores)."""
    from edge_smw.data.datasets import load_dataset
    from edge_smw.data.sources import DataSource
    from edge_smw.data.synthetic import default_synthetic_dir, generate_synthetic
    from edge_smw.train.pipeline import TrainOptions, train_run

    folder = generate_synthetic(default_synthetic_dir(count, size, seed), count=count,
                                size=size, seed=seed, progress=progress)
    options = TrainOptions(max_per_level=max_per_level, compare_losses=False, seed=seed,
                           progress=progress, lrs=(0.003, 0.01, 0.03), momenta=(0.5, 0.9))
    train_run(DataSource(load_dataset(folder), True, "synthetic"), run_dir, options)
    return Path(run_dir)


def synthetic_check(
    out: str | Path,
    *,
    run_dir: str | Path | None = None,
    methods: Sequence[str] = METHODS,
    sample: int = 40,
    examples: int = 3,
    count: int = 700,
    max_per_level: int | None = 120,
    seed: int = 0,
    progress: bool = True,
) -> CheckReport:
    """Score each method's heat maps against the eye and mouth boxes of held-out faces.

    ``run_dir`` None trains a small synthetic run into ``out/run`` first; otherwise it must
    be a run trained on the synthetic set (its split's test images carry region boxes).
    """
    from edge_smw.data.datasets import SplitManifest
    from edge_smw.data.synthetic import CSV_NAME, read_synthetic_index
    from edge_smw.explain.methods import build_method
    from edge_smw.explain.render import heatmap_figure
    from edge_smw.train.checkpoint import load_checkpoint

    out = Path(out)
    if run_dir is None:
        run_dir = train_synthetic_run(out / "run", count=count, seed=seed,
                                      max_per_level=max_per_level, progress=progress)
    run_dir = Path(run_dir)
    checkpoint = load_checkpoint(run_dir)
    items = SplitManifest.load(RunDir(run_dir).split).items("test")
    if not items:
        raise DataError(f"{run_dir}: the split has no test images to check heat maps on")
    data_dir = items[0].path.parent.parent
    if not (data_dir / CSV_NAME).is_file():
        raise DataError(f"{run_dir} was not trained on the synthetic demo set (no {CSV_NAME} "
                        f"in {data_dir}); the check needs the known eye and mouth boxes")
    regions = {s.path.resolve(): s.regions for s in read_synthetic_index(data_dir)}
    items = sorted(items, key=lambda i: str(i.path))
    random.Random(f"check-{seed}").shuffle(items)
    items = items[:sample]

    contract = checkpoint.contract
    size = contract.input_size
    images = [read_image(item.path) for item in items]
    pixels = np.stack([contract.to_model_pixels(img) for img in images])
    masks, eye_masks, mouth_masks = [], [], []
    for item, img in zip(items, images, strict=True):
        boxes = regions.get(item.path.resolve())
        if boxes is None:
            raise DataError(f"{item.path} is not listed in {data_dir / CSV_NAME}")
        scale = size / img.shape[1]
        masks.append(region_mask([boxes[r] for r in EYES + MOUTH], (size, size), scale))
        eye_masks.append(region_mask([boxes[r] for r in EYES], (size, size), scale))
        mouth_masks.append(region_mask([boxes[r] for r in MOUTH], (size, size), scale))

    model = checkpoint.build_model()
    scores, written = [], []
    names = [str(item.path) for item in items]
    for method in methods:
        heatmaps = build_method(method, model, contract).explain(pixels, names=names)
        scores.append(aggregate(method, [h.heat for h in heatmaps], masks, eye_masks,
                                mouth_masks))
        for h, item in list(zip(heatmaps, items, strict=True))[:examples]:
            written.append(heatmap_figure(
                h, out / "examples" / f"{item.path.parent.name}-{item.path.stem}.{method}.png"))
    prior = centre_prior(size)
    scores.append(aggregate(CENTRE_PRIOR, [prior] * len(items), masks, eye_masks, mouth_masks))
    accuracy = checkpoint.metrics.get("test", {}).get("accuracy")
    report = CheckReport(run_dir, accuracy, scores, written)
    write_json(out / "check.json", report.to_dict())
    write_text(out / "check.md", report.to_markdown())
    return report
