"""The running service: camera -> newest frame -> scoring -> smoothing -> auto-capture -> viewers.

Threads, so a slow part never holds up a faster one:
  capture   reads the camera into a one-frame slot (older unscored frames are dropped);
  scoring   scores the newest frame, smooths per face, decides captures, publishes results;
  render    draws boxes and scores on the newest scored frame and encodes ONE JPEG for all
            stream viewers (only while someone watches);
  writer    saves captures atomically (in ``AutoCapture``).
Results reach the web side through ``Broadcast``: it keeps only the newest value, and each
viewer/event client waits for "anything newer than what I sent", so a slow viewer skips
frames instead of making anyone wait or queueing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_smw.runtime import Runtime
from edge_smw.serve.capture import AutoCapture, CaptureOptions
from edge_smw.serve.metrics import Registry
from edge_smw.serve.scoring import FaceTracker, ScoredFrame, ScoringThread, SmoothingOptions
from edge_smw.serve.sources import (
    CameraError,
    CaptureThread,
    Frame,
    FrameSlot,
    SourceSpec,
    open_source,
    parse_source,
)

log = logging.getLogger("edge_smw.serve")

BOX_COLOR = (0, 230, 0)  # BGR; the stream's face boxes
TEXT_COLOR = (255, 255, 255)


@dataclass
class ServeOptions:
    model: Path
    camera: str
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    loop: bool = False
    backend: str = "auto"
    threads: int | None = None
    detect: bool = True  # find faces in frames; False: each frame is one face crop
    max_faces: int = 5
    detector: str = "auto"  # the model's own unless told (edge_smw.detect)
    allow_detector_mismatch: bool = False
    smoothing: SmoothingOptions = field(default_factory=SmoothingOptions)
    captures: CaptureOptions | None = None
    wait_for_camera: bool = False
    stream_max_side: int = 960
    stream_quality: int = 80
    history: int = 150  # best smoothed scores kept for the page's sparkline
    max_upload_bytes: int = 10 * 1024 * 1024
    max_upload_pixels: int = 40_000_000
    upload_workers: int = 2
    upload_queue: int = 32  # uploads waiting beyond this get 503 (retry later)
    upload_timeout_s: float = 30.0  # an upload body must arrive within this (else 408)
    stream_write_timeout_s: float = 10.0  # a viewer that takes no frame for this long is dropped


class Broadcast:
    """The newest value plus a sequence number, readable from asyncio without blocking.

    Producer threads ``publish``; coroutines ``await wait_newer(seq)``. Values are never
    queued: a consumer that fell behind simply gets the newest one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self._value: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called from the event loop's thread once it runs."""
        self._loop = loop
        self._event = asyncio.Event()

    def publish(self, value: Any) -> None:
        with self._lock:
            self._seq += 1
            self._value = value
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
                loop.call_soon_threadsafe(self._wake)

    def wake_all(self) -> None:
        """Wake every waiter (shutdown), without a new value."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        event, self._event = self._event, asyncio.Event()
        if event is not None:
            event.set()

    def latest(self) -> tuple[int, Any]:
        with self._lock:
            return self._seq, self._value

    async def wait_newer(self, seq: int, timeout: float) -> tuple[int, Any] | None:
        """The newest (seq, value) after ``seq``; None after ``timeout`` s or a bare wake."""
        current = self.latest()
        if current[0] > seq:
            return current
        event = self._event
        if event is None:
            await asyncio.sleep(timeout)
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        current = self.latest()
        return current if current[0] > seq else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Service:
    """Owns the runtime, the threads and the shared state the web app reads."""

    def __init__(self, options: ServeOptions, runtime: Runtime | None = None) -> None:
        self.options = options
        self.spec: SourceSpec = parse_source(options.camera, width=options.width,
                                             height=options.height, fps=options.fps,
                                             loop=options.loop)
        self.runtime = runtime or Runtime(
            options.model, backend=options.backend, threads=options.threads,
            detect_faces=options.detect, max_faces=options.max_faces,
            detector=options.detector,
            allow_detector_mismatch=options.allow_detector_mismatch)
        self.levels = self.runtime.levels
        self.model_info = {
            "file": self.runtime.path.name,
            "sha256": file_sha256(self.runtime.path),
            "backend": self.runtime.backend,
            "precision": self.runtime.info.precision,
            "backbone": self.runtime.info.backbone,
            "levels": list(self.levels),
        }
        self.started = time.time()
        self.stopping = threading.Event()
        self._build_metrics()
        self.slot = FrameSlot()
        self.events = Broadcast()  # JSON text per scored frame
        self.stream = Broadcast()  # JPEG bytes per rendered frame
        self._latest: dict[str, Any] | None = None
        self._latest_lock = threading.Lock()
        self._history: deque[tuple[int, float | None]] = deque(maxlen=options.history)
        self._render_cond = threading.Condition()
        self._render_item: ScoredFrame | None = None
        self._render_seq = 0
        self.viewers = 0  # MJPEG clients; the render thread encodes only while > 0
        self.capture: AutoCapture | None = None
        if options.captures is not None:
            self.set_capture(options.captures)
        self.tracker = FaceTracker(options.smoothing, len(self.levels))
        self.capture_thread: CaptureThread | None = None
        self.scoring_thread: ScoringThread | None = None
        self.render_thread = threading.Thread(target=self._render_loop, name="edge-smw-render",
                                              daemon=True)
        self._last_capture: dict[str, Any] | None = None

    # -- metrics ---------------------------------------------------------------------------
    def _build_metrics(self) -> None:
        r = self.metrics = Registry()
        self.m_captured = r.counter("edge_smw_frames_captured_total",
                                    "Frames read from the camera.")
        self.m_scored = r.counter("edge_smw_frames_scored_total", "Frames scored.")
        self.m_dropped = r.counter(
            "edge_smw_frames_dropped_total",
            "Frames replaced by a newer one before they were scored (scoring slower than the "
            "camera).")
        self.m_faces = r.counter("edge_smw_faces_scored_total", "Faces scored in camera frames.")
        self.m_score_errors = r.counter("edge_smw_scoring_errors_total",
                                        "Camera frames whose scoring failed.")
        self.m_stage = r.histogram("edge_smw_stage_latency_seconds",
                                   "Per-stage latency of scoring one camera frame.", ["stage"])
        self.m_age = r.histogram("edge_smw_frame_latency_seconds",
                                 "Camera capture to scored result, per scored frame.")
        self.m_captures = r.counter("edge_smw_captures_total", "Auto-captures saved.")
        self.m_capture_skipped = r.counter(
            "edge_smw_captures_skipped_total",
            "Auto-captures triggered but not saved, by reason.", ["reason"])
        self.m_capture_write_errors = r.counter(
            "edge_smw_capture_write_errors_total",
            "Failed attempts to save a capture (disk full, read-only, removed); each is "
            "retried.")
        self.m_capture_storage_up = r.gauge(
            "edge_smw_capture_storage_up",
            "1 while the captures folder can be written (or auto-capture is off), else 0.",
            read=lambda: 0.0 if self.capture is not None and not self.capture.writable
            else 1.0)
        self.m_camera_up = r.gauge(
            "edge_smw_camera_up", "1 while the camera delivers frames, else 0.",
            read=lambda: 1.0 if self.camera_state() == "live" else 0.0)
        self.m_lost = r.counter("edge_smw_camera_lost_total", "Times the camera was lost.")
        self.m_reconnects = r.counter("edge_smw_camera_reconnects_total",
                                      "Times a lost camera was opened again.")
        self.m_viewers = r.gauge("edge_smw_stream_viewers", "Open /stream.mjpg clients.",
                                 read=lambda: float(self.viewers))
        self.m_event_clients = r.gauge("edge_smw_event_clients", "Open /api/events clients.")
        self.m_stream_sent = r.counter("edge_smw_stream_frames_sent_total",
                                       "JPEG frames sent to stream viewers (all viewers).")
        self.m_stream_skipped = r.counter(
            "edge_smw_stream_frames_skipped_total",
            "Frames a stream viewer skipped because it was slower than scoring.")
        self.m_render = r.histogram("edge_smw_render_latency_seconds",
                                    "Drawing and JPEG-encoding one stream frame.")
        self.m_requests = r.counter("edge_smw_score_requests_total",
                                    "POST /api/score requests by HTTP status.", ["code"])
        self.m_request_latency = r.histogram("edge_smw_score_request_latency_seconds",
                                             "POST /api/score: decode and score an upload.")

    # -- lifecycle -------------------------------------------------------------------------
    def set_capture(self, options: CaptureOptions) -> None:
        """Turn auto-capture on (before ``start``; the threshold may depend on the levels)."""
        self.options.captures = options
        self.capture = AutoCapture(
            options, model=self.model_info, source=self.spec.raw, levels=self.levels,
            on_saved=self._on_capture_saved,
            on_skipped=lambda reason: self.m_capture_skipped.inc(reason=reason),
            on_write_error=self.m_capture_write_errors.inc,
        )

    def start(self) -> None:
        """Open the camera (or wait for it) and start the threads.

        Raises ``CameraError`` naming the source when it cannot be opened and
        ``wait_for_camera`` is off.
        """
        source = None
        try:
            source = open_source(self.spec)
        except CameraError:
            if not self.options.wait_for_camera:
                raise
            log.warning("camera %s not available yet; waiting for it (--wait-for-camera)",
                        self.spec.raw)
        self.capture_thread = CaptureThread(self.spec, self.slot, source=source,
                                            on_frame=self._on_frame, on_event=self._on_camera)
        self.scoring_thread = ScoringThread(self.runtime, self.slot, self.tracker,
                                            self._on_scored,
                                            on_error=lambda exc: self.m_score_errors.inc())
        if self.capture is not None:
            self.capture.start()
        self.render_thread.start()
        self.scoring_thread.start()
        self.capture_thread.start()
        log.info("serving %s with %s (%s, levels %s)", self.spec.describe(),
                 self.runtime.path, self.runtime.backend, ", ".join(self.levels))

    def stop(self) -> None:
        """Stop capture, let scoring finish its frame, write captures in flight, release."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        if self.capture_thread is not None:
            self.capture_thread.stop()
            self.capture_thread.join(timeout=15)
        self.slot.close()
        if self.scoring_thread is not None:
            self.scoring_thread.stop()
            self.scoring_thread.join(timeout=30)
        with self._render_cond:
            self._render_cond.notify_all()
        if self.render_thread.is_alive():
            self.render_thread.join(timeout=5)
        if self.capture is not None:
            self.capture.close()
            log.info("auto-capture: %d saved this run", self.capture.saved)
        self.events.wake_all()
        self.stream.wake_all()
        self.runtime.close()

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self.events.bind(loop)
        self.stream.bind(loop)

    # -- camera and scoring callbacks (capture/scoring threads) ----------------------------
    def _on_frame(self, frame: Frame, dropped: bool) -> None:
        self.m_captured.inc()
        if dropped:
            self.m_dropped.inc()

    def _on_camera(self, event: str) -> None:
        if event == "lost":
            self.m_lost.inc()
            with self._render_cond:  # let the render thread show it to viewers
                self._render_cond.notify_all()
        elif event == "reconnected":
            self.m_reconnects.inc()

    def _on_scored(self, scored: ScoredFrame) -> None:
        self.m_scored.inc()
        self.m_faces.inc(len(scored.faces))
        for stage, ms in scored.timings.items():
            self.m_stage.observe(ms / 1000.0, stage=stage)
        self.m_age.observe(max(0.0, time.monotonic() - scored.frame.monotonic))
        if self.capture is not None:
            self.capture.observe(scored)
        best = scored.best
        data = scored.to_dict(self.levels)
        data["levels"] = list(self.levels)
        data["captures"] = self.capture.count if self.capture is not None else None
        data["last_capture"] = self._last_capture["name"] if self._last_capture else None
        with self._latest_lock:
            self._history.append((scored.frame.number,
                                  None if best is None else round(best.smoothed_score, 4)))
            self._latest = data
        self.events.publish(json.dumps(data, separators=(",", ":")))
        with self._render_cond:
            self._render_item = scored
            self._render_seq += 1
            self._render_cond.notify_all()

    def _on_capture_saved(self, entry: dict[str, Any]) -> None:
        self.m_captures.inc()
        self._last_capture = entry

    # -- rendering (render thread) ---------------------------------------------------------
    def _render_loop(self) -> None:
        done = 0  # the last scored frame looked at
        shown: tuple[int, str] = (0, "")  # (scored frame, camera state) last published
        while not self.stopping.is_set():
            with self._render_cond:
                if self._render_seq == done:
                    self._render_cond.wait(timeout=0.5)
                item, seq = self._render_item, self._render_seq
            done = seq
            if self.viewers <= 0 or item is None:
                continue  # nobody watches: encode nothing
            state = self.camera_state()
            if (seq, state) == shown:
                continue  # nothing new to show
            t0 = time.perf_counter()
            jpeg = self.render(item, state)
            self.m_render.observe(time.perf_counter() - t0)
            if jpeg is not None:
                self.stream.publish(jpeg)
            shown = (seq, state)

    def render(self, scored: ScoredFrame, state: str = "live") -> bytes | None:
        """The stream frame: boxes, smoothed level and score per face, camera state banner."""
        image = scored.frame.image
        h, w = image.shape[:2]
        scale = min(1.0, self.options.stream_max_side / max(h, w))
        if scale < 1.0:
            canvas = cv2.resize(image, (round(w * scale), round(h * scale)),
                                interpolation=cv2.INTER_AREA)
        else:
            canvas = image.copy()
        thick = max(2, round(canvas.shape[1] / 320))
        font = max(0.5, canvas.shape[1] / 1000)
        for face in scored.faces:
            if face.face.box is None:
                continue
            x, y, bw, bh = (round(v * scale) for v in face.face.box)
            cv2.rectangle(canvas, (x, y), (x + bw, y + bh), BOX_COLOR, thick)
            label = f"{self.levels[face.smoothed_level]} {face.smoothed_score:.2f}"
            (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
            ty = max(th + base + 2, y - 4)
            cv2.rectangle(canvas, (x, ty - th - base - 2), (x + tw + 4, ty + 2), BOX_COLOR, -1)
            cv2.putText(canvas, label, (x + 2, ty - base), cv2.FONT_HERSHEY_SIMPLEX, font,
                        (0, 0, 0), 1, cv2.LINE_AA)
        if state != "live":
            canvas = (canvas * 0.4).astype(np.uint8)
            text = f"camera {state}"
            cv2.putText(canvas, text, (10, canvas.shape[0] // 2), cv2.FONT_HERSHEY_SIMPLEX,
                        font * 1.5, TEXT_COLOR, 2, cv2.LINE_AA)
        ok, buf = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY,
                                                self.options.stream_quality])
        return buf.tobytes() if ok else None

    # -- reads for the web side ------------------------------------------------------------
    def camera_state(self) -> str:
        if self.capture_thread is None:
            return "starting"
        return self.capture_thread.status_dict()["state"]

    def latest(self) -> dict[str, Any]:
        with self._latest_lock:
            data = dict(self._latest) if self._latest else {
                "time": None, "frame": None, "faces": [], "best": None,
                "levels": list(self.levels),
            }
            data["history"] = [[n, s] for n, s in self._history]
        data["camera"] = self.camera_state()
        return data

    def health(self) -> tuple[bool, dict[str, Any]]:
        camera = (self.capture_thread.status_dict() if self.capture_thread is not None
                  else {"source": self.spec.raw, "state": "starting"})
        with self._latest_lock:
            last = self._latest
        storage_ok = self.capture is None or self.capture.writable
        ok = camera["state"] == "live" and storage_ok and not self.stopping.is_set()
        return ok, {
            "status": "ok" if ok else "degraded",
            "camera": camera,
            "last_scored_frame": last["frame"] if last else None,
            "last_scored_age_s": round(time.time() - last["scored_at"], 3) if last else None,
            "uptime_s": round(time.time() - self.started, 3),
            "model": {k: self.model_info[k] for k in ("file", "sha256", "backend", "levels")},
            "captures": None if self.capture is None else {
                "folder": str(self.capture.folder), "count": self.capture.count,
                "saved_this_run": self.capture.saved,
                "state": "ok" if storage_ok else "unwritable",
                "last_error": self.capture.write_error,
            },
        }

    def score_image(self, image: np.ndarray) -> dict[str, Any]:
        """Score one uploaded image (any thread); no tracking, no capture."""
        data = self.runtime.score(image).to_dict()
        data["levels"] = list(self.levels)
        data["model"] = {"file": self.model_info["file"], "sha256": self.model_info["sha256"]}
        return data
