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


def add_detect(parser: argparse.ArgumentParser) -> None:
    """Commands that run a trained model: find faces or not, by default as it was trained."""
    parser.add_argument(
        "--detect", action=argparse.BooleanOptionalAction, default=None,
        help="find faces in the images (--detect) or score them whole as face crops "
             "(--no-detect); default: what the model was trained on",
    )


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
