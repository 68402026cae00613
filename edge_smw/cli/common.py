"""Argument helpers shared by subcommands, so each flag is spelled one way everywhere."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_no_detect(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-detect", action="store_true",
        help="images are already face crops: score them whole, no face detection",
    )


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
