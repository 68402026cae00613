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
    parser.add_argument("--detector-retry", type=pixel_list, metavar="PIXELS[,PIXELS]",
                        help="further looks at these long sides, in order, each only while "
                             "the looks before found no face (0: none; default: the "
                             "detector's, 192,576: farther for faces that fill the frame, "
                             "closer for small ones)")
    parser.add_argument("--detector-threshold", type=float, metavar="SCORE",
                        help="detection score threshold (default: the detector's)")
    parser.add_argument("--align-faces", action="store_true",
                        help="rotate each crop so the eyes are level (DNN detectors; off by "
                             "default)")


def pixel_list(text: str) -> tuple[int, ...]:
    """``192,576`` -> (192, 576); ``0`` -> () (argparse words a ValueError as a usage error)."""
    from edge_smw.contract import retry_sizes

    return retry_sizes(int(part) for part in text.split(",") if part.strip())


def detector_from_args(args: argparse.Namespace) -> Any:
    """The ``DetectorSpec`` training records, from ``add_detector_settings``' flags."""
    from dataclasses import replace

    from edge_smw.detect import resolve_spec

    spec = resolve_spec(args.detector)
    return replace(spec, input_size=args.detector_size, retry_sizes=args.detector_retry,
                   score_threshold=args.detector_threshold, align=bool(args.align_faces))


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def add_engine_arguments(parser: argparse.ArgumentParser, *, gpus: bool = True) -> None:
    """--engine and the Ray engine's knobs (defaults from ``RayOptions``, the one place)."""
    from edge_smw.engines import ENGINE_INPROCESS, ENGINES, RayOptions

    group = parser.add_argument_group("engine: where the batch work runs")
    group.add_argument("--engine", choices=ENGINES, default=ENGINE_INPROCESS,
                       help="inprocess (default) or ray: Ray Data on a local Ray or a cluster "
                            "(pip install 'edge-smw[ray]')")
    group.add_argument("--ray-address",
                       help="Ray cluster to join ('auto' on a cluster node, "
                            "'ray://HEAD:10001'); default: start a local Ray")
    group.add_argument("--batch-size", type=int, default=RayOptions.batch_size,
                       help=f"ray: photos per model call (default {RayOptions.batch_size})")
    group.add_argument("--actors", type=int,
                       help="ray: model replicas (default: Ray grows the pool from 1 up to "
                            "one per GPU for GPU backends, else one per 2 CPUs)")
    group.add_argument("--cpus-per-actor", type=float, default=RayOptions.cpus_per_actor,
                       help="ray: CPUs (and onnxruntime threads) per replica (default "
                            f"{RayOptions.cpus_per_actor:g})")
    if gpus:
        group.add_argument("--gpus-per-actor", type=float,
                           help="ray: GPUs per replica (default: 1 for GPU backends, else 0)")


def ray_options(args: argparse.Namespace, *, progress: bool) -> Any:
    """The ``RayOptions`` of --engine ray; Ray-only flags without it are a mistake to name."""
    from edge_smw.engines import ENGINE_RAY, RayOptions, require_ray
    from edge_smw.errors import InputError

    given = {"--ray-address": args.ray_address is not None, "--actors": args.actors is not None,
             "--gpus-per-actor": getattr(args, "gpus_per_actor", None) is not None,
             "--batch-size": args.batch_size != RayOptions.batch_size,
             "--cpus-per-actor": args.cpus_per_actor != RayOptions.cpus_per_actor}
    if args.engine != ENGINE_RAY:
        if any(given.values()):
            flag = next(k for k, v in given.items() if v)
            raise InputError(f"{flag} is an option of the Ray engine; add --engine ray")
        return None
    require_ray()  # without the [ray] extra: one line saying what to install
    return RayOptions(address=args.ray_address, batch_size=args.batch_size, actors=args.actors,
                      cpus_per_actor=args.cpus_per_actor,
                      gpus_per_actor=getattr(args, "gpus_per_actor", None), progress=progress)
