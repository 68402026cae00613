"""edge-smw score."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from edge_smw.artifacts.formats import BACKENDS
from edge_smw.cli.common import add_detect, add_engine_arguments, ray_options
from edge_smw.tables import text_table

HELP = "score photos (or face crops) with an exported model: one line per image and face"
JSON_HELP = ("print one JSON object per line: one per face (path, face, box, level, "
             "probabilities, expected_score); a photo without a scorable face gets one line "
             "with face null and its status (--engine ray: its summary, on one line)")
EXAMPLES = """
  edge-smw score exports/me/model.onnx photo.jpg
  edge-smw score exports/me/ album/ --json
  edge-smw score model.onnx crops/ --no-detect --backend onnxruntime-cpu --threads 2
  edge-smw score exports/me s3://bucket/photos/ --engine ray --ray-address auto --out scores/
"""

BACKEND_CHOICES = ("auto", *BACKENDS)


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by the commands that run a model (score, rank)."""
    p.add_argument("model", metavar="MODEL",
                   help="exported model: .onnx, .engine (with its .json sidecar) or an export "
                        "folder")
    add_detect(p)
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="inference backend (default: the fastest available)")
    p.add_argument("--threads", type=int,
                   help="CPU threads for onnxruntime or OpenVINO (default: all)")
    p.add_argument("--device", type=int, default=0, help="GPU index for CUDA/TensorRT")


def open_runtime(args: argparse.Namespace, max_faces: int = 5):  # noqa: ANN201 - lazy import
    from edge_smw.artifacts.sessions import check_threads
    from edge_smw.runtime import Runtime
    from edge_smw.runtime.runtime import check_max_faces

    check_threads(args.threads, "--threads")  # named by their flags, not Runtime's arguments
    check_max_faces(max_faces, "--max-faces")
    return Runtime(args.model, backend=args.backend, device=args.device, threads=args.threads,
                   detect_faces=args.detect, max_faces=max_faces, detector=args.detector,
                   allow_detector_mismatch=args.allow_detector_mismatch)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_runtime_arguments(p)
    p.add_argument("images", metavar="IMAGES_OR_DIRS", nargs="+",
                   help="image files and/or folders (searched recursively); with --engine "
                        "ray also globs, CSV/Parquet lists (a path column) and s3:// or gs:// "
                        "prefixes")
    p.add_argument("--max-faces", type=int, default=5, help="faces scored per photo (largest)")
    p.add_argument("--out", help="--engine ray: folder for the results (Parquet faces/ and "
                                 "skipped/, ranking.csv, summary.json); a re-run resumes")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    add_engine_arguments(p)


def check_engine_flags(args: argparse.Namespace) -> None:
    """In-process flags that the Ray engine decides for itself, named when given with it."""
    from edge_smw.errors import InputError

    if args.engine == "ray" and args.threads is not None:
        raise InputError("--threads: with --engine ray each actor runs --cpus-per-actor "
                         "threads")
    if args.engine == "ray" and args.device != 0:
        raise InputError("--device: with --engine ray, Ray gives each actor its GPU "
                         "(--gpus-per-actor)")


def run_on_ray(args: argparse.Namespace, options: Any, inputs: list[str], out: str, *,
               thumbnails: int = 0, exclude: str | None = None) -> tuple[Any, Any]:
    """Score on Ray Data into ``out``: (RunSummary, AlbumRanking), as
    ``edge_smw.engines.ray.score_library`` returns them."""
    check_engine_flags(args)
    from edge_smw.atomic import check_writable_folder
    from edge_smw.engines.ray import score_library

    check_writable_folder(out, "choose a writable --out folder")  # before Ray starts
    return score_library(args.model, inputs, out, backend=args.backend,
                         detect=args.detect, max_faces=getattr(args, "max_faces", 5),
                         options=options, exclude=exclude, thumbnails=thumbnails)


def run(args: argparse.Namespace) -> int:
    from edge_smw.errors import InputError
    from edge_smw.rank import collect_images, score_photos

    options = ray_options(args, progress=not args.json)
    if options is not None:
        if not args.out:
            raise InputError("--engine ray writes its results to files: pass --out DIR")
        summary, _ = run_on_ray(args, options, args.images, args.out)
        if args.json:
            print(json.dumps(summary.to_dict()))
        else:
            print("\n".join(summary.lines()))
            print(f"wrote {args.out}/faces/ (one row per face), {args.out}/skipped/, "
                  f"{args.out}/ranking.csv and {args.out}/summary.json")
        if summary.scored and not summary.faces:
            print("edge-smw score: no image could be scored", file=sys.stderr)
            return 1
        return 0
    if args.out:
        raise InputError("--out is where --engine ray writes; in-process scores are printed "
                         "(use `edge-smw rank` for a CSV)")

    paths = collect_images(args.images)
    with open_runtime(args, max_faces=args.max_faces) as runtime:
        photos = list(score_photos(runtime, paths, progress=not args.json and len(paths) > 1))
        levels = runtime.levels
        detect = runtime.detect
    scored = sum(len(p.faces) for p in photos)
    if args.json:
        for photo in photos:
            for record in photo.records():
                print(json.dumps(record))
        return verdict(photos, scored, detect)
    rows = []
    for photo in photos:
        if photo.error is not None:
            rows.append([photo.path, "-", "-", "-", f"unreadable: {photo.error}", "-"])
        elif not photo.faces:
            rows.append([photo.path, "-", "-", "-", "no face found", "-"])
        for i, face in enumerate(photo.faces, 1):
            probs = " ".join(f"{p:.3f}" for p in face.probabilities)
            box = ",".join(str(v) for v in face.box) if face.box else "-"
            rows.append([photo.path, i, f"{face.expected_score:.2f}", face.level_name, probs, box])
    header = ["image", "face", "score", "level", "p(" + " ".join(levels) + ")", "box"]
    print(text_table(rows, header))
    unreadable = sum(p.error is not None for p in photos)
    no_face = sum(p.error is None and not p.faces for p in photos)
    print(f"{len(photos)} image(s): {scored} face(s) scored, "
          f"{no_face} without a face, {unreadable} unreadable; score = expected level 1.."
          f"{len(levels)}")
    return verdict(photos, scored, detect)


def verdict(photos: list, scored: int, detect: bool, command: str = "score") -> int:
    """Exit 1 when nothing could be scored; say which flag helps when faces were not found."""
    no_face = sum(p.error is None and not p.faces for p in photos)
    if detect and no_face and 2 * no_face > len(photos):
        print(f"edge-smw {command}: {no_face} of {len(photos)} image(s) yield no face with "
              "face detection on; if they are face crops already, score them whole with "
              "--no-detect", file=sys.stderr)
    if scored == 0:
        print(f"edge-smw {command}: no image could be scored", file=sys.stderr)
        return 1
    return 0
