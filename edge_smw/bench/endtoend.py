"""End-to-end frame rate: JPEG frame -> decode -> detect -> crop -> preprocess -> infer.

The frame is synthetic but honest: a 640x480 scene with a real face crop from the labelled
set pasted in at a size a doorway camera would see, JPEG-encoded once like an MJPEG camera
delivers it, and decoded on every frame. Timed two ways:
- single-threaded: one loop does every stage in turn (``Runtime.score``);
- pipelined: a capture thread decodes, detects and crops the next frame while an inference
  thread preprocesses and scores the previous one (``Runtime.score_batch``), with a queue of
  two frames between them, which is how a camera loop uses two cores.
Configurations (mode x face detector) run interleaved, a few frames each in turn, like the
latency section; each detector is the Runtime's own (``Runtime.detector``).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge_smw.bench.results import ModeTiming, StageTiming
from edge_smw.detect import FaceDetector

FRAME_W, FRAME_H = 640, 480
FACE_SIDE = 200  # pixels: a face a couple of metres from a wide-angle camera


def make_frame(crop_bgr: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 640x480 BGR scene (smooth background, some texture) with the face pasted in."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:FRAME_H, 0:FRAME_W].astype(np.float32)
    base = np.stack([90 + 60 * xx / FRAME_W, 110 + 40 * yy / FRAME_H,
                     140 - 50 * xx / FRAME_W], axis=-1)
    noise = cv2.GaussianBlur(rng.normal(0, 25, (FRAME_H, FRAME_W, 3)).astype(np.float32),
                             (0, 0), 3)
    frame = np.clip(base + noise, 0, 255).astype(np.uint8)
    face = cv2.resize(crop_bgr, (FACE_SIDE, FACE_SIDE), interpolation=cv2.INTER_CUBIC)
    y0, x0 = (FRAME_H - FACE_SIDE) // 2, (FRAME_W - FACE_SIDE) // 2 + 60
    frame[y0 : y0 + FACE_SIDE, x0 : x0 + FACE_SIDE] = face
    return frame


def pick_frame(crops_bgr: list[np.ndarray], detectors: list[FaceDetector],
               tries: int = 50) -> tuple[np.ndarray, int]:
    """The first crop whose frame every detector finds a face in once JPEG-encoded and decoded
    as the rows see it (else the first; the report says so), so each detector's row times
    the same, complete, work."""
    for i, crop in enumerate(crops_bgr[:tries]):
        frame = make_frame(crop, seed=i)
        seen = cv2.imdecode(np.frombuffer(encode_frame(frame), np.uint8), cv2.IMREAD_COLOR)
        if all(d.detect(seen, max_faces=1) for d in detectors):
            return frame, i
    return make_frame(crops_bgr[0]), -1


def _stats(values: list[float]) -> StageTiming | None:
    if not values:
        return None
    arr = np.asarray(values)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return StageTiming(p50_ms=round(float(p50), 4), p90_ms=round(float(p90), 4),
                       p99_ms=round(float(p99), 4), mean_ms=round(float(arr.mean()), 4))


@dataclass
class Chunk:
    """Raw timings of a few consecutive frames in one configuration."""

    frames: int
    seconds: float  # wall time of the measured frames (throughput = frames / seconds)
    found: int  # frames where a face was found
    stages: dict[str, list[float]]  # milliseconds per frame and stage


def single_threaded(runtime: Any, jpeg: bytes, frames: int, warmup: int = 1) -> Chunk:
    """Every stage in one loop: what a camera loop does per frame without pipelining."""
    data = np.frombuffer(jpeg, dtype=np.uint8)
    stages: dict[str, list[float]] = {"decode": [], "detect": [], "preprocess": [], "infer": [],
                                      "total": []}
    found = 0
    for i in range(warmup + frames):
        t0 = time.perf_counter()
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
        t1 = time.perf_counter()
        result = runtime.score(image)
        t2 = time.perf_counter()
        if i < warmup:
            continue
        found += bool(result.faces)
        stages["decode"].append((t1 - t0) * 1000)
        stages["detect"].append(result.timings["detect"])  # detection + crop (+ align)
        stages["preprocess"].append(result.timings["preprocess"])
        stages["infer"].append(result.timings["infer"])
        stages["total"].append((t2 - t0) * 1000)
    return Chunk(frames, sum(stages["total"]) / 1000, found, stages)


def pipelined(runtime: Any, jpeg: bytes, frames: int, warmup: int = 1) -> Chunk:
    """Capture thread (decode, detect, crop) feeding an inference thread (preprocess, infer)."""
    warmup = max(1, warmup)  # the first frame fills the pipeline
    data = np.frombuffer(jpeg, dtype=np.uint8)
    contract = runtime.contract
    handoff: queue.Queue[Any] = queue.Queue(maxsize=2)
    capture_ms: list[float] = []
    detect_ms: list[float] = []
    infer_ms: list[float] = []
    stamps: list[float] = []
    found = [0]
    errors: list[BaseException] = []
    total = warmup + frames

    def capture() -> None:
        try:
            for _ in range(total):
                t0 = time.perf_counter()
                image = cv2.imdecode(data, cv2.IMREAD_COLOR)
                t1 = time.perf_counter()
                found = runtime.detector.detect(image, max_faces=runtime.max_faces)
                crops = [contract.crop_face(image, d.box, d.eyes) for d in found]
                t2 = time.perf_counter()
                capture_ms.append((t2 - t0) * 1000)
                detect_ms.append((t2 - t1) * 1000)
                handoff.put(crops)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            handoff.put(None)

    def infer() -> None:
        try:
            while (crops := handoff.get()) is not None:
                t0 = time.perf_counter()
                faces = runtime.score_batch(crops) if crops else []
                infer_ms.append((time.perf_counter() - t0) * 1000)
                if len(stamps) >= warmup:  # measured frames only, as the span below
                    found[0] += bool(faces)
                stamps.append(time.perf_counter())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=capture, name="bench-capture", daemon=True),
               threading.Thread(target=infer, name="bench-infer", daemon=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    # Throughput over the measured frames only: from the last warm-up frame's completion.
    span = stamps[-1] - stamps[warmup - 1] if len(stamps) > warmup else 0.0
    return Chunk(frames, span, found[0], {"capture (decode+detect+crop)": capture_ms[warmup:],
                                          "detect": detect_ms[warmup:],
                                          "infer (preprocess+infer)": infer_ms[warmup:]})


MODES = {"single-threaded": single_threaded, "pipelined": pipelined}


def interleaved(configs: list[tuple[str, Any]], jpeg: bytes, frames: int,
                rounds: int) -> list[ModeTiming]:
    """Run every (mode, runtime) configuration in turn, ``frames / rounds`` frames at a time,
    so load drift hits every configuration alike (as the latency section does per call)."""
    rounds = max(1, min(rounds, frames))
    per = [frames // rounds + (1 if r < frames % rounds else 0) for r in range(rounds)]
    chunks: list[list[Chunk]] = [[] for _ in configs]
    for n in per:
        for i, (mode, runtime) in enumerate(configs):
            chunks[i].append(MODES[mode](runtime, jpeg, n))
    out = []
    for (mode, _), parts in zip(configs, chunks, strict=True):
        seconds = sum(c.seconds for c in parts)
        done = sum(c.frames for c in parts)
        stages: dict[str, list[float]] = {}
        for c in parts:
            for k, v in c.stages.items():
                stages.setdefault(k, []).extend(v)
        out.append(ModeTiming(
            mode=mode, frames=done, rounds=rounds,
            fps=round(done / seconds, 2) if seconds > 0 else None,
            faces_found_rate=sum(c.found for c in parts) / done if done else None,
            stages={k: _stats(v) for k, v in stages.items()}))
    return out


def encode_frame(frame: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 BGR frame
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()
