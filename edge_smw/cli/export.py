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
    from edge_smw.export.settings import add_arguments as add_settings

    p.add_argument("source", nargs="?", metavar="RUN_OR_CHECKPOINT",
                   help="run folder made by `edge-smw train`, or its checkpoint.pt")
    p.add_argument("--out", help="output folder (created; files replaced atomically)")
    p.add_argument("--list-profiles", action="store_true", help="show the target profiles")
    p.add_argument("--profile", metavar="NAME|FILE",
                   help="target profile (see --list-profiles) or a .toml file; flags override")
    add_settings(p)  # one option per export setting, help and defaults from the settings
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _list_profiles() -> int:
    from edge_smw.export.profiles import list_profiles
    from edge_smw.export.settings import default_of
    from edge_smw.tables import text_table as table

    rows = []
    for prof in list_profiles():
        values = prof.values

        def get(name: str, _values: dict = values) -> object:
            return _values.get(name, default_of(name))

        rows.append([prof.name, prof.precision, ",".join(prof.flavours) or "-",
                     get("target_cpu") if "cpu" in prof.flavours else "-",
                     "yes" if prof.engine else "no",
                     f"{get('calib_size')}/{get('calib_method')}" if prof.precision == "int8"
                     else "-",
                     f"{get('batch_min')}..{get('batch_max')}" if prof.engine else "-",
                     prof.description])
    print(table(rows, ["profile", "precision", "int8 flavours", "target CPU", "engine",
                       "calibration", "batch", "description"]))
    return 0


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edge_smw.errors import InputError

    if args.list_profiles:
        return _list_profiles()
    if not args.source or not args.out:
        raise InputError("give RUN_OR_CHECKPOINT and --out DIR (or --list-profiles)")
    from edge_smw.export.pipeline import export_model
    from edge_smw.export.settings import overrides_from_args, resolve_settings

    settings = resolve_settings(args.profile, overrides_from_args(args))
    result = export_model(args.source, Path(args.out), settings, progress=not args.quiet)
    _print_summary(result)
    return 0


def _print_summary(result) -> None:  # noqa: ANN001 - ExportResult, imported lazily
    from edge_smw.tables import text_table as table

    summary = result.summary
    rows = []
    for name, entry in summary.models.items():
        par = entry.parity
        acc = (f"{100 * par.accuracy:.1f}% ({100 * par.accuracy_delta:+.1f})"
               if par.accuracy is not None else "-")
        gate = entry.gate
        verdict = "-" if gate is None else ("pass" if gate.passed else (
            "not judged" if gate.outcome == gate.NOT_JUDGED else "FAIL (forced)"))
        rows.append([entry.file, name, f"{100 * par.top1_agreement:.2f}%",
                     f"{par.max_abs_prob_diff:.2e}", acc, verdict])
    print(table(rows, ["file", "model", "agreement", "max |dp|", "accuracy (vs torch)",
                       "gate"]))
    for entry in summary.models.values():
        if entry.gate is not None and entry.gate.what == "top1_agreement":
            print(f"{entry.file}: {entry.gate.claim}")
            if entry.parity.decision_margins is not None:
                print(f"  {entry.parity.decision_margins.describe()}")
    for flavour, info in (summary.int8.flavours.items() if summary.int8 else []):
        steps = " -> ".join(step.brief() for step in info.steps)
        print(f"int8 {flavour}: {steps}" + (f"; {info.speed.describe()}" if info.speed else ""))
        head = info.aware_head
        if head:
            plain, aware = head["plain_int8"], head["aware"]
            print(f"int8-aware head ({head['train_crops']} training crops): validation "
                  f"accuracy {100 * aware['accuracy']:.1f}% (plain int8 "
                  f"{100 * plain['accuracy']:.1f}%, torch {100 * aware['accuracy_torch']:.1f}%),"
                  f" agreement with torch {100 * aware['top1_agreement']:.1f}% (plain "
                  f"{100 * plain['top1_agreement']:.1f}%)")
    for engine in summary.engines:
        print(f"engine {engine['file']}: TensorRT {engine['tensorrt']} on {engine['gpu']}"
              f"{' (from cache)' if engine['from_cache'] else ''}")
    for message in result.forced:
        print(f"FORCED: {message}")
    print(f"wrote {', '.join(result.files)} into {result.out}")
    if result.removed:
        print(f"removed {', '.join(result.removed)}: an earlier export's, not rebuilt by this "
              "one")
