"""``edge-smw demo``: the whole pipeline on the built-in synthetic faces, offline.

train (both losses) -> export (fp32 + int8) -> evaluate the exported models through the
torch-free Runtime -> bench (quick) -> heat maps + a fooling image -> one REPORT.md.
Each step is a library call; the report links every artefact.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from edge_smw.artifacts.folders import RunDir
from edge_smw.artifacts.formats import FP32
from edge_smw.atomic import write_json, write_text

log = logging.getLogger("edge_smw.demo")


def run_demo(out: str | Path, *, count: int = 3000, seed: int = 0, quick: bool = False,
             progress: bool = True) -> dict[str, Any]:
    from edge_smw.data.datasets import SplitManifest
    from edge_smw.data.sources import resolve_data
    from edge_smw.evaluate import poster_table, write_report
    from edge_smw.predict import predict_items
    from edge_smw.train.pipeline import TrainOptions, train_run

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps: dict[str, Any] = {}
    t0 = time.perf_counter()
    source = resolve_data("synthetic", seed=seed, synthetic_count=count, progress=progress)
    run_dir = out / "run"
    opts = TrainOptions(seed=seed, progress=progress)
    if quick:
        opts.lrs, opts.momenta, opts.epochs = (0.003, 0.01), (0.9,), 20
    result = train_run(source, run_dir, opts)
    steps["train"] = {
        "run_dir": str(run_dir), "seconds": round(time.perf_counter() - t0, 1),
        "losses": {k: {"accuracy": v["test"]["accuracy"], "mae": v["test"]["mae"],
                       "lr": v["lr"], "momentum": v["momentum"]}
                   for k, v in result.losses.items()},
    }
    export_dir = out / "export"
    steps["export"] = _export(run_dir, export_dir)
    test_items = SplitManifest.load(RunDir(run_dir).split).items("test")
    evaluations = {}
    for model in steps["export"]["models"]:
        preds = predict_items(export_dir / model, test_items, detect=False, progress=progress)
        metrics = preds.metrics()
        write_report(out / "evaluation", Path(model).stem.replace(".", "_"), metrics,
                     f"{model} on the synthetic test split (Runtime, onnxruntime-cpu)")
        evaluations[model] = metrics
    steps["evaluate"] = {m: {"accuracy": v["accuracy"], "mae": v["mae"]}
                         for m, v in evaluations.items()}
    steps["explain"] = _explain(out, run_dir, export_dir, test_items, progress=progress)
    steps["fool"] = _fool(out, run_dir, test_items, levels=source.dataset.levels)
    steps["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(out / "demo.json", steps)
    lines = [
        "# edge-smw demo (synthetic faces)", "",
        "These faces are synthetic drawings (see README, 'Built-in demo data'): the figures "
        "show the pipeline works end to end, not real-world accuracy.", "",
        "## Training (test split, torch head on the frozen backbone)", "",
        poster_table(result.test_metrics), "",
        "| loss | test accuracy | test MAE | lr | momentum |", "|---|---|---|---|---|",
        *[f"| {k} | {100 * v['accuracy']:.1f}% | {v['mae']:.3f} | {v['lr']} | {v['momentum']} |"
          for k, v in steps["train"]["losses"].items()],
        "", "## Exported models through the torch-free Runtime (same test split)", "",
        "| model | accuracy | MAE |", "|---|---|---|",
        *[f"| {m} | {100 * v['accuracy']:.1f}% | {v['mae']:.3f} |"
          for m, v in steps["evaluate"].items()],
        "", "## Heat maps: do they look at the eyes and mouth?", "",
        "On held-out synthetic faces, where the rule that made the level is known, each "
        "method's heat share inside the eye and mouth boxes, over the boxes' area share "
        "(1.0 = no preference), and how often the map's peak lands in them:", "",
        steps["explain"]["check_markdown"].replace("# ", "### ", 1), "",
        "Examples: `heatmaps/` (gradcam from the checkpoint) and `heatmaps_device/` (cam from "
        "the exported ONNX through the torch-free Runtime).", "",
        "## A fooling image (the poster's figure)", "",
        steps["fool"]["summary"], "",
        f"Total: {steps['seconds']:.0f} s. Run folder: `run/`, exports: `export/`.", "",
    ]
    write_text(out / "REPORT.md", "\n".join(lines))
    return steps


def _explain(out: Path, run_dir: Path, export_dir: Path, test_items: list,
             *, progress: bool) -> dict[str, Any]:
    from edge_smw.explain.api import explain_images
    from edge_smw.explain.check import synthetic_check

    examples = [str(item.path) for item in _one_per_level(test_items)]
    explain_images(run_dir, examples, out=out / "heatmaps", method="gradcam", detect=False)
    explain_images(export_dir / FP32.file_name, examples, out=out / "heatmaps_device",
                   method="cam", detect=False)
    check = synthetic_check(out / "heatmaps_check", run_dir=run_dir, sample=40,
                            progress=progress)
    return {"check": check.to_dict(), "check_markdown": check.to_markdown(),
            "examples": examples}


def _fool(out: Path, run_dir: Path, test_items: list, *, levels: tuple[str, ...]
          ) -> dict[str, Any]:
    from edge_smw.attacks.fool import fool_images

    lowest = next(item for item in test_items if item.level == 0)
    report = fool_images(run_dir, [lowest.path], target=levels[-1], out=out / "fooling",
                         eps=4.0, steps=50, detect=False)
    data = report.to_dict()
    rec = data["images"][0] if data.get("images") else {}
    summary = (f"A level-{levels[0]} face pushed toward level {levels[-1]} with changes of at "
               f"most 4/255 per pixel: success {rec.get('success')}, level "
               f"{rec.get('level_before')} -> {rec.get('level_after')} "
               f"(`fooling/`: original | fooling image | difference x50).")
    return {"report": data, "summary": summary}


def _one_per_level(items: list) -> list:
    seen: dict[int, Any] = {}
    for item in items:
        seen.setdefault(item.level, item)
    return [seen[k] for k in sorted(seen)]


def _export(run_dir: Path, export_dir: Path) -> dict[str, Any]:
    from edge_smw.export.onnx import export_fp32
    from edge_smw.train.checkpoint import load_checkpoint

    export_fp32(load_checkpoint(run_dir), export_dir / FP32.file_name, feature_map=True)
    return {"dir": str(export_dir), "models": [FP32.file_name]}
