"""edge-smw quant-report."""

from __future__ import annotations

import argparse

HELP = "rank an export's INT8 tensors by quantization error (Markdown, JSON, PNG chart)"
EXAMPLES = """
  edge-smw quant-report exports/smiles
  edge-smw quant-report exports/smiles --crops 64 --out reports/
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("export_dir", metavar="EXPORT_DIR", help="folder written by `edge-smw export "
                   "--int8`")
    p.add_argument("--out", help="where to write the report (default: EXPORT_DIR)")
    p.add_argument("--crops", type=int, default=32,
                   help="calibration crops to measure on (default 32)")
    p.add_argument("--top", type=int, default=10, help="tensors to print (default 10)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import json

    from edge_smw.atomic import check_writable_folder
    from edge_smw.errors import InputError
    from edge_smw.export.sensitivity import report_for_export
    from edge_smw.tables import text_table as table

    if args.crops < 1:
        raise InputError(f"--crops {args.crops}: give at least 1")
    if args.top < 1:
        raise InputError(f"--top must be >= 1, got {args.top}")
    if args.out:
        check_writable_folder(args.out, "choose a writable --out folder")  # before measuring
    written = report_for_export(args.export_dir, out=args.out, limit=args.crops,
                                progress=not args.quiet)
    for flavour, files in written.items():
        data = json.loads(files["json"].read_text(encoding="utf-8"))
        rows = [[i, t["tensor"], t["op_type"], t["unit"], f"{t['local_sqnr_db']:.1f}",
                 f"{t['model_sqnr_db']:.1f}"] for i, t in enumerate(data["tensors"][:args.top], 1)]
        print(f"{flavour} flavour: {len(data['tensors'])} quantized tensors, lowest SQNR first")
        print(table(rows, ["rank", "tensor", "op", "unit", "local dB", "model dB"]))
        print(f"wrote {files['md']}, {files['json'].name}, {files['png'].name}")
    return 0
