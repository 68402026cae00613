"""edge-smw compare."""

from __future__ import annotations

import argparse

from edge_smw.cli.common import add_json, print_json

HELP = "training runs side by side: test figures per head and loss, train time, export latency"
EXAMPLES = """
  edge-smw compare runs/linear runs/stages runs/stages-ft1
  edge-smw compare runs/linear runs/stages --exports exports/linear exports/stages --out heads.md
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run folders made by `edge-smw train`")
    p.add_argument("--exports", nargs="+",
                   help="one export folder per run, same order: adds INT8 agreement and the "
                        "models' batch-1 latency, timed interleaved in one process")
    p.add_argument("--latency-runs", type=int, default=50, help="timed runs per model")
    p.add_argument("--out", help="also write the tables to this Markdown file")
    add_json(p)


def run(args: argparse.Namespace) -> int:
    from edge_smw.atomic import check_writable_file, write_text
    from edge_smw.train.compare import compare, markdown

    if args.out:
        check_writable_file(args.out, "--out")  # before the timing, not after
    result = compare(args.runs, args.exports, latency_runs=args.latency_runs)
    text = markdown(result)
    if args.out:
        write_text(args.out, text)
    if args.json:
        print_json(result)
    else:
        print(text, end="")
    return 0
