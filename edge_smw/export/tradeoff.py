"""The INT8 accuracy/speed trade-off, measured: what each technique buys on a trained run.

    python -m edge_smw.export.tradeoff RUN_DIR --out DIR [--calib-size 128] [--runs 200]
    python -m edge_smw.export.tradeoff --latency-only DIR [--runs 300] [--threads 2]

Builds, from ONE calibration pass on the run's training crops, the naive INT8 model and each
technique on top (float head, reduce_range, bias correction, range methods, mixed precision
at the export gate, int8-aware head; both flavours) and measures every model against the
torch model on the run's validation AND test crops (top-1 agreement, accuracy), then batch-1
latency of all of them in ONE process, runs interleaved, p50 against onnxruntime fp32.
Writes ``tradeoff.json`` and ``tradeoff.md`` (the table for benchmarks/RESULTS.md).
``--latency-only`` re-times the models an earlier run left in DIR (on a quieter machine, or
with another thread count) without redoing the accuracy part.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import onnx

from edge_smw.artifacts.sessions import usable_cores
from edge_smw.atomic import atomic_path, write_json, write_text
from edge_smw.export import mixed
from edge_smw.export import quantize as Q
from edge_smw.export.crops import calibration_crops, find_split, load_crops, split_items
from edge_smw.export.fp16 import convert_fp16
from edge_smw.export.int8_head import retrain_head, set_head
from edge_smw.export.onnx import export_fp32
from edge_smw.export.parity import compare, latency, runtime_probabilities, torch_probabilities
from edge_smw.export.sensitivity import node_units, unit_noise
from edge_smw.train.checkpoint import load_checkpoint


def measure(run: Path, out: Path, *, calib_size: int = 128, runs: int = 200,
            threads: int | None = None, progress: bool = True) -> dict[str, Any]:
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
    calibration = Q.calibrate(fp32_path, calib, contract, Q.CalibMethod.AUTO, progress=progress)
    by_method = {m: Q.Calibration(Q.CalibMethod(m) if m != "auto" else Q.CalibMethod.AUTO,
                                  dict(calibration.candidates[m]) if m != "auto"
                                  else dict(calibration.ranges), calibration.crops_sha256,
                                  calibration.crops_count)
                 for m in ("minmax", "percentile", "entropy", "auto")}
    for cal in by_method.values():  # the same fixed ranges calibrate() applies
        cal.ranges["input"] = Q.input_range(contract)
        for name in Q._pooled_maps(fp32_path):
            cal.ranges[name] = calibration.candidates["minmax"][name]
    minmax = by_method["minmax"]
    rows: list[dict[str, Any]] = []

    def evaluate(name: str, model: onnx.ModelProto, technique: str) -> dict[str, Any]:
        path = out / f"{len(rows):02d}.onnx"
        with atomic_path(path) as tmp:
            onnx.save_model(model, str(tmp))
        row = {"model": name, "technique": technique, "file": path.name}
        for s, crops in data.items():
            figures = compare(runtime_probabilities(path, crops, contract, threads=threads,
                                                    progress=progress, desc=name),
                              refs[s], crops.levels)
            row[s] = {k: figures[k] for k in ("top1_agreement", "accuracy", "accuracy_torch",
                                              "accuracy_delta", "max_abs_prob_diff", "n")}
        rows.append(row)
        print(f"{name}: val {100 * row['val']['top1_agreement']:.2f}% / test "
              f"{100 * row['test']['top1_agreement']:.2f}%", file=sys.stderr, flush=True)
        return row

    evaluate("fp32 (onnxruntime)", fp32, "reference")
    rows[0]["file"] = fp32_path.name
    units = node_units(fp32)
    for flavour in (Q.Flavour.CPU, Q.Flavour.TENSORRT):
        spec = Q.flavour_spec(flavour)
        tag = flavour.value
        if flavour is Q.Flavour.CPU:
            evaluate(f"{tag}: naive int8, head quantized too",
                     Q.quantize(fp32, minmax, spec, float_head=False),
                     "quantize_static QDQ per-channel, minmax, everything int8")
        naive = Q.quantize(fp32, minmax, spec)
        evaluate(f"{tag}: naive int8 (float head)", naive, "pool + linear head + softmax float")
        if flavour is Q.Flavour.CPU:
            evaluate(f"{tag}: + reduce_range", Q.quantize(
                fp32, minmax, Q.flavour_spec(flavour, reduce_range=True)), "7-bit weights")
        correction = Q.measure_weight_shift(fp32, naive, calib, contract)
        corrected_src = Q.apply_bias_correction(fp32, correction)
        corrected = Q.quantize(corrected_src, minmax, spec)
        bc = evaluate(f"{tag}: + bias correction", corrected, "weight-rounding shift in bias")
        if flavour is Q.Flavour.CPU:
            for method in ("percentile", "entropy", "auto"):
                evaluate(f"{tag}: + bias correction, {method} ranges",
                         Q.quantize(corrected_src, by_method[method], spec),
                         f"{method} activation ranges")
        noise = unit_noise(fp32, minmax, spec, correction, units, calib, contract,
                           progress=progress)

        def step_eval(model: onnx.ModelProto, _tag: str = tag) -> dict[str, Any]:
            path = out / "step.onnx"
            onnx.save_model(model, str(path))
            figures = compare(runtime_probabilities(path, data["val"], contract,
                                                    threads=threads, progress=False),
                              refs["val"], data["val"].levels)
            return {"agreement": figures["top1_agreement"], "accuracy": figures["accuracy"]}

        result = mixed.search(fp32, minmax, spec, correction, units=units,
                              ranking=[u["unit"] for u in noise], evaluate=step_eval,
                              target=0.98, max_steps=6,
                              start=(corrected, {"agreement": bc["val"]["top1_agreement"],
                                                 "accuracy": bc["val"]["accuracy"]}))
        chosen = result.model
        row = evaluate(f"{tag}: + mixed precision (target 98% on val)", chosen,
                       "float: " + (", ".join(result.float_units) or "none"))
        row["mixed_steps"] = [s.to_dict() for s in result.steps]
        row["unit_noise"] = noise[:6]
        if flavour is Q.Flavour.CPU:
            items = split_items(split, "train", contract.levels)
            weight, bias, info = retrain_head(chosen, checkpoint, items, progress=progress)
            head = evaluate(f"{tag}: + mixed precision + int8-aware head",
                            set_head(chosen, weight, bias), "head retrained on int8 features")
            head["aware_head"] = info
    evaluate("fp16 (onnxruntime CPU)", convert_fp16(fp32), "float16, float32 io")
    result = {"run": str(run), "calibration": calibration.describe(), "rows": rows,
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
    result.update(machine=Q.cpu_features(), latency_runs=runs,
                  threads=threads or usable_cores())
    write_json(out / "tradeoff.json", result)
    write_text(out / "tradeoff.md", table(result))
    return result


def table(result: dict[str, Any]) -> str:
    lines = ["| model | technique | agreement val | agreement test | accuracy test (torch) "
             "| p50 ms (batch 1) | speed-up vs fp32 |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        t = r["test"]
        lines.append(
            f"| {r['model']} | {r['technique']} | {100 * r['val']['top1_agreement']:.2f}% | "
            f"{100 * t['top1_agreement']:.2f}% | {100 * t['accuracy']:.2f}% "
            f"({100 * t['accuracy_torch']:.2f}%) | {r['latency_ms_p50']:.2f} | "
            f"{r['speedup_vs_fp32']:.2f}x |")
    machine = result["machine"]
    lines += ["", f"{result['rows'][0]['val']['n']} validation / "
              f"{result['rows'][0]['test']['n']} test crops; calibration "
              f"{result['calibration']['crops']} training crops; latency: one process, "
              f"{result['latency_runs']} interleaved runs each, {result['threads']} threads, "
              f"{machine['model'] or machine['machine']} (VNNI: {machine['vnni']})."]
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
    args = parser.parse_args(argv)
    if args.latency_only:
        print(table(retime(args.latency_only, runs=args.runs, threads=args.threads)))
        return 0
    if args.run is None or args.out is None:
        parser.error("give RUN and --out (or --latency-only DIR)")
    result = measure(args.run, args.out, calib_size=args.calib_size, runs=args.runs,
                     threads=args.threads)
    print(table(result))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
