"""Argument helpers shared by subcommands, so each flag is spelled one way everywhere."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_no_detect(parser: argparse.ArgumentParser) -> None:
    """``train``: the data's images are already face crops (the model then scores crops)."""
    parser.add_argument(
        "--no-detect", action="store_true",
        help="images are already face crops: train on them whole, no face detection",
    )


def add_detect(parser: argparse.ArgumentParser, *, detector: bool = True,
               mismatch: bool = True) -> None:
    """Commands that run a trained model: find faces or not, by default as it was trained,
    and (``detector``) with which face detector, by default the model's own."""
    parser.add_argument(
        "--detect", action=argparse.BooleanOptionalAction, default=None,
        help="find faces in the images (--detect) or score them whole as face crops "
             "(--no-detect); default: what the model was trained on",
    )
    if detector:
        add_detector(parser, mismatch=mismatch)


DETECTOR_HELP = ("face detector: auto (the model's own, recorded in its contract; Haar for "
                 "models made before detectors were recorded), haar, blazeface-short, or a "
                 "BlazeFace .onnx file")


def add_detector(parser: argparse._ActionsContainer, *, mismatch: bool = True) -> None:
    """``--detector`` (and, for commands that run a model, ``--allow-detector-mismatch``)."""
    parser.add_argument("--detector", default="auto", metavar="NAME|FILE.onnx",
                        help=DETECTOR_HELP)
    if mismatch:
        parser.add_argument(
            "--allow-detector-mismatch", action="store_true",
            help="run a model with another detector than the one its training crops came "
                 "from (crops differ, so do scores; it warns)")


def add_detector_settings(parser: argparse.ArgumentParser) -> None:
    """What training records in the contract about the detector, beside ``--detector``."""
    add_detector(parser, mismatch=False)
    parser.add_argument("--detector-size", type=int, metavar="PIXELS",
                        help="long side of the image the detector sees (default: the "
                             "detector's, 320 for blazeface-short)")
    parser.add_argument("--detector-retry", type=int, metavar="PIXELS",
                        help="a second, closer look at this long side when the first finds "
                             "no face (0: none; default: the detector's, 576)")
    parser.add_argument("--detector-threshold", type=float, metavar="SCORE",
                        help="detection score threshold (default: the detector's)")
    parser.add_argument("--align-faces", action="store_true",
                        help="rotate each crop so the eyes are level (DNN detectors; off by "
                             "default)")


def detector_from_args(args: argparse.Namespace) -> Any:
    """The ``DetectorSpec`` training records, from ``add_detector_settings``' flags."""
    from dataclasses import replace

    from edge_smw.detect import resolve_spec

    spec = resolve_spec(args.detector)
    return replace(spec, input_size=args.detector_size, retry_size=args.detector_retry,
                   score_threshold=args.detector_threshold, align=bool(args.align_faces))


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
