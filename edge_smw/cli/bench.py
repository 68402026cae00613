"""edge-smw bench."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from edge_smw.artifacts.formats import BACKENDS
from edge_smw.cli.common import add_detect, add_json, print_json

HELP = "measure an export: latency, end-to-end FPS, parity with torch, robustness, gates"
EXAMPLES = """
  edge-smw bench exports/me --suite quick
  edge-smw bench exports/me --checkpoint runs/me --suite full --batch 1,8,32 --out bench/
  edge-smw bench exports/me --backends onnxruntime-cpu,torch-eager --json
  edge-smw bench exports/me --golden save golden.npz          # where torch is installed
  edge-smw bench exports/me --golden check golden.npz         # on the device, no torch
  edge-smw bench exports/me --gates benchmarks/gates.toml     # exit 1 when a gate fails
"""


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers like 1,8,32, got {text!r}"
                                         ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected whole numbers >= 1, got {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("export_dir", help="export folder (model.onnx, model.int8.onnx, ... )")
    p.add_argument("--checkpoint",
                   help="run folder or checkpoint.pt the export came from (default: found "
                        "through export.json; must match the models' checkpoint sha256)")
    p.add_argument("--data",
                   help="labelled set for parity: folder of level sub-folders, CSV, "
                        "'synthetic' or 'smiles' (default: the run's test split)")
    p.add_argument("--backends",
                   help=f"comma-separated: torch-eager, {', '.join(BACKENDS)} (default: all; "
                        "unavailable ones are listed as skipped with the reason)")
    p.add_argument("--batch", type=_ints, help="batch sizes, e.g. 1,8,32 (default: the suite's)")
    p.add_argument("--suite", default="quick",
                   help="quick (seconds), full (the RESULTS.md figures) or a suite .toml")
    p.add_argument("--golden", nargs=2, metavar=("save|check", "FILE"),
                   help="save the torch outputs on the bench's crops to FILE (.npz), or check "
                        "the export against such a file without torch")
    p.add_argument("--gates", help="gates TOML (default: the packaged benchmarks/gates.toml)")
    p.add_argument("--threads", type=int,
                   help="intra-op threads for onnxruntime and torch (default: the suite's; "
                        "a suite's 0: one per usable core)")
    p.add_argument("--out", help="folder for bench.json, bench.md and plots "
                                 "(default: EXPORT_DIR/bench)")
    p.add_argument("--detector",
                   help="comma-separated face detectors for the end-to-end rows and the "
                        "detection set: haar, blazeface-short, FILE.onnx (default: the suite's, "
                        "haar,blazeface-short)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    add_detect(p, detector=False)  # --detector above takes a list here
    add_json(p)


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run, rebuilt from the parsed arguments."""
    parts = ["edge-smw", "bench", args.export_dir]
    for flag, value in (("--checkpoint", args.checkpoint), ("--data", args.data),
                        ("--backends", args.backends), ("--suite", args.suite),
                        ("--gates", args.gates), ("--threads", args.threads),
                        ("--detector", args.detector),
                        ("--out", args.out)):
        if value is not None:
            parts += [flag, str(value)]
    if args.batch:
        parts += ["--batch", ",".join(str(b) for b in args.batch)]
    if args.golden:
        parts += ["--golden", *args.golden]
    if args.no_plots:
        parts.append("--no-plots")
    if args.detect is not None:
        parts.append("--detect" if args.detect else "--no-detect")
    return " ".join(shlex.quote(str(p)) for p in parts)


def run(args: argparse.Namespace) -> int:
    from edge_smw.atomic import check_writable_folder
    from edge_smw.bench.report import console_table, gates_lines, write_report
    from edge_smw.bench.run import BenchOptions, run_bench

    golden_mode, golden_file = (args.golden if args.golden else (None, None))
    options = BenchOptions(
        export_dir=Path(args.export_dir), checkpoint=args.checkpoint, data=args.data,
        backends=[b.strip() for b in args.backends.split(",")] if args.backends else None,
        batches=args.batch, suite=args.suite, golden_mode=golden_mode,
        golden_file=Path(golden_file) if golden_file else None, gates=args.gates,
        threads=args.threads, detect=args.detect,
        detectors=[d.strip() for d in args.detector.split(",")] if args.detector else None,
        command=_command(args),
    )
    out = Path(args.out) if args.out else Path(args.export_dir) / "bench"
    # probed before the work: a read-only export folder must not cost a whole bench
    check_writable_folder(out, "choose a writable --out folder" if args.out else
                          "pass --out with a writable folder (the default is EXPORT_DIR/bench)")
    report = run_bench(options)
    paths = write_report(report, out, plots=not args.no_plots)
    if args.json:
        print_json(report.to_dict())
    else:
        print(console_table(report))
        print()
        for line in gates_lines(report):
            print(line)
        print(f"\nwrote {paths['json']} and {paths['md']}"
              + (f" (+ {len(report.plots)} plots)" if report.plots else ""))
    if not report.passed:
        failed = ", ".join(g.name for g in report.failed_gates)
        print(f"edge-smw bench: gate(s) failed: {failed}", file=sys.stderr)
        return 1
    return 0
