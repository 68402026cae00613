"""edge-smw explain."""

from __future__ import annotations

import argparse

from edge_smw.cli.common import add_detect, add_json, print_json
from edge_smw.cli.score import BACKEND_CHOICES

HELP = "heat maps: which pixels drove a face's level (saliency, gradcam, cam)"
EXAMPLES = """
  edge-smw explain runs/demo photo.jpg --out heatmaps/
  edge-smw explain runs/demo faces/ --method gradcam --level 5 --no-detect --out heatmaps/
  edge-smw explain exports/demo/model.onnx photo.jpg --method cam --out heatmaps/
  edge-smw explain --check-synthetic --out heatmap-check/
  edge-smw explain runs/demo --check-synthetic --out heatmap-check/
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?",
                   help="run folder or checkpoint.pt (every method), or an exported .onnx with "
                        "a feature_map output (cam only, no torch needed)")
    p.add_argument("images", nargs="*", help="image files or folders of images")
    p.add_argument("--method", choices=["saliency", "gradcam", "cam"],
                   help="default: saliency for a checkpoint (as in the poster), cam for an "
                        "exported model")
    p.add_argument("--level", help="explain this level (name or 1-based position); default: "
                                   "each face's predicted level")
    p.add_argument("--out", default="explain", help="folder for the PNGs and index.html")
    add_detect(p, mismatch=False)  # crops are cut by the --detector asked for, no check
    add_json(p)
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="runtime backend for an exported model (default: the fastest "
                        "available)")
    p.add_argument("--check-synthetic", action="store_true",
                   help="measure how much heat falls on the eyes and mouth of held-out "
                        "synthetic faces, per method (MODEL: a run trained on --data synthetic;"
                        " none: a small one is trained into OUT/run)")
    p.add_argument("--sample", type=int, default=40,
                   help="--check-synthetic: how many held-out faces to score")


def run(args: argparse.Namespace) -> int:
    from edge_smw.errors import InputError

    if args.check_synthetic:
        return _check(args)
    if not args.model or not args.images:
        raise InputError("give a MODEL and at least one image or folder "
                         "(or --check-synthetic); see `edge-smw explain --help`")
    from edge_smw.atomic import check_writable_folder
    from edge_smw.explain.api import explain_images

    check_writable_folder(args.out, "choose a writable --out folder")  # before the work
    report = explain_images(args.model, args.images, out=args.out, method=args.method,
                            level=args.level, detect=args.detect, backend=args.backend,
                            detector=args.detector)
    if args.json:
        print_json(report.to_dict())
        return 0
    for heat, figure in zip(report.heatmaps, report.figures, strict=True):
        p = heat.probabilities[heat.predicted]
        print(f"{heat.name}: predicted {heat.levels[heat.predicted]} ({100 * p:.0f}%), "
              f"{report.method} for {heat.levels[heat.level]} -> {figure}")
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}")
    print(f"wrote {report.index}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from edge_smw.atomic import check_writable_folder
    from edge_smw.errors import InputError
    from edge_smw.explain.check import synthetic_check

    if args.images:
        raise InputError("--check-synthetic uses the synthetic set's held-out faces; give no "
                         "images")
    if args.sample < 1:
        raise InputError(f"--sample must be at least 1, got {args.sample}")
    methods = (args.method,) if args.method else ("saliency", "gradcam", "cam")
    check_writable_folder(args.out, "choose a writable --out folder")
    report = synthetic_check(args.out, run_dir=args.model, methods=methods, sample=args.sample,
                             progress=not args.json)
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.to_markdown())
        print(f"wrote {args.out}/check.md and check.json")
    return 0
