"""edge-smw score."""

from __future__ import annotations

import argparse

from edge_smw.cli.common import add_json, add_no_detect, print_json
from edge_smw.tables import text_table

HELP = "score photos (or face crops) with an exported model: one line per image and face"
EXAMPLES = """
  edge-smw score exports/me/model.onnx photo.jpg
  edge-smw score exports/me/ album/ --json
  edge-smw score model.onnx crops/ --no-detect --backend onnxruntime-cpu --threads 2
"""

BACKEND_CHOICES = ("auto", "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt",
                   "tensorrt")


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by the commands that run a model (score, rank)."""
    p.add_argument("model", metavar="MODEL",
                   help="exported model: .onnx, .engine (with its .json sidecar) or an export "
                        "folder")
    add_no_detect(p)
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="inference backend (default: the fastest available)")
    p.add_argument("--threads", type=int, help="CPU threads for onnxruntime (default: all)")
    p.add_argument("--device", type=int, default=0, help="GPU index for CUDA/TensorRT")


def open_runtime(args: argparse.Namespace, max_faces: int = 5):  # noqa: ANN201 - lazy import
    from edge_smw.runtime import Runtime

    return Runtime(args.model, backend=args.backend, device=args.device, threads=args.threads,
                   detect_faces=not args.no_detect, max_faces=max_faces)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_runtime_arguments(p)
    p.add_argument("images", metavar="IMAGES_OR_DIRS", nargs="+",
                   help="image files and/or folders (searched recursively)")
    p.add_argument("--max-faces", type=int, default=5, help="faces scored per photo (largest)")
    add_json(p)


def run(args: argparse.Namespace) -> int:
    from edge_smw.rank import collect_images, score_photos

    paths = collect_images(args.images)
    with open_runtime(args, max_faces=args.max_faces) as runtime:
        photos = list(score_photos(runtime, paths, progress=not args.json and len(paths) > 1))
        levels = runtime.levels
    if args.json:
        print_json([photo.to_dict() for photo in photos])
        return 0
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
    print(f"{len(photos)} image(s): {sum(len(p.faces) for p in photos)} face(s) scored, "
          f"{no_face} without a face, {unreadable} unreadable; score = expected level 1.."
          f"{len(levels)}")
    return 0
