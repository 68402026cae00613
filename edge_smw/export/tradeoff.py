"""The INT8 accuracy/speed trade-off, measured: what each technique buys on a trained run.

    python -m edge_smw.export.tradeoff RUN_DIR --out DIR [--calib-size 128] [--runs 200] [--tune]
    python -m edge_smw.export.tradeoff --latency-only DIR [--runs 300] [--threads 2]

Runs the export's own INT8 steps (``edge_smw.export.int8``), the ones on request included
(range equalization of the linear and of the clipped ReLU6 streams; for the tensorrt flavour
one quantizer per Conv and activation and centred activations; quantization-aware tuning with
``--tune``), for the cpu flavour with 8-bit weights (VNNI / ARM targets), the cpu flavour with
7-bit weights (``reduce_range``, what an AVX2-only x86 runs) and the tensorrt flavour, from ONE
calibration pass on the run's training crops, plus two reference points (everything int8
including the head; fp16). Mixed precision is off: every row is all-integer but for the float
tail. A variant whose weights do not suit this CPU (8-bit cpu-flavour weights on an x86 without
VNNI, where onnxruntime's U8S8 sums saturate) is not measured: its figures here would be this
CPU's fault, not its target's; the table says so. Every step's model, kept or not, is measured
against the torch model on the run's validation AND test crops (top-1 agreement with its Wilson
interval, accuracy), then all of them are timed at batch 1 in ONE process, runs interleaved,
p50 against onnxruntime fp32. Writes ``tradeoff.json`` and ``tradeoff.md`` (the table for
benchmarks/RESULTS.md). ``--latency-only`` re-times the models an earlier run left in DIR
without redoing the accuracy part.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx

from edge_smw.atomic import atomic_path, write_json, write_text
from edge_smw.cpu import cpu_features, cpu_flags, int8_mismatch
from edge_smw.export import int8
from edge_smw.export import quantize as Q
from edge_smw.export.crops import calibration_crops, find_split, load_crops, split_items
from edge_smw.export.fp16 import convert_fp16
from edge_smw.export.onnx import export_fp32
from edge_smw.export.parity import latency, runtime_probabilities, torch_probabilities
from edge_smw.export.results import Parity
from edge_smw.export.settings import ExportSettings
from edge_smw.train.checkpoint import load_checkpoint


@dataclass(frozen=True)
class Variant:
    """One flavour built for one target CPU, with the steps that are on request turned on."""

    label: str
    flavour: Q.Flavour
    target_cpu: str
    options: tuple[tuple[str, Any], ...] = ()  # ExportSettings fields beyond the defaults

    def settings(self, base: ExportSettings) -> ExportSettings:
        return replace(base, target_cpu=self.target_cpu, **dict(self.options))

    def mismatch(self, features: dict[str, Any] | None = None) -> str | None:
        """Why this CPU cannot measure the variant as its target runs it, or None."""
        reduce_range, _ = Q.decide_reduce_range(self.flavour, "auto", self.target_cpu)
        return int8_mismatch({"flavour": self.flavour.value, "reduce_range": reduce_range,
                              "target_cpu": self.target_cpu}, features)


EQUALIZE = (("equalize", True), ("equalize_clipped", True))
VARIANTS = (
    Variant("cpu, 8-bit weights (x86-vnni / arm64)", Q.Flavour.CPU, "x86-vnni", EQUALIZE),
    Variant("cpu, 7-bit weights (x86-avx2)", Q.Flavour.CPU, "x86-avx2", EQUALIZE),
    Variant("tensorrt", Q.Flavour.TENSORRT, "x86-vnni",
            (*EQUALIZE, ("centre_activations", True))),
)


def measure(run: Path, out: Path, *, calib_size: int = 128, runs: int = 200,
            threads: int | None = None, tuning: bool = False,
            progress: bool = True) -> dict[str, Any]:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = load_checkpoint(run)
    contract = checkpoint.contract
    torch_model = checkpoint.build_model()
    fp32_path = export_fp32(checkpoint, out / "fp32.onnx", model=torch_model)
    fp32 = onnx.load_model(str(fp32_path))
    split = find_split(run)
    data = {s: load_crops(split_items(split, s, contract.levels), contract,
                          detect=checkpoint.detect, source=s, progress=progress, desc=s)
            for s in ("val", "test")}
    refs = {s: torch_probabilities(torch_model, c, contract, progress=progress)
            for s, c in data.items()}
    calib = calibration_crops(contract, detect=checkpoint.detect, size=calib_size,
                              run_or_checkpoint=run, progress=progress)
    settings = ExportSettings(int8=True, calib_size=calib_size, max_mixed_steps=0,
                              latency_runs=3, tune=tuning)
    calibration = Q.calibrate(fp32_path, calib, contract, Q.CalibMethod.MINMAX,
                              progress=progress)
    work = out / "work"
    work.mkdir(exist_ok=True)
    ctx = int8.Int8Context(checkpoint, run, fp32, fp32_path, calib, data["val"], refs["val"],
                           calibration, settings, work, progress)
    rows: list[dict[str, Any]] = []

    def evaluate(name: str, path: Path, technique: str, **extra: Any) -> dict[str, Any]:
        file = out / f"{len(rows):02d}.onnx"
        if path != file:
            shutil.copyfile(path, file)
        row = {"model": name, "technique": technique, "file": file.name, **extra}
        for s, crops in data.items():
            parity = Parity.measure(runtime_probabilities(file, crops, contract, threads=threads,
                                                          progress=progress, desc=name),
                                    refs[s], crops.levels)
            row[s] = parity.to_dict()
        rows.append(row)
        print(f"{name}: val {100 * row['val']['top1_agreement']:.2f}% / test "
              f"{100 * row['test']['top1_agreement']:.2f}%", file=sys.stderr, flush=True)
        return row

    def save(model: onnx.ModelProto, name: str) -> Path:
        path = work / f"{name}.onnx"
        with atomic_path(path) as tmp:
            onnx.save_model(model, str(tmp))
        return path

    evaluate("fp32 (onnxruntime)", fp32_path, "reference")
    evaluate("cpu: naive int8, head quantized too",
             save(Q.quantize(fp32, calibration, Q.flavour_spec(Q.Flavour.CPU),
                             float_head=False), "head-int8"),
             "quantize_static QDQ per-channel, minmax, everything int8",
             flavour=Q.Flavour.CPU.value, reduce_range=False)
    skipped: list[dict[str, str]] = []
    for variant in VARIANTS:
        why = variant.mismatch()
        if why is not None:
            skipped.append({"model": variant.label, "why": why})
            print(f"{variant.label}: not measured on this CPU: {why}", file=sys.stderr)
            continue
        ctx.settings = variant.settings(settings)
        flavour_run = int8.run_flavour(ctx, variant.flavour)
        for step in flavour_run.steps:
            if step.figures is None or step.figures.path is None:
                if step.note:
                    skipped.append({"model": f"{variant.label}: {step.name}",
                                    "why": step.note})
                continue
            evaluate(f"{variant.label}: {step.name}", step.figures.path,
                     "kept" if step.kept else f"not kept ({step.note})",
                     flavour=variant.flavour.value,
                     reduce_range=flavour_run.recipe.spec.reduce_range)
    evaluate("fp16 (onnxruntime CPU)", save(convert_fp16(fp32), "fp16"), "float16, float32 io")
    result = {"run": str(run), "calibration": calibration.describe(), "rows": rows,
              "not_measured": skipped, "tuning": tuning,
              "seconds": round(time.perf_counter() - started, 1)}
    return retime(out, result, runs=runs, threads=threads, size=contract.input_size)


def retime(out: Path, result: dict[str, Any] | None = None, *, runs: int = 200,
           threads: int | None = None, size: int = 224) -> dict[str, Any]:
    """Batch-1 latency of every model in the table, one process, interleaved; p50/p90."""
    if result is None:
        import json

        result = json.loads((out / "tradeoff.json").read_text(encoding="utf-8"))
    paths = {row["model"]: out / row["file"] for row in result["rows"]}
    speed = latency(paths, size, runs=runs, threads=threads)
    base = speed["fp32 (onnxruntime)"]["p50_ms"]
    for row in result["rows"]:
        s = speed[row["model"]]
        row["latency_ms_p50"] = s["p50_ms"]
        row["latency_ms_p90"] = s["p90_ms"]
        row["speedup_vs_fp32"] = base / s["p50_ms"]
    result.update(machine=cpu_features(), cpu_flags=cpu_flags(), latency_runs=runs,
                  threads=threads or os.cpu_count())
    write_json(out / "tradeoff.json", result)
    write_text(out / "tradeoff.md", table(result))
    return result


def _pct(parity: dict[str, Any]) -> str:
    low, high = parity.get("top1_agreement_interval", [None, None])
    band = f" ({100 * low:.1f}-{100 * high:.1f})" if low is not None else ""
    return f"{100 * parity['top1_agreement']:.2f}%{band}"


def _unsuited(row: dict[str, Any], machine: dict[str, Any]) -> str:
    """A note on a row whose weights do not suit the CPU it was measured on (the naive
    reference keeps onnxruntime's default 8-bit weights on every CPU)."""
    if "reduce_range" not in row:
        return ""
    why = int8_mismatch({"flavour": row.get("flavour", "cpu"),
                         "reduce_range": row["reduce_range"]}, machine)
    return "" if why is None else "; 8-bit weights on a CPU without VNNI: its U8S8 sums saturate"


def table(result: dict[str, Any]) -> str:
    lines = ["| model | technique | agreement val (95% CI) | agreement test (95% CI) "
             "| accuracy test (torch) | p50 ms (batch 1) | speed-up vs fp32 |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        t = r["test"]
        lines.append(
            f"| {r['model']} | {r['technique']}{_unsuited(r, result['machine'])} | "
            f"{_pct(r['val'])} | {_pct(t)} | "
            f"{100 * t['accuracy']:.2f}% ({100 * t['accuracy_torch']:.2f}%) | "
            f"{r['latency_ms_p50']:.2f} | {r['speedup_vs_fp32']:.2f}x |")
    machine = result["machine"]
    flags = " ".join(name for name, present in result.get("cpu_flags", {}).items() if present)
    lines += ["", f"{result['rows'][0]['val']['n']} validation / "
              f"{result['rows'][0]['test']['n']} test crops (95% Wilson intervals); calibration "
              f"{result['calibration']['crops']} training crops; latency: one process, "
              f"{result['latency_runs']} interleaved runs each, {result['threads']} threads, "
              f"{machine['model'] or machine['machine']} (VNNI: {machine['vnni']}; "
              f"flags: {flags or 'unknown'})."]
    for row in result.get("not_measured", []):
        lines.append(f"Not measured: {row['model']}: {row['why']}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_smw.export.tradeoff",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, nargs="?")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--latency-only", type=Path, metavar="DIR",
                        help="re-time the models of an earlier run in DIR")
    parser.add_argument("--calib-size", type=int, default=128)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--tune", action="store_true",
                        help="add quantization-aware tuning to every variant (tens of minutes)")
    args = parser.parse_args(argv)
    if args.latency_only:
        print(table(retime(args.latency_only, runs=args.runs, threads=args.threads)))
        return 0
    if args.run is None or args.out is None:
        parser.error("give RUN and --out (or --latency-only DIR)")
    result = measure(args.run, args.out, calib_size=args.calib_size, runs=args.runs,
                     threads=args.threads, tuning=args.tune)
    print(table(result))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
