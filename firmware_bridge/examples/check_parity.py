"""`make -C firmware_bridge check`: the C bridge must score exactly like the Python Runtime.

Makes frames in every pixel format (rows padded to an odd stride, as camera drivers do) from
an image, runs the example firmware loop on them, scores the same images with
``edge_smw.Runtime`` in this process, and exits 1 if any face, level or probability differs.

    python examples/check_parity.py --example build/edge_smw_example --model model.onnx \
        [--image face.jpg [other.jpg ...]] [--tolerance 1e-9]

Without --image the frame is a made-up gradient scene (scored whole, detection off); with
images, the first is also scored whole, and the first in which the model's detector finds a
face (tried at several sizes in a 320x240 frame) is scored with detection on.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from edge_smw import Runtime
from edge_smw.bridge import PIXEL_FORMATS, encode_frame
from edge_smw.images import read_image

# OpenCV's own decoding of each camera layout: the reference the bridge must equal.
_DECODE = {"bgr24": None, "rgb24": cv2.COLOR_RGB2BGR, "gray8": cv2.COLOR_GRAY2BGR,
           "yuyv": cv2.COLOR_YUV2BGR_YUYV, "nv12": cv2.COLOR_YUV2BGR_NV12}
_CHANNELS = {"bgr24": 3, "rgb24": 3, "gray8": 1, "yuyv": 2, "nv12": 1}


def padded_stride(width: int, fmt: str) -> int:
    """Row bytes plus an odd amount of padding, so stride handling is exercised."""
    return width * _CHANNELS[fmt] + 13


def reference_image(data: bytes, width: int, height: int, fmt: str, stride: int) -> np.ndarray:
    """Decode one frame with plain OpenCV (independent of edge_smw.bridge)."""
    rows = height + height // 2 if fmt == "nv12" else height
    plane = np.frombuffer(data, np.uint8).reshape(rows, stride)[:, : width * _CHANNELS[fmt]]
    if fmt in ("bgr24", "rgb24", "yuyv"):
        plane = plane.reshape(rows, width, _CHANNELS[fmt])
    plane = np.ascontiguousarray(plane)
    return plane if _DECODE[fmt] is None else cv2.cvtColor(plane, _DECODE[fmt])


def parse_example(text: str) -> dict[int, list[dict]]:
    """The example's stdout -> {frame: [faces]}."""
    frames: dict[int, list[dict]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "frame" and parts[2] == "faces":
            frames.setdefault(int(parts[1]), [])
        elif len(parts) >= 4 and parts[0] == "frame" and parts[2] == "face":
            at = parts.index("probs")
            frames.setdefault(int(parts[1]), []).append({
                "box": tuple(int(v) for v in parts[5:9]),
                "level": int(parts[10]),
                "expected": float(parts[parts.index("expected") + 1]),
                "probs": [float(v) for v in parts[at + 1 :]],
            })
    return frames


def compare(c_faces: list[dict], py_faces: list, tolerance: float) -> list[str]:
    """Differences between the bridge's faces and the Runtime's (empty when equal)."""
    if len(c_faces) != len(py_faces):
        return [f"{len(c_faces)} faces from the bridge, {len(py_faces)} from Python"]
    problems = []
    for i, (c, p) in enumerate(zip(c_faces, py_faces, strict=True)):
        if c["box"] != tuple(p.box):
            problems.append(f"face {i}: box {c['box']} != {tuple(p.box)}")
        if c["level"] != p.level:
            problems.append(f"face {i}: level {c['level']} != {p.level}")
        diff = max(abs(a - b) for a, b in zip(c["probs"], p.probabilities, strict=True))
        diff = max(diff, abs(c["expected"] - p.expected_score))
        if len(c["probs"]) != len(p.probabilities) or diff > tolerance:
            problems.append(f"face {i}: probabilities differ by {diff:.3g} (> {tolerance:g})")
    return problems


def run_case(example: Path, model: Path, images: list[np.ndarray], fmt: str, detect: bool,
             runtime: Runtime, tolerance: float, workdir: Path) -> tuple[list[str], int]:
    """Problems found (empty when the bridge equals the Runtime) and the faces compared."""
    height, width = images[0].shape[:2]
    stride = padded_stride(width, fmt)
    frames = [encode_frame(image, fmt, stride) for image in images]
    path = workdir / f"frames.{fmt}"
    path.write_bytes(b"".join(frames))
    cmd = [str(example), "--model", str(model), "--frames", str(path), "--format", fmt,
           "--width", str(width), "--height", str(height), "--stride", str(stride),
           "--threads", "1", "--backend", "onnxruntime-cpu"] + ([] if detect else ["--no-detect"])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return [f"example exited {proc.returncode}: {proc.stderr.strip()}"], 0
    got = parse_example(proc.stdout)
    problems, faces = [], 0
    for index, data in enumerate(frames):
        if index not in got:
            problems.append(f"frame {index}: missing from the example's output")
        expected = runtime.score(reference_image(data, width, height, fmt, stride)).faces
        faces += len(expected)
        problems += [f"frame {index}: {p}" for p in compare(got.get(index, []), expected,
                                                            tolerance)]
    return problems, faces


def made_up_scene(width: int = 96, height: int = 72) -> np.ndarray:
    """A deterministic colour scene (gradients, a disc, noise) for a check without an image."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)],
                     axis=2).astype(np.uint8)
    cv2.circle(image, (width // 2, height // 2), min(width, height) // 3, (40, 160, 220), -1)
    noise = np.random.default_rng(0).integers(0, 24, image.shape, dtype=np.uint8)
    return cv2.add(image, noise)


PASTE_SIDES = (150, 120, 96, 72)


def paste_face(photo: np.ndarray, width: int = 320, height: int = 240,
               side: int = 150) -> np.ndarray:
    """A face photo enlarged to ``side`` pixels in the middle of a frame, its edges extended
    (a plain background around a tight crop hides the face from the Haar detector)."""
    face = cv2.resize(photo, (side, side), interpolation=cv2.INTER_CUBIC)
    top, left = (height - side) // 2, (width - side) // 2
    return cv2.copyMakeBorder(face, top, height - side - top, left, width - side - left,
                              cv2.BORDER_REPLICATE)


def detectable_frame(photos: list[np.ndarray], runtime: Runtime) -> np.ndarray | None:
    """The first photo, pasted at the first size, in which ``runtime`` finds a face (detectors
    differ in the face sizes they see: BlazeFace short-range misses a face filling the frame)."""
    for photo in photos:
        for side in PASTE_SIDES:
            frame = paste_face(photo, side=side)
            if runtime.score(frame).faces:
                return frame
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--image", type=Path, nargs="+", default=[])
    parser.add_argument("--tolerance", type=float, default=1e-9)
    args = parser.parse_args(argv)

    whole = made_up_scene()
    photos = [read_image(path) for path in args.image]
    if photos:
        h, w = photos[0].shape[:2]
        whole = photos[0][: h - h % 2, : w - w % 2]
    cases = [(fmt, False, [whole, np.ascontiguousarray(whole[::-1])]) for fmt in PIXEL_FORMATS]
    runtimes = {d: Runtime(args.model, backend="onnxruntime-cpu", threads=1, detect_faces=d)
                for d in (False, True)}
    if photos:
        frame = detectable_frame(photos, runtimes[True])
        if frame is None:
            print(f"note: the model's detector finds no face in {len(photos)} image(s) at sides "
                  f"{PASTE_SIDES}; the detection cases compare frames without a face")
            frame = paste_face(photos[0])
        cases += [(fmt, True, [frame]) for fmt in ("yuyv", "nv12")]
    failed = 0
    with tempfile.TemporaryDirectory(prefix="edge-smw-check-") as tmp:
        for fmt, detect, images in cases:
            problems, faces = run_case(args.example, args.model, images, fmt, detect,
                                       runtimes[detect], args.tolerance, Path(tmp))
            label = f"{fmt:6s} {'detect' if detect else 'whole frame'}: {faces} faces"
            print(f"{'ok  ' if not problems else 'FAIL'} {label}" +
                  "".join(f"\n     {p}" for p in problems))
            failed += bool(problems)
    print(f"{len(cases) - failed}/{len(cases)} cases equal to the Python Runtime")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
