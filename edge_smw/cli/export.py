"""edge-smw export."""

from __future__ import annotations

import argparse

HELP = "turn a trained run into checked ONNX / INT8 / FP16 models and TensorRT engines"
EXAMPLES = """
  edge-smw export runs/smiles --out exports/smiles
  edge-smw export runs/smiles --out exports/smiles --int8 --report
  edge-smw export runs/smiles --out exports/cpu --profile cpu-int8
  edge-smw export runs/smiles --out exports/orin --profile jetson-orin-int8 --engine
  edge-smw export runs/smiles/checkpoint.pt --out exports/x --int8 --calib-data photos/
  edge-smw export runs/smiles --out exports/x --int8 --int8-aware-head
  edge-smw export --list-profiles
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", metavar="RUN_OR_CHECKPOINT",
                   help="run folder made by `edge-smw train`, or its checkpoint.pt")
    p.add_argument("--out", help="output folder (created; files replaced atomically)")
    p.add_argument("--list-profiles", action="store_true", help="show the target profiles")
    p.add_argument("--profile", metavar="NAME|FILE",
                   help="target profile (see --list-profiles) or a .toml file; flags override")
    what = p.add_argument_group("what to build")
    what.add_argument("--int8", action=argparse.BooleanOptionalAction, default=None,
                      help="static INT8 (cpu and tensorrt flavours unless the profile picks one)")
    what.add_argument("--flavour", action="append", choices=["cpu", "tensorrt"], dest="flavours",
                      help="INT8 flavour(s) to write (repeatable; default: both)")
    what.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=None,
                      help="FP16 ONNX (float32 inputs/outputs kept)")
    what.add_argument("--engine", action=argparse.BooleanOptionalAction, default=None,
                      help="build TensorRT engine(s) (needs TensorRT and an NVIDIA GPU)")
    what.add_argument("--feature-map", action="store_true",
                      help="add the backbone's last feature map as an output (CAM heat maps)")
    cal = p.add_argument_group("INT8 calibration")
    cal.add_argument("--calib-data", metavar="DIR",
                     help="face photos to calibrate on (default: the run's training split)")
    cal.add_argument("--calib-size", type=int, metavar="N",
                     help="calibration crops, stratified by level (default 128, minimum 64)")
    cal.add_argument("--calib-method", choices=["minmax", "entropy", "percentile", "auto"],
                     help="activation ranges (default minmax; auto picks per tensor)")
    cal.add_argument("--num-bins", type=int, default=2048,
                     help="histogram bins for entropy/percentile/auto (default 2048)")
    cal.add_argument("--percentile", type=float, default=99.999)
    acc = p.add_argument_group("INT8 accuracy")
    acc.add_argument("--int8-target-agreement", type=float, metavar="X",
                     dest="target_agreement",
                     help="keep blocks in float until top-1 agreement with torch reaches X "
                          "(default 0.98, the export gate)")
    acc.add_argument("--mixed-steps", type=int, dest="max_mixed_steps",
                     help="most blocks to try in float (default 6; 0 disables mixed precision)")
    acc.add_argument("--int8-aware-head", action=argparse.BooleanOptionalAction, default=None,
                     dest="aware_head",
                     help="retrain the linear head on the int8 backbone's own features")
    acc.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=None,
                     help="fold the weight-rounding shift into the biases (default on)")
    acc.add_argument("--reduce-range", choices=["auto", "on", "off"],
                     help="7-bit weights for the cpu flavour (default auto: on for x86 "
                          "without VNNI)")
    acc.add_argument("--report", action="store_true",
                     help="write the per-tensor sensitivity report (Markdown, JSON, PNG)")
    acc.add_argument("--force", action="store_true",
                     help="write models that fail a parity gate anyway (and say so)")
    acc.add_argument("--val-limit", type=int, metavar="N",
                     help="measure parity on at most N validation crops (default: all)")
    trt = p.add_argument_group("TensorRT engine")
    trt.add_argument("--batch-max", type=int, help="largest batch of the engine's profile")
    trt.add_argument("--workspace-mb", type=int, help="builder workspace limit in MB")
    trt.add_argument("--dla-core", type=int, help="build for this DLA core (Jetson), GPU fallback")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _list_profiles() -> int:
    from edge_smw.export.profiles import list_profiles
    from edge_smw.tables import text_table as table

    rows = []
    for prof in list_profiles():
        cal = prof.calibration
        trt = prof.tensorrt
        rows.append([prof.name, prof.precision, ",".join(prof.flavours) or "-",
                     "yes" if prof.engine else "no",
                     f"{cal.get('size', '-')}/{cal.get('method', '-')}" if prof.precision ==
                     "int8" else "-",
                     f"{trt.get('batch_min', 1)}..{trt.get('batch_max', 8)}" if prof.engine
                     else "-", prof.description])
    print(table(rows, ["profile", "precision", "int8 flavours", "engine", "calibration",
                       "batch", "description"]))
    return 0


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edge_smw.errors import InputError

    if args.list_profiles:
        return _list_profiles()
    if not args.source or not args.out:
        raise InputError("give RUN_OR_CHECKPOINT and --out DIR (or --list-profiles)")
    from edge_smw.export.pipeline import ExportOptions, export_model

    options = ExportOptions(
        out=Path(args.out), int8=args.int8, fp16=args.fp16, engine=args.engine,
        profile=args.profile, flavours=tuple(args.flavours) if args.flavours else None,
        calib_data=Path(args.calib_data) if args.calib_data else None,
        calib_size=args.calib_size, calib_method=args.calib_method, num_bins=args.num_bins,
        percentile=args.percentile, feature_map=args.feature_map, force=args.force,
        report=args.report, target_agreement=args.target_agreement,
        max_mixed_steps=args.max_mixed_steps, aware_head=args.aware_head,
        bias_correction=args.bias_correction, reduce_range=args.reduce_range,
        val_limit=args.val_limit, progress=not args.quiet, batch_max=args.batch_max,
        workspace_mb=args.workspace_mb, dla_core=args.dla_core,
    )
    result = export_model(args.source, options)
    _print_summary(result)
    return 0


def _print_summary(result) -> None:  # noqa: ANN001 - ExportResult, imported lazily
    from edge_smw.tables import text_table as table

    rows = []
    for name, entry in result.summary["models"].items():
        par = entry["parity"]
        acc = (f"{100 * par['accuracy']:.1f}% ({100 * par['accuracy_delta']:+.1f})"
               if "accuracy" in par else "-")
        gate = entry.get("gate") or {}
        rows.append([entry["file"], name, f"{100 * par['top1_agreement']:.2f}%",
                     f"{par['max_abs_prob_diff']:.2e}", acc,
                     "pass" if gate.get("passed") else ("-" if not gate else "FAIL (forced)")])
    print(table(rows, ["file", "model", "agreement", "max |dp|", "accuracy (vs torch)",
                       "gate"]))
    for flavour, info in result.summary.get("int8", {}).get("flavours", {}).items():
        steps = " -> ".join(f"{s['step']} {100 * s['agreement']:.1f}%"
                            + ("" if s["kept"] else " (reverted)") for s in info["steps"])
        print(f"int8 {flavour}: {steps}; {info['speedup_vs_fp32']:.2f}x fp32 speed at batch 1 "
              "(measured now, on this machine)")
        head = info.get("aware_head")
        if head:
            plain, aware = head["plain_int8"], head["aware"]
            print(f"int8-aware head ({head['train_crops']} training crops): validation "
                  f"accuracy {100 * aware['accuracy']:.1f}% (plain int8 "
                  f"{100 * plain['accuracy']:.1f}%, torch {100 * aware['accuracy_torch']:.1f}%),"
                  f" agreement with torch {100 * aware['top1_agreement']:.1f}% (plain "
                  f"{100 * plain['top1_agreement']:.1f}%)")
    for engine in result.summary.get("engines", []):
        print(f"engine {engine['file']}: TensorRT {engine['tensorrt']} on {engine['gpu']}"
              f"{' (from cache)' if engine['from_cache'] else ''}")
    for message in result.forced:
        print(f"FORCED: {message}")
    print(f"wrote {', '.join(result.files)} into {result.out}")
