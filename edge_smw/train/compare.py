"""Training runs side by side: test-split figures per head and loss, training time, and the
exports' latency measured together in one process.

Torch-free: it reads each run's ``train.json`` and each export's ``export.json``, and times
the exported models with onnxruntime (``export.parity.latency``: batch 1, interleaved
round-robin, so a busy machine slows every model alike; ratios are what to quote).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edge_smw.artifacts.folders import ExportDir, RunDir
from edge_smw.artifacts.formats import FP32, INT8_CPU
from edge_smw.errors import InputError

TIMED_FORMATS = (FP32, INT8_CPU)
RUN_FOLDER = "a run folder made by `edge-smw train`"
EXPORT_FOLDER = "an export folder made by `edge-smw export`"
# Rounds of interleaved runs: a run's latency against the first is the median of the rounds'
# ratios, with their range (one round of the same pair can be off by a fifth on a shared CPU).
ROUNDS = 5


def _folder(path: Path, what: str) -> Path:
    """``path`` when it is a folder; else one line saying which folder was expected."""
    if not path.is_dir():
        state = "is not a folder" if path.exists() else "not found"
        raise InputError(f"{path} {state}: give {what}")
    return path


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path} not found: give {what}") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not readable JSON ({exc})") from None


def run_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """One row per loss trained in ``run_dir`` (the saved loss first)."""
    run_dir = _folder(Path(run_dir), RUN_FOLDER)
    summary = _read_json(RunDir(run_dir).train_json, RUN_FOLDER)
    seconds = summary.get("seconds") or {}
    rows = []
    for loss, result in summary["losses"].items():
        test, val = result["test"], result["val"]
        tuned = result.get("finetune")
        rows.append({
            "run": str(run_dir), "head": summary.get("head", "linear"),
            "finetune_last": summary.get("finetune_last", 0), "loss": loss,
            "saved": loss == summary["loss"], "lr": result["lr"],
            "momentum": result["momentum"], "epoch": result.get("best_epoch"),
            "finetune_epoch": tuned["best_epoch"] if tuned else None,
            "val_accuracy": val["accuracy"], "accuracy": test["accuracy"], "mae": test["mae"],
            "spearman": test["spearman"], "n": test["n"],
            "per_level": {name: {"accuracy": v["accuracy"], "mae": v["mae"]}
                          for name, v in test["per_level"].items()},
            "train_seconds": seconds.get("total") if isinstance(seconds, dict) else seconds,
            "feature_pass_seconds": seconds.get("feature_pass")
            if isinstance(seconds, dict) else None,
        })
    return rows


def export_facts(export_dir: str | Path, run_dir: str | Path | None = None) -> dict[str, Any]:
    """What an export folder says about its INT8 model (agreement, gate), and its files:
    each readable and of this export (``ExportDir.model_info``), and the export made from
    ``run_dir``'s checkpoint where one is given (figures of another run's would be
    reported as this run's)."""
    folder = ExportDir(_folder(Path(export_dir), EXPORT_FOLDER))
    summary = _read_json(folder.export_json, EXPORT_FOLDER)
    if run_dir is not None:
        _check_made_from(folder, Path(run_dir))
    int8 = (summary.get("models") or {}).get(INT8_CPU.key) or {}
    files = {fmt.key: folder.path / fmt.file_name for fmt in TIMED_FORMATS
             if (folder.path / fmt.file_name).is_file()}
    for path in files.values():
        folder.model_info(path)
    return {
        "export": str(folder.path),
        "int8_agreement": (int8.get("parity") or {}).get("top1_agreement"),
        "int8_gate_passed": (int8.get("gate") or {}).get("passed"),
        "files": {key: str(path) for key, path in files.items()},
    }


def _check_made_from(folder: ExportDir, run_dir: Path) -> None:
    """Refuse an export that ``export.json`` says was made from another checkpoint than the
    run's own (the bench's ``--checkpoint`` check: by the file's sha256)."""
    from edge_smw.cache import file_sha256

    expected = folder.source_checkpoint()
    checkpoint = RunDir(run_dir).checkpoint
    if expected is None or not checkpoint.is_file():
        return
    digest = file_sha256(checkpoint)
    if digest != expected:
        raise InputError(f"{folder.path} was exported from checkpoint {expected[:12]}, not from "
                         f"{checkpoint} ({digest[:12]}): give each run's own export, in the "
                         "order of the runs")


def compare(runs: list[str | Path], exports: list[str | Path] | None = None, *,
            latency_runs: int = 50, threads: int | None = None) -> dict[str, Any]:
    """Rows for every run and loss; with ``exports`` (one per run, same order), the INT8
    agreement and the batch-1 latency of each export's fp32 and int8 models, all timed
    interleaved in this process, and each relative to the first run's."""
    if not runs:
        raise InputError("give at least one run folder")
    if latency_runs < 1:
        raise InputError(f"--latency-runs must be >= 1, got {latency_runs}")
    if exports and len(exports) != len(runs):
        raise InputError(f"{len(exports)} export folders for {len(runs)} runs: give one export "
                         "per run, in the same order")
    rows = [row for run in runs for row in run_rows(run)]
    result: dict[str, Any] = {"rows": rows, "exports": []}
    if not exports:
        return result
    from edge_smw.export.parity import latency
    from edge_smw.metadata import ModelInfo

    facts = [export_facts(e, run) for e, run in zip(exports, runs, strict=True)]
    paths = {f"{i}:{name}": path for i, f in enumerate(facts) for name, path in f["files"].items()}
    if not paths:
        raise InputError("the export folders hold no "
                         + " or ".join(f.file_name for f in TIMED_FORMATS))
    size = ModelInfo.from_file(next(iter(paths.values()))).contract.input_size
    timed = latency(paths, size, runs=latency_runs, threads=threads, rounds=ROUNDS)
    for i, (run, fact) in enumerate(zip(runs, facts, strict=True)):
        fact["run"] = str(run)
        fact["latency_ms_p50"] = {name: timed[f"{i}:{name}"]["p50_ms"]
                                  for name in fact["files"]}
        result["exports"].append(fact)
    for i, fact in enumerate(result["exports"]):
        ratios = {name: [ms / first for ms, first in zip(
                      timed[f"{i}:{name}"]["round_p50_ms"], timed[f"0:{name}"]["round_p50_ms"],
                      strict=True)]
                  for name in fact["files"] if f"0:{name}" in timed}
        fact["latency_vs_first"] = {name: round(float(np.median(r)), 3)
                                    for name, r in ratios.items()}
        fact["latency_vs_first_range"] = {name: [round(min(r), 3), round(max(r), 3)]
                                          for name, r in ratios.items()}
    result["latency"] = {"batch": 1, "runs": latency_runs, "rounds": ROUNDS,
                         "interleaved": True}
    return result


def markdown(result: dict[str, Any]) -> str:
    """The comparison as Markdown tables."""
    rows = result["rows"]
    levels = list(rows[0]["per_level"]) if rows else []

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    def num(v: float | None, digits: int = 3) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    def relative(ratio: dict[str, float], spread: dict[str, list[float]], key: str) -> str:
        if key not in ratio:
            return "-"
        low, high = spread.get(key, (ratio[key], ratio[key]))
        return f"{ratio[key]:.2f}x ({low:.2f}-{high:.2f})"

    head = ["head", "fine-tuned", "loss", "val acc", "test acc", "MAE", "Spearman",
            *[f"{lv} acc / MAE" for lv in levels], "epoch", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        tuned = f"last {r['finetune_last']}" if r["finetune_last"] and r["saved"] else "no"
        epoch = (f"{r['epoch']} + {r['finetune_epoch']}" if r["finetune_epoch"] is not None
                 else str(r["epoch"]))
        cells = [r["head"], tuned, r["loss"] + (" (saved)" if r["saved"] else ""),
                 pct(r["val_accuracy"]), pct(r["accuracy"]), num(r["mae"]), num(r["spearman"]),
                 *[f"{pct(r['per_level'][lv]['accuracy'])} / {num(r['per_level'][lv]['mae'], 2)}"
                   for lv in levels],
                 epoch, num(r["train_seconds"], 0)]
        lines.append("| " + " | ".join(cells) + " |")
    if result.get("exports"):
        lines += ["", "| run | int8 agreement (gate) | fp32 ms p50 | int8 ms p50 | "
                  "vs first run, median of rounds (range): fp32, int8 |", "|---|---|---|---|---|"]
        for e in result["exports"]:
            ms = e["latency_ms_p50"]
            rel, spread = e["latency_vs_first"], e.get("latency_vs_first_range", {})
            gate = {True: "pass", False: "FAIL", None: "-"}[e["int8_gate_passed"]]
            fp32, int8 = FP32.key, INT8_CPU.key
            lines.append(f"| {e['run']} | {pct(e['int8_agreement'])} ({gate}) | "
                         f"{num(ms.get(fp32), 2)} | {num(ms.get(int8), 2)} | "
                         f"{relative(rel, spread, fp32)}, {relative(rel, spread, int8)} |")
    return "\n".join(lines) + "\n"
