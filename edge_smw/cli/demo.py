"""edge-smw demo."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "run the whole pipeline offline on built-in synthetic faces and write REPORT.md"
EXAMPLES = """
  edge-smw demo --out demo-run
  edge-smw demo --out /tmp/d --quick --count 600
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-run", help="folder for everything the demo writes")
    p.add_argument("--count", type=int, default=3000, help="synthetic faces to draw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smaller tuning grid (tests, CI)")


def run(args: argparse.Namespace) -> int:
    from edge_smw.demo import run_demo

    run_demo(args.out, count=args.count, seed=args.seed, quick=args.quick)
    print(Path(args.out, "REPORT.md").read_text(encoding="utf-8"))
    return 0
