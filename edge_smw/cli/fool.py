"""edge-smw fool."""

from __future__ import annotations

import argparse

from edge_smw.cli.common import add_detect, add_json, print_json

HELP = "fooling images: nearly invisible pixel changes that move a face to a chosen level"
EXAMPLES = """
  edge-smw fool runs/demo photo.jpg --target 5 --out fooled/
  edge-smw fool runs/smiles faces/ --target smiling --eps 2 --steps 100 --no-detect --json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run folder or checkpoint.pt (gradients need torch)")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR",
                   help="image files or folders of images (batch mode)")
    p.add_argument("--target", required=True,
                   help="level to reach: a level name or its 1-based position")
    p.add_argument("--eps", type=float, default=4.0,
                   help="L-infinity budget in pixel units of 0-255 (default 4, i.e. 4/255)")
    p.add_argument("--steps", type=int, default=50, help="most gradient steps per image")
    p.add_argument("--step-size", type=float,
                   help="pixel units per step (default max(1, eps/8, 2.5*eps/steps), at most eps)")
    p.add_argument("--out", default="fooled", help="folder for fooled PNGs and figures")
    add_detect(p, mismatch=False)  # crops are cut by the --detector asked for, no check
    add_json(p)


def run(args: argparse.Namespace) -> int:
    from edge_smw.atomic import check_writable_folder
    from edge_smw.attacks.fool import fool_images

    check_writable_folder(args.out, "choose a writable --out folder")  # before the attack
    report = fool_images(args.checkpoint, args.images, target=args.target, out=args.out,
                         eps=args.eps, steps=args.steps, step_size=args.step_size,
                         detect=args.detect, detector=args.detector)
    if args.json:
        print_json(report.to_dict())
        return 0
    levels = report.levels
    for r in report.records:
        res = r.result
        status = "fooled" if r.saved_still_fools else "NOT fooled"
        print(f"{r.image}: {levels[res.level_before]} -> {levels[r.saved_level]} ({status}, "
              f"{res.steps} steps, Linf {res.linf:.0f}, L2 {res.l2:.1f}) -> {r.figure}"
              + (f"  [{r.note}]" if r.note else ""))
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}")
    print(f"{100 * report.success_rate:.0f}% reach {levels[report.target]}; "
          f"wrote {report.summary_json}")
    return 0
