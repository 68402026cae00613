"""Auto-capture: the camera "knows when to take photos".

When a face's smoothed score stays at or above ``threshold`` for ``min_frames`` consecutive
scored frames, the full-resolution frame is saved with a JSON sidecar saying when, which faces,
their scores and which model (by SHA-256) judged them. A cool-down avoids bursts of the same
moment; a free-disk floor and a maximum file count keep a camera from filling its card; both
are announced once in the log when they start (and stop) holding captures back.

Saving runs in its own writer thread so disk I/O never stalls scoring; every file goes through
``edge_smw.atomic`` (temporary name, then rename), and the sidecar is written last, so a
capture is listed only once its image is complete. Storage that fails (full, remounted
read-only, removed) never stops the writer: it keeps the captures already decided on, retries
with back-off, holds new ones back and reports the folder unwritable (``/healthz``,
``/metrics``) until a write works again, logging once per change of state. Temporary files
left by a crash are swept at start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from edge_smw.atomic import sweep_temp_files, write_bytes, write_json
from edge_smw.errors import InputError
from edge_smw.serve.checks import check_number
from edge_smw.serve.scoring import ScoredFrame

log = logging.getLogger("edge_smw.serve.capture")

# Names this service writes, and the only names /captures/<name> will serve.
CAPTURE_NAME = re.compile(r"^\d{8}-\d{6}-\d{3}-f\d{7,}\.(jpg|json)$")
_WRITE_QUEUE = 8  # captures waiting for the disk; more are skipped (and logged), never queued
# Seconds between attempts to write into a folder that failed (doubling up to the maximum).
RETRY_BACKOFF_S = 0.5
RETRY_BACKOFF_MAX_S = 10.0


@dataclass(frozen=True)
class CaptureOptions:
    folder: Path
    threshold: float
    min_frames: int = 5
    cooldown_s: float = 5.0
    min_free_mb: float = 200.0
    max_count: int = 1000
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        check_capture_settings(min_frames=self.min_frames, cooldown_s=self.cooldown_s,
                               max_count=self.max_count, min_free_mb=self.min_free_mb)
        if not 1 <= self.jpeg_quality <= 100:
            raise InputError(f"JPEG quality must be 1..100, got {self.jpeg_quality}")


def check_capture_settings(*, min_frames: int, cooldown_s: float, max_count: int,
                           min_free_mb: float) -> None:
    """The auto-capture flags, checked whether or not --captures is given: a bad value is a
    typo either way, and saying so before the model loads costs nothing."""
    if min_frames < 1:
        raise InputError(f"--capture-frames must be >= 1, got {min_frames}")
    check_number(cooldown_s, "--cooldown", unit=" seconds")
    if max_count < 1:
        raise InputError(f"--max-captures must be >= 1, got {max_count}")
    check_number(min_free_mb, "--min-free-mb", unit=" MB")


@dataclass
class _Pending:
    name: str
    scored: ScoredFrame
    sidecar: dict[str, Any]


class AutoCapture:
    """Decides when to capture (``observe``, scoring thread) and saves (writer thread)."""

    def __init__(self, options: CaptureOptions, *, model: dict[str, Any], source: str,
                 levels: tuple[str, ...],
                 on_saved: Callable[[dict[str, Any]], None] | None = None,
                 on_skipped: Callable[[str], None] | None = None,
                 on_write_error: Callable[[], None] | None = None) -> None:
        self.options = options
        self.model = model
        self.source = source
        self.levels = levels
        self.on_saved = on_saved
        self.on_skipped = on_skipped
        self.on_write_error = on_write_error  # every failed attempt to save (retries count)
        self.folder = Path(options.folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"--captures {self.folder} is not a folder; choose a folder")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"--captures {self.folder}: cannot create it "
                             f"({exc.strerror or exc}); choose a writable folder") from exc
        if not os.access(self.folder, os.W_OK | os.X_OK):  # EROFS too, even for root
            raise InputError(f"--captures {self.folder}: this user cannot write into it "
                             "(read-only or no permission); choose a writable folder")
        sweep_temp_files(self.folder, _is_capture_name)
        self._streaks: dict[int, int] = {}
        self._last_trigger = float("-inf")
        self._held_back: str | None = None  # the reason captures are held back, logged once
        self._lock = threading.Lock()
        self._recent: deque[dict[str, Any]] = deque(maxlen=200)
        self._count = 0  # captures in the folder
        self._pending = 0  # decided on, not yet written
        self._scan()
        self._queue: queue.Queue[_Pending | None] = queue.Queue(maxsize=_WRITE_QUEUE)
        self._writer = threading.Thread(target=self._write_loop, name="edge-smw-capture-writer",
                                        daemon=True)
        self._closing = threading.Event()
        self._write_error: str | None = None  # why the folder cannot be written, while so
        self.saved = 0
        self.write_errors = 0  # failed attempts (each retry counts)
        self.lost = 0  # decided on but given up at exit because the folder stayed unwritable

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._writer.start()

    def close(self, timeout: float = 30.0) -> None:
        """Finish writing every capture already decided on, then stop the writer.

        While the folder cannot be written, each waiting capture gets one last attempt and
        the ones that still fail are counted in ``lost`` (and logged once), so stopping never
        waits on broken storage.
        """
        self._closing.set()
        if self._writer.is_alive():
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=timeout)
            self._writer.join(timeout)

    @property
    def writable(self) -> bool:
        """False while the last attempt to save into the folder failed."""
        return self._write_error is None

    @property
    def write_error(self) -> str | None:
        return self._write_error

    # -- deciding --------------------------------------------------------------------------
    def observe(self, scored: ScoredFrame) -> str | None:
        """Update per-face streaks; queue a capture when one is long enough. Returns its name."""
        opts = self.options
        streaks = {}
        for face in scored.faces:
            above = face.smoothed_score >= opts.threshold
            streaks[face.track] = self._streaks.get(face.track, 0) + 1 if above else 0
        self._streaks = streaks  # faces not in this frame lose their streak
        if not streaks:
            return None
        trigger_track, streak = max(streaks.items(), key=lambda kv: kv[1])
        if streak < opts.min_frames:
            return None
        now = scored.frame.monotonic  # cool-down between captured moments, not decisions
        if now - self._last_trigger < opts.cooldown_s:
            return None
        if not self.writable:  # the writer already said why, once; count, do not log again
            if self.on_skipped:
                self.on_skipped("unwritable")
            return None
        reason = self._hold_back_reason()
        if reason is not None:
            self._skip(reason[0], reason[1])
            return None
        if self._held_back is not None:
            log.info("auto-capture: saving again (%s no longer applies)", self._held_back)
            self._held_back = None
        name = _capture_name(scored)
        pending = _Pending(name, scored, self._sidecar(name, scored, trigger_track, streak))
        try:
            self._queue.put_nowait(pending)
        except queue.Full:
            self._skip("busy", "the capture writer is still saving earlier frames "
                       "(slow storage?); this one is skipped")
            return None
        self._last_trigger = now
        with self._lock:
            self._pending += 1
        return name

    def _hold_back_reason(self) -> tuple[str, str] | None:
        opts = self.options
        with self._lock:
            count = self._count + self._pending
        if count >= opts.max_count:  # files deleted meanwhile make room again
            count = self._scan(count_only=True) + self._pending
        if count >= opts.max_count:
            return ("max_count", f"{count} captures in {self.folder} reached --max-captures "
                    f"{opts.max_count}; not saving more until some are removed or the limit is "
                    "raised")
        try:
            free_mb = shutil.disk_usage(self.folder).free / 1e6
        except OSError as exc:
            return ("disk", f"cannot check free space in {self.folder} ({exc})")
        if free_mb < opts.min_free_mb:
            return ("disk_floor", f"only {free_mb:.0f} MB free in {self.folder}, below "
                    f"--min-free-mb {opts.min_free_mb:g}; not saving until space is freed")
        return None

    def _skip(self, reason: str, message: str) -> None:
        if self._held_back != reason:
            log.warning("auto-capture held back: %s", message)
            self._held_back = reason
        if self.on_skipped:
            self.on_skipped(reason)

    def _sidecar(self, name: str, scored: ScoredFrame, track: int, streak: int) -> dict[str, Any]:
        frame = scored.frame
        h, w = frame.image.shape[:2]
        return {
            "image": name + ".jpg",
            "time": _iso(frame.time),
            "timestamp": round(frame.time, 6),
            "frame": frame.number,
            "position": frame.position,
            "source": self.source,
            "width": w,
            "height": h,
            "trigger": {"track": track, "consecutive_frames": streak,
                        "threshold": self.options.threshold,
                        "min_frames": self.options.min_frames,
                        "cooldown_s": self.options.cooldown_s},
            "faces": [f.to_dict(self.levels) for f in scored.faces],
            "model": self.model,
        }

    # -- saving ----------------------------------------------------------------------------
    def _write_loop(self) -> None:
        """Save captures in order; a failed one is retried with back-off until it is saved.

        Nothing escapes this loop: a writer that died would leave every later capture
        "busy" for the rest of the run.
        """
        delay = RETRY_BACKOFF_S
        while True:
            pending = self._queue.get()
            if pending is None:
                return
            jpeg = self._encode(pending)
            if jpeg is None:
                continue
            while True:
                try:
                    self._save(pending, jpeg)
                except Exception as exc:  # storage errors of every kind
                    self._failed(pending, exc, delay)
                    if self._closing.is_set():
                        self._give_up(pending)
                        return
                    self._closing.wait(delay)  # close() cuts the wait short: one last try
                    delay = min(delay * 2, RETRY_BACKOFF_MAX_S)
                    continue
                delay = RETRY_BACKOFF_S
                self._recovered()
                break

    def _encode(self, pending: _Pending) -> bytes | None:
        ok, buf = cv2.imencode(".jpg", pending.scored.frame.image,
                               [cv2.IMWRITE_JPEG_QUALITY, self.options.jpeg_quality])
        if ok:
            return buf.tobytes()
        log.error("auto-capture: cannot encode frame %d as JPEG; %s is not saved",
                  pending.scored.frame.number, pending.name)
        with self._lock:
            self._pending -= 1
        if self.on_skipped:
            self.on_skipped("encode_error")
        return None

    def _save(self, pending: _Pending, jpeg: bytes) -> None:
        image_path = self.folder / (pending.name + ".jpg")
        sidecar_path = self.folder / (pending.name + ".json")
        try:
            write_bytes(image_path, jpeg)
            write_json(sidecar_path, pending.sidecar)  # last: a listed capture is complete
        except BaseException:
            with contextlib.suppress(OSError):  # a read-only folder cannot even delete
                image_path.unlink(missing_ok=True)
            raise
        entry = _entry(pending.sidecar, pending.name)
        with self._lock:
            self._recent.append(entry)
            self._pending -= 1
            self._count += 1
            self.saved += 1
        best = entry.get("best_score")
        log.info("auto-capture: saved %s (best smoothed score %s)", image_path, best)
        if self.on_saved:
            self.on_saved(entry)

    def _failed(self, pending: _Pending, exc: BaseException, delay: float) -> None:
        reason = _reason(exc)
        self.write_errors += 1
        if self.on_write_error:
            self.on_write_error()
        if self._write_error is None:  # one line per change of state
            log.error("auto-capture: cannot save into %s (%s); keeping %s and retrying with "
                      "back-off (%.1f..%.0f s); new captures are held back meanwhile",
                      self.folder, reason, pending.name, delay, RETRY_BACKOFF_MAX_S)
        self._write_error = reason

    def _recovered(self) -> None:
        if self._write_error is None:
            return
        self._write_error = None
        log.info("auto-capture: %s is writable again; saving captures", self.folder)
        sweep_temp_files(self.folder, _is_capture_name)  # left by the failed attempts

    def _give_up(self, pending: _Pending) -> None:
        """At exit with the folder still unwritable: one last attempt for each waiting
        capture; count (and log once) the ones that could not be saved."""
        lost = 1
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            jpeg = None if item is None else self._encode(item)
            if item is None or jpeg is None:
                continue
            try:
                self._save(item, jpeg)
            except Exception:
                lost += 1
        with self._lock:
            self._pending -= lost
            self.lost += lost
        if self.on_skipped:
            for _ in range(lost):
                self.on_skipped("write_error")
        log.error("auto-capture: %d capture(s) could not be saved before exit: %s (%s)",
                  lost, self.folder, self._write_error)

    # -- listing ---------------------------------------------------------------------------
    def _scan(self, count_only: bool = False) -> int:
        """Load (or just count) the captures already in the folder, oldest first."""
        try:
            names = sorted(p.name for p in self.folder.iterdir()
                           if CAPTURE_NAME.match(p.name) and p.suffix == ".json")
        except OSError:
            return 0
        if not count_only:
            for name in names[-self._recent.maxlen:] if self._recent.maxlen else names:
                try:
                    sidecar = json.loads((self.folder / name).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue
                if isinstance(sidecar, dict):
                    self._recent.append(_entry(sidecar, name[: -len(".json")]))
        with self._lock:
            self._count = len(names)
        return len(names)

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest ``limit`` saved captures, newest first."""
        with self._lock:
            items = list(self._recent)
        return items[::-1][:limit]

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    def resolve(self, name: str) -> Path | None:
        """The file for a capture name, or None: only this service's own file names."""
        if not CAPTURE_NAME.match(name):
            return None
        path = self.folder / name
        return path if path.is_file() else None


def _is_capture_name(name: str) -> bool:
    return bool(CAPTURE_NAME.match(name))


def _reason(exc: BaseException) -> str:
    """One line for a storage error: the OS's words when there are some."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} [errno {exc.errno}]"
    return str(exc) or type(exc).__name__


def _capture_name(scored: ScoredFrame) -> str:
    t = scored.frame.time
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(t))
    return f"{stamp}-{int((t % 1) * 1000):03d}-f{scored.frame.number:07d}"


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)) + f".{int((t % 1) * 1000):03d}" \
        + time.strftime("%z", time.localtime(t))


def _entry(sidecar: dict[str, Any], name: str) -> dict[str, Any]:
    """What /api/captures lists for one capture."""
    faces = sidecar.get("faces") or []
    scores = [f.get("smoothed_score") for f in faces if isinstance(f, dict)]
    scores = [s for s in scores if isinstance(s, int | float)]
    return {
        "name": name,
        "image": f"captures/{name}.jpg",
        "sidecar": f"captures/{name}.json",
        "time": sidecar.get("time"),
        "timestamp": sidecar.get("timestamp"),
        "frame": sidecar.get("frame"),
        "faces": len(faces),
        "best_score": max(scores) if scores else None,
    }
