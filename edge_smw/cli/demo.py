"""edge-smw demo."""

from __future__ import annotations

import argparse
import sys

HELP = "run the whole pipeline offline on built-in synthetic faces and write REPORT.md"
EXAMPLES = """
  edge-smw demo --out demo-run
  edge-smw demo --out /tmp/d --quick          # every step, tiny sizes (tests, CI)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-run", help="folder for everything the demo writes")
    p.add_argument("--count", type=int,
                   help="synthetic faces to draw (default 3000; --quick: 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="every step at the smallest size (tests, CI); its figures mean nothing")


def run(args: argparse.Namespace) -> int:
    from edge_smw.demo import FIRST_RUN_NOTE, run_demo

    print(FIRST_RUN_NOTE, file=sys.stderr, flush=True)
    result = run_demo(args.out, count=args.count, seed=args.seed, quick=args.quick)
    print(result.report.read_text(encoding="utf-8"))
    return 0
