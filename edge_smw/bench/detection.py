"""A face-detection test set built from real face crops, and recall / precision per condition.

No labelled detection set ships in a package, so one is built with ground truth known by
construction: real face crops (e.g. SMILEsmileD's 64x64 tight grey crops) are pasted into
640x480 grey scenes of procedural clutter (gradients, texture, shapes: things a detector
might take for a face) at several scales, rotated in-plane, under lighting changes, several
per frame, plus frames with no face at all. The crop's square is the true box; a detection
matches a true box when their IoU is at least ``MATCH_IOU`` (each used once, best pairs
first). Deterministic for a seed; nothing here imports torch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from edge_smw.bench.results import (
    DetectionCounts,
    DetectionOverall,
    DetectionRow,
    DetectionSection,
    DetectTiming,
    FrameSize,
)
from edge_smw.contract import Box, DetectorSpec, retry_sizes
from edge_smw.detect.base import FaceDetector
from edge_smw.detect.nms import iou_matrix
from edge_smw.errors import InputError
from edge_smw.images import read_image

FRAME_W, FRAME_H = 640, 480
MATCH_IOU = 0.4  # a found box counts when it overlaps a true face by at least this IoU

# condition -> (faces per frame, face side range in pixels, rotation range in degrees, light)
CONDITIONS: dict[str, tuple[int, tuple[int, int], float, str]] = {
    "small (40-56 px)": (1, (40, 56), 0.0, "normal"),
    "medium (80-140 px)": (1, (80, 140), 0.0, "normal"),
    "large (180-300 px)": (1, (180, 300), 0.0, "normal"),
    "rotated 10-20 deg": (1, (90, 150), 20.0, "normal"),
    "rotated 20-30 deg": (1, (90, 150), 30.0, "normal"),
    "dark": (1, (80, 160), 0.0, "dark"),
    "bright": (1, (80, 160), 0.0, "bright"),
    "side light": (1, (80, 160), 0.0, "side"),
    "several faces (3-4)": (4, (64, 120), 0.0, "normal"),
    "no face": (0, (0, 0), 0.0, "normal"),
}


@dataclass
class DetectionFrame:
    image: np.ndarray  # H x W x 3 uint8 BGR (grey content)
    boxes: list[Box]  # true faces
    condition: str


def background(rng: np.random.Generator) -> np.ndarray:
    """A grey 640x480 scene: a gradient, two scales of texture and a few shapes and lines."""
    yy, xx = np.mgrid[0:FRAME_H, 0:FRAME_W].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    base = rng.uniform(70, 170) + rng.uniform(20, 60) * (
        np.cos(angle) * xx / FRAME_W + np.sin(angle) * yy / FRAME_H)
    coarse = cv2.resize(rng.normal(0, 30, (12, 16)).astype(np.float32), (FRAME_W, FRAME_H),
                        interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.normal(0, 18, (FRAME_H, FRAME_W)).astype(np.float32), (0, 0),
                            rng.uniform(1.0, 2.5))
    scene = base + coarse + fine
    for _ in range(int(rng.integers(4, 10))):
        value = float(rng.uniform(20, 235))
        x, y = int(rng.integers(0, FRAME_W)), int(rng.integers(0, FRAME_H))
        a, b = int(rng.integers(10, 120)), int(rng.integers(10, 120))
        shape = int(rng.integers(0, 3))
        if shape == 0:
            cv2.rectangle(scene, (x, y), (x + a, y + b), value, -1)
        elif shape == 1:
            cv2.ellipse(scene, (x, y), (a // 2, b // 2), float(rng.uniform(0, 180)), 0, 360,
                        value, -1)
        else:
            cv2.line(scene, (x, y), (x + a * 3, y + b * 2), value, int(rng.integers(2, 9)))
    scene = cv2.GaussianBlur(scene, (0, 0), 1.0)
    return np.clip(scene, 0, 255).astype(np.uint8)


def _light(face: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    f = face.astype(np.float32)
    if kind == "dark":  # under-exposed: a quarter to a third of the light, and a gamma
        f = 255.0 * (f / 255.0) ** rng.uniform(1.3, 1.7) * rng.uniform(0.25, 0.35)
    elif kind == "bright":  # over-exposed and washed out
        f = 255.0 * (f / 255.0) ** rng.uniform(0.45, 0.6) * 0.9 + rng.uniform(25, 45)
    elif kind == "side":  # light from one side: one half of the face at 25-35%
        ramp = np.linspace(rng.uniform(0.25, 0.35), 1.0, f.shape[1], dtype=np.float32)
        f = f * (ramp if rng.random() < 0.5 else ramp[::-1])[None, :]
    return np.clip(f, 0, 255)


def _paste(scene: np.ndarray, face: np.ndarray, x: int, y: int, angle: float) -> None:
    """Put the face (float grey, side x side) at (x, y), rotated about its centre."""
    side = face.shape[0]
    matrix = cv2.getRotationMatrix2D((side / 2.0, side / 2.0), angle, 1.0)
    matrix[:, 2] += (x, y)
    size = (FRAME_W, FRAME_H)
    warped = cv2.warpAffine(face, matrix, size, flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.ones_like(face), matrix, size, flags=cv2.INTER_LINEAR)
    scene[:] = scene * (1 - mask) + warped * mask


def _place(rng: np.random.Generator, side: int, taken: list[Box]) -> tuple[int, int] | None:
    margin = int(side * 0.25)  # room for the rotated corners
    for _ in range(50):
        x = int(rng.integers(margin, max(margin + 1, FRAME_W - side - margin)))
        y = int(rng.integers(margin, max(margin + 1, FRAME_H - side - margin)))
        box = (x - margin, y - margin, side + 2 * margin, side + 2 * margin)
        if all(_disjoint(box, other) for other in taken):
            return x, y
    return None


def _disjoint(a: Box, b: Box) -> bool:
    return (a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1]
            or b[1] + b[3] <= a[1])


def build_detection_set(crops: Sequence[np.ndarray], *, per_condition: int = 40, seed: int = 0,
                        conditions: Sequence[str] | None = None) -> list[DetectionFrame]:
    """``per_condition`` frames per condition from face crops (uint8 grey or BGR)."""
    if len(crops) == 0:
        raise InputError("the detection set needs face crops; none were given")
    names = list(conditions) if conditions is not None else list(CONDITIONS)
    unknown = sorted(set(names) - set(CONDITIONS))
    if unknown:
        raise InputError(f"unknown detection condition(s) {unknown}; choose from "
                         f"{list(CONDITIONS)}")
    grey = [c if c.ndim == 2 else cv2.cvtColor(c, cv2.COLOR_BGR2GRAY) for c in crops]
    rng = np.random.default_rng(seed)
    frames = []
    for name in names:
        count, (low, high), max_angle, light = CONDITIONS[name]
        for _ in range(per_condition):
            scene = background(rng).astype(np.float32)
            boxes: list[Box] = []
            taken: list[Box] = []
            for _ in range(count):
                side = int(rng.integers(low, high + 1))
                spot = _place(rng, side, taken)
                if spot is None:
                    continue
                x, y = spot
                crop = grey[int(rng.integers(0, len(grey)))]
                interp = cv2.INTER_AREA if side < crop.shape[0] else cv2.INTER_CUBIC
                face = cv2.resize(crop, (side, side), interpolation=interp).astype(np.float32)
                face = _light(face, light, rng)
                angle = 0.0
                if max_angle:
                    angle = float(rng.uniform(max_angle - 10, max_angle)) * rng.choice([-1, 1])
                _paste(scene, face, x, y, angle)
                boxes.append((x, y, side, side))
                margin = int(side * 0.25)
                taken.append((x - margin, y - margin, side + 2 * margin, side + 2 * margin))
            image = cv2.cvtColor(np.clip(scene, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
            frames.append(DetectionFrame(image, boxes, name))
    return frames


def load_face_crops(folder: str | Path, limit: int = 400, seed: int = 0) -> list[np.ndarray]:
    """Up to ``limit`` face crops (any image files under ``folder``), picked by seed."""
    folder = Path(folder)
    paths = sorted(p for p in folder.rglob("*")
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    if not paths:
        raise InputError(f"no face crops (jpg/png) under {folder}; point at a folder of "
                         "tight face crops, e.g. ../shared/data/smilesmiled")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(paths), size=min(limit, len(paths)), replace=False)
    return [read_image(paths[i]) for i in sorted(chosen)]


def _to_xyxy(boxes: Sequence[Box]) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([arr[:, :2], arr[:, :2] + arr[:, 2:]], axis=1)


def match(truth: Sequence[Box], found: Sequence[Box],
          min_iou: float = MATCH_IOU) -> tuple[int, int, list[float]]:
    """(true faces found, false detections, IoU of each match): best pairs first, one-to-one."""
    if not truth or not found:
        return 0, len(found), []
    iou = iou_matrix(_to_xyxy(truth), _to_xyxy(found))
    hits: list[float] = []
    while True:
        t, f = np.unravel_index(int(np.argmax(iou)), iou.shape)
        if iou[t, f] < min_iou:
            break
        hits.append(float(iou[t, f]))
        iou[t, :] = -1.0
        iou[:, f] = -1.0
    return len(hits), len(found) - len(hits), hits


@dataclass
class ConditionResult:
    frames: int = 0
    faces: int = 0
    found: int = 0
    false_positives: int = 0
    ious: list[float] = field(default_factory=list)

    def counts(self) -> DetectionCounts:
        return DetectionCounts(
            frames=self.frames, faces=self.faces, found=self.found,
            recall=round(self.found / self.faces, 4) if self.faces else None,
            false_positives=self.false_positives,
            mean_iou=round(float(np.mean(self.ious)), 3) if self.ious else None)


def evaluate_detectors(detectors: Sequence[FaceDetector], frames: Sequence[DetectionFrame],
                       min_iou: float = MATCH_IOU) -> list[DetectionRow]:
    """Per detector: recall, false positives and precision per condition and overall, and
    detect time per frame. Interleaved: every frame goes through each detector in turn, so
    load drift on a shared machine hits them alike."""
    per: list[dict[str, ConditionResult]] = [{} for _ in detectors]
    times: list[list[float]] = [[] for _ in detectors]
    for frame in frames:
        for i, detector in enumerate(detectors):
            t0 = time.perf_counter()
            found = detector.detect(frame.image)
            times[i].append((time.perf_counter() - t0) * 1000)
            hits, false, ious = match(frame.boxes, [d.box for d in found], min_iou)
            row = per[i].setdefault(frame.condition, ConditionResult())
            row.frames += 1
            row.faces += len(frame.boxes)
            row.found += hits
            row.false_positives += false
            row.ious += ious
    return [_summary(d, rows, t, min_iou) for d, rows, t in zip(detectors, per, times,
                                                                 strict=True)]


def _summary(detector: FaceDetector, per: dict[str, ConditionResult], times: list[float],
             min_iou: float) -> DetectionRow:
    total = ConditionResult()
    for row in per.values():
        total.frames += row.frames
        total.faces += row.faces
        total.found += row.found
        total.false_positives += row.false_positives
        total.ious += row.ious
    detections = total.found + total.false_positives
    overall = DetectionOverall(
        **vars(total.counts()),
        precision=round(total.found / detections, 4) if detections else None)
    timing = None
    if times:
        p50, p90 = np.percentile(times, [50, 90])
        timing = DetectTiming(p50=round(float(p50), 3), p90=round(float(p90), 3))
    return DetectionRow(detector=detector.spec.describe(), name=detector.name,
                        backend=detector.backend, match_iou=min_iou,
                        conditions={k: v.counts() for k, v in per.items()}, overall=overall,
                        detect_ms=timing)


def detection_section(crops: Sequence[np.ndarray], frames: Sequence[DetectionFrame],
                      per_condition: int, rows: list[DetectionRow]) -> DetectionSection:
    """The bench's detection section: the set's description beside each detector's row."""
    return DetectionSection(frames=len(frames), per_condition=per_condition, crops=len(crops),
                            match_iou=MATCH_IOU, frame=FrameSize(FRAME_W, FRAME_H),
                            conditions=list(CONDITIONS), rows=rows)


def parse_detector(text: str) -> DetectorSpec:
    """``name[@SIZE][>RETRY...]`` (the form ``DetectorSpec.describe`` writes) -> a spec, so
    one run can compare settings of one detector: ``blazeface-short>576`` is the default
    detector with a single closer retry, ``blazeface-short@256>0`` one look at 256."""
    from edge_smw.detect import resolve_spec

    name, *retries = text.strip().split(">")
    name, _, size = name.partition("@")
    try:
        input_size = int(size) if size else None
        retry = tuple(int(r) for r in retries)
    except ValueError:
        raise InputError(f"detector {text!r}: write name[@SIZE][>RETRY...], e.g. "
                         "blazeface-short@320>192>576") from None
    spec = resolve_spec(name.strip())
    if input_size is None and not retries:
        return spec
    return replace(spec, input_size=input_size,
                   retry_sizes=retry_sizes(retry) if retries else spec.retry_sizes)


def run_detection_set(crops_dir: str | Path, detectors: Sequence[str | DetectorSpec], *,
                      per_condition: int = 40, seed: int = 0, limit: int = 400,
                      threads: int | None = None) -> DetectionSection:
    """Build the set from a folder of face crops and evaluate each named detector (the same
    section ``edge-smw bench`` writes, without needing a model)."""
    from edge_smw.detect import open_detector

    crops = load_face_crops(crops_dir, limit=limit, seed=seed)
    frames = build_detection_set(crops, per_condition=per_condition, seed=seed)
    opened: list[FaceDetector] = []
    try:
        for name in detectors:
            spec = parse_detector(name) if isinstance(name, str) else name
            opened.append(open_detector(spec, backend="onnxruntime-cpu", threads=threads,
                                        options={"allow_spinning": False}))
        rows = evaluate_detectors(opened, frames)
    finally:
        for detector in opened:
            detector.close()
    return detection_section(crops, frames, per_condition, rows)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m edge_smw.bench.detection CROPS_DIR``: the detection table as Markdown."""
    import argparse
    import json

    from edge_smw.bench.report import detection_markdown

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("crops_dir", help="folder of tight face crops (searched recursively)")
    parser.add_argument("--detectors", default="haar,blazeface-short",
                        help="comma-separated, each name[@SIZE][>RETRY...], e.g. "
                             "'haar,blazeface-short,blazeface-short>576'")
    parser.add_argument("--per-condition", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="also write the section as JSON to this file")
    args = parser.parse_args(argv)
    section = run_detection_set(args.crops_dir, [d.strip() for d in args.detectors.split(",")],
                                per_condition=args.per_condition, seed=args.seed,
                                threads=args.threads)
    if args.json:
        from edge_smw.atomic import write_text

        write_text(Path(args.json), json.dumps(section.to_dict(), indent=2))
    print("\n".join(detection_markdown(section)))


if __name__ == "__main__":
    main()
