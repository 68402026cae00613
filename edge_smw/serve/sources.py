"""Camera sources for ``serve``: what ``--camera`` accepts, and the capture thread.

One ``--camera`` string names any of: a V4L2 device path (``/dev/video0``), a device index
(``0``), a video file, an RTSP/HTTP(S) URL, a folder of images, or ``csi://N`` (a Jetson CSI
sensor through GStreamer's ``nvarguscamerasrc``). Everything but folders goes through
OpenCV's ``VideoCapture``. The capture thread keeps only the newest frame in a one-slot
buffer, so a scorer slower than the camera skips frames instead of building a backlog, and it
reopens a lost camera with exponential back-off while the service stays up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_smw.errors import BackendUnavailableError, InputError
from edge_smw.images import IMAGE_SUFFIXES, read_image
from edge_smw.serve.checks import check_number

log = logging.getLogger("edge_smw.serve.sources")

VIDEO_SUFFIXES = frozenset(
    {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts", ".mjpg", ".mjpeg",
     ".wmv", ".flv", ".3gp", ".y4m"}
)
URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
# Network sources: how long OpenCV/FFmpeg may block opening or reading before giving up.
NETWORK_TIMEOUT_MS = 5000
# Folders of images have no frame rate of their own.
DEFAULT_FOLDER_FPS = 5.0
# Largest --width/--height: 8K video fits; more would be hundreds of MB per frame.
MAX_FRAME_SIDE = 8192

V4L2_HINT = ("check that the camera is plugged in and listed by `v4l2-ctl --list-devices`, "
             "that this user may open it (`ls -l /dev/video*`; add the user to the 'video' "
             "group), and that no other program holds it; or pass --wait-for-camera to wait "
             "for it")


class CameraError(InputError):
    """A camera source that cannot be opened; the message names it and what to check."""


class SourceLost(Exception):
    """A live source stopped delivering frames (unplugged, network drop, read error)."""


class EndOfSource(Exception):
    """A file or folder played to its end (without --loop)."""


@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``--camera`` value plus the requested capture format."""

    raw: str
    kind: str  # device | index | file | url | folder | csi
    target: str | int
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    loop: bool = False

    @property
    def live(self) -> bool:
        """Live sources reconnect when lost; files and folders end (or loop)."""
        return self.kind in ("device", "index", "url", "csi")

    def describe(self) -> str:
        return f"{self.kind} {self.raw}"


def parse_source(text: str, *, width: int | None = None, height: int | None = None,
                 fps: float | None = None, loop: bool = False) -> SourceSpec:
    """Classify a ``--camera`` string. Does not open anything (see ``open_source``)."""
    text = str(text).strip()
    if not text:
        raise CameraError("--camera is empty; give /dev/video0, 0, a video file, a URL, a "
                          "folder of images or csi://0")
    for name, value in (("--width", width), ("--height", height)):
        if value is not None and not 0 < value <= MAX_FRAME_SIDE:
            raise CameraError(f"{name} must be 1..{MAX_FRAME_SIDE} pixels, got {value}")
    if fps is not None:
        check_number(fps, "--fps", positive=True, unit=" frames a second")
    common: dict[str, Any] = {"width": width, "height": height, "fps": fps, "loop": loop}
    lower = text.lower()
    if lower.startswith("csi://"):
        sensor = text[len("csi://"):]
        if not sensor.isdigit():
            raise CameraError(f"{text}: expected csi://N with N the sensor number, e.g. csi://0")
        return SourceSpec(text, "csi", int(sensor), **common)
    if lower.startswith(URL_SCHEMES):
        return SourceSpec(text, "url", text, **common)
    if re.fullmatch(r"\d+", text):
        return SourceSpec(text, "index", int(text), **common)
    path = Path(text).expanduser()
    if text.startswith("/dev/") or path.is_char_device():
        return SourceSpec(text, "device", str(path), **common)
    if path.is_dir():
        return SourceSpec(text, "folder", str(path), **common)
    if path.is_file() or path.suffix.lower() in VIDEO_SUFFIXES:
        return SourceSpec(text, "file", str(path), **common)
    raise CameraError(
        f"--camera {text}: not found. Give a device (/dev/video0 or an index such as 0), a video "
        "file, an rtsp:// or http:// URL, a folder of images, or csi://N"
    )


def gstreamer_available() -> bool:
    """Whether this OpenCV build can open GStreamer pipelines (needed for csi://N)."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return line.split(":", 1)[1].strip().upper().startswith("YES")
    return False


def csi_pipeline(sensor: int, width: int | None, height: int | None, fps: float | None) -> str:
    """The nvarguscamerasrc pipeline for a Jetson CSI sensor, ending in a 1-buffer BGR appsink."""
    w, h, rate = width or 1280, height or 720, int(round(fps or 30))
    return (
        f"nvarguscamerasrc sensor-id={sensor} ! "
        f"video/x-raw(memory:NVMM), width=(int){w}, height=(int){h}, "
        f"framerate=(fraction){rate}/1 ! "
        "nvvidconv ! video/x-raw, format=(string)BGRx ! videoconvert ! "
        "video/x-raw, format=(string)BGR ! appsink drop=true max-buffers=1 sync=false"
    )


# -- sources -----------------------------------------------------------------------------------
class FrameSource:
    """An open source. ``read`` returns (BGR frame, position in the file or None)."""

    spec: SourceSpec
    pace_fps: float | None = None  # files and folders are played at this rate, not flat out

    def read(self) -> tuple[np.ndarray, int | str | None]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _resize(self, frame: np.ndarray) -> np.ndarray:
        """Files and folders honour --width/--height by resizing (devices are asked instead)."""
        w, h = self.spec.width, self.spec.height
        if not w and not h:
            return frame
        fh, fw = frame.shape[:2]
        if w and not h:
            h = max(1, round(fh * w / fw))
        elif h and not w:
            w = max(1, round(fw * h / fh))
        if (w, h) == (fw, fh):
            return frame
        return cv2.resize(frame, (int(w), int(h)), interpolation=cv2.INTER_AREA)


class VideoCaptureSource(FrameSource):
    """Devices, files, URLs and CSI sensors, through OpenCV's VideoCapture."""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.cap = self._open()
        self._position = 0
        if spec.kind == "file":
            native = self.cap.get(cv2.CAP_PROP_FPS)
            self.pace_fps = spec.fps or (native if 0 < native < 1000 else 25.0)
        with _quiet_opencv():  # FFmpeg says why a file does not decode in its own words
            ok, frame = self.cap.read()  # a source that opens but yields nothing: no camera
        if not ok or frame is None:
            self.cap.release()
            raise CameraError(f"{spec.raw}: opened but delivered no frame; " + self._hint())
        self._first: np.ndarray | None = frame
        h, w = frame.shape[:2]
        log.info("camera %s open: %dx%d%s", spec.raw, w, h,
                 f" at {self.pace_fps:.3g} fps (file pacing)" if self.pace_fps else "")

    def _hint(self) -> str:
        kind = self.spec.kind
        if kind in ("device", "index"):
            return V4L2_HINT
        if kind == "url":
            return ("check the URL, that the camera is reachable from here and that its "
                    "credentials are right; or pass --wait-for-camera")
        if kind == "csi":
            return ("check the sensor number (csi://0, csi://1), the ribbon cable, and that "
                    "nvargus-daemon is running (sudo systemctl restart nvargus-daemon)")
        return "check the file is a video FFmpeg can decode (try `ffprobe FILE`)"

    def _open(self) -> cv2.VideoCapture:
        with _quiet_opencv():
            return self._open_capture()

    def _open_capture(self) -> cv2.VideoCapture:
        spec = self.spec
        if spec.kind == "device":
            path = Path(str(spec.target))
            if not path.exists():
                raise CameraError(f"camera {spec.raw}: no such device; {V4L2_HINT}")
            if not os.access(path, os.R_OK | os.W_OK):
                raise CameraError(f"camera {spec.raw}: permission denied for user "
                                  f"{_user()}; {V4L2_HINT}")
            cap = cv2.VideoCapture(str(path), _v4l2_api())
        elif spec.kind == "index":
            node = Path(f"/dev/video{spec.target}")
            if sys.platform.startswith("linux") and not node.exists():
                raise CameraError(f"camera {spec.raw}: no {node}; {V4L2_HINT}")
            cap = cv2.VideoCapture(int(spec.target), _v4l2_api())
        elif spec.kind == "csi":
            if not gstreamer_available():
                raise BackendUnavailableError(
                    f"{spec.raw} needs OpenCV built with GStreamer, and this one is not "
                    "(cv2.getBuildInformation() shows 'GStreamer: NO'). On a Jetson use "
                    "JetPack's OpenCV (`pip uninstall opencv-python-headless`, then the system "
                    "python3-opencv), or use the sensor through V4L2 as /dev/videoN"
                )
            pipeline = csi_pipeline(int(spec.target), spec.width, spec.height, spec.fps)
            log.info("csi pipeline: %s", pipeline)
            cap = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
        elif spec.kind == "url":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, NETWORK_TIMEOUT_MS,
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, NETWORK_TIMEOUT_MS]
            cap = cv2.VideoCapture(str(spec.target), cv2.CAP_FFMPEG, params)
        else:  # file
            path = Path(str(spec.target))
            if not path.is_file():
                raise CameraError(f"video file {spec.raw} not found")
            cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"camera {spec.raw} could not be opened; {self._hint()}")
        if spec.kind in ("device", "index"):
            if spec.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, spec.width)
            if spec.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, spec.height)
            if spec.fps:
                cap.set(cv2.CAP_PROP_FPS, spec.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not a queue of stale ones
        return cap

    def read(self) -> tuple[np.ndarray, int | str | None]:
        if self._first is not None:
            frame, self._first = self._first, None
        else:
            ok, frame = self.cap.read()
            if not ok or frame is None:
                if self.spec.kind != "file":
                    raise SourceLost(f"camera {self.spec.raw} stopped delivering frames")
                if not self.spec.loop:
                    raise EndOfSource(f"{self.spec.raw} played to its end")
                self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                self._position = 0
                ok, frame = self.cap.read()
                if not ok or frame is None:
                    raise SourceLost(f"video file {self.spec.raw} cannot be rewound")
        position: int | None = None
        if self.spec.kind == "file":
            position = self._position
            self._position += 1
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        return (self._resize(frame) if self.spec.kind == "file" else frame), position

    def close(self) -> None:
        self.cap.release()


class FolderSource(FrameSource):
    """A folder of images played as frames, sorted by name (EXIF-upright, like every read)."""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        folder = Path(str(spec.target))
        try:
            self.files = sorted(p for p in folder.iterdir()
                                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                                and not p.name.startswith("."))
        except OSError as exc:  # removed, unmounted, no permission: lost like any camera
            raise CameraError(f"folder {spec.raw} cannot be read ({exc.strerror or exc}); "
                              "check that it exists and this user may read it") from exc
        if not self.files:
            kinds = ", ".join(sorted(IMAGE_SUFFIXES))
            raise CameraError(f"folder {spec.raw} holds no images ({kinds})")
        self.pace_fps = spec.fps or DEFAULT_FOLDER_FPS
        self._index = 0
        # Like a video that opens but yields nothing, a folder none of whose images decodes
        # is no camera: say so now, instead of reopening it forever.
        self._first: tuple[np.ndarray, int | str | None] | None = None
        try:
            self._first = self._next(logging.DEBUG)  # not one warning per file: one error
        except SourceLost as exc:
            raise CameraError(f"folder {spec.raw}: none of its {len(self.files)} image files "
                              f"can be decoded (e.g. {exc.__cause__}); give a folder of "
                              "readable images") from exc
        log.info("camera %s open: folder of %d images at %.3g fps", spec.raw, len(self.files),
                 self.pace_fps)

    def read(self) -> tuple[np.ndarray, int | str | None]:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return self._next(logging.WARNING)

    def _next(self, skip_level: int) -> tuple[np.ndarray, int | str | None]:
        """The next decodable image; undecodable ones are logged at ``skip_level``."""
        failures = 0
        while True:
            if self._index >= len(self.files):
                if not self.spec.loop:
                    raise EndOfSource(f"{self.spec.raw}: all {len(self.files)} images played")
                self._index = 0
            path = self.files[self._index]
            self._index += 1
            try:
                return self._resize(read_image(path)), path.name
            except InputError as exc:  # one bad file in the folder is skipped, not fatal
                log.log(skip_level, "skipping %s", exc)
                failures += 1
                if failures >= len(self.files):
                    raise SourceLost(f"no image in {self.spec.raw} can be read") from exc


def open_source(spec: SourceSpec) -> FrameSource:
    """Open ``spec`` now, or raise ``CameraError`` naming it and what to check."""
    if spec.kind == "folder":
        return FolderSource(spec)
    return VideoCaptureSource(spec)


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Keep OpenCV's and FFmpeg's own warnings (``[ WARN:0@...] cap.cpp``, ``[mjpeg @ ...]``)
    off the terminal while a source opens: our error already says what failed and what to
    check. ``-v`` (debug logging) keeps them. FFmpeg reads ``OPENCV_FFMPEG_LOGLEVEL`` once,
    when OpenCV first uses it, so it is set before the first open (a user's value wins)."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    cv_log = getattr(getattr(cv2, "utils", None), "logging", None)  # absent in old builds
    if cv_log is None:
        yield
        return
    level = cv_log.getLogLevel()
    cv_log.setLogLevel(cv_log.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv_log.setLogLevel(level)


def _error_text(exc: BaseException) -> str:
    """Our errors speak for themselves; anything else is named by its type too."""
    if isinstance(exc, (InputError, BackendUnavailableError, SourceLost)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _v4l2_api() -> int:
    return cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid()) if hasattr(os, "getuid") else "this user"


# -- newest-frame slot and capture thread ------------------------------------------------------
@dataclass
class Frame:
    number: int  # counts every captured frame since start, across reconnects
    time: float  # wall clock (time.time()) when captured
    monotonic: float
    image: np.ndarray
    position: int | str | None = None  # frame index in a file, image name in a folder


class FrameSlot:
    """A one-frame mailbox: the writer overwrites, the reader takes only the newest."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._taken = True
        self._closed = False

    def put(self, frame: Frame) -> bool:
        """Store ``frame``; True when it replaced one nobody took (a dropped frame)."""
        with self._cond:
            dropped = not self._taken
            self._frame, self._taken = frame, False
            self._cond.notify_all()
        return dropped

    def take(self, timeout: float) -> Frame | None:
        """The newest untaken frame, waiting up to ``timeout`` s; None on timeout or close."""
        with self._cond:
            if self._taken and not self._closed:
                self._cond.wait(timeout)
            if self._taken or self._frame is None:
                return None
            self._taken = True
            return self._frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class CameraStatus:
    """What /healthz and the page say about the camera."""

    source: str
    state: str = "starting"  # starting | live | lost | waiting | ended | stopped
    since: float = field(default_factory=time.time)
    last_error: str | None = None
    frames: int = 0
    losses: int = 0
    reconnects: int = 0
    next_retry_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "state": self.state, "since": round(self.since, 3),
            "last_error": self.last_error, "frames": self.frames, "losses": self.losses,
            "reconnects": self.reconnects, "next_retry_s": self.next_retry_s,
        }


class CaptureThread(threading.Thread):
    """Reads the source as fast as it delivers (files: at their frame rate) into a FrameSlot.

    Any source that fails, whatever the error (unplugged device, network drop, folder
    removed), is closed and reopened with exponential back-off (``backoff`` ..
    ``max_backoff`` seconds) on one path: lost -> back-off -> reconnect. The service keeps
    serving meanwhile; only stop() and a file or folder played to its end finish the thread.
    """

    def __init__(self, spec: SourceSpec, slot: FrameSlot, *, source: FrameSource | None = None,
                 backoff: float = 0.5, max_backoff: float = 10.0,
                 on_frame: Callable[[Frame, bool], None] | None = None,
                 on_event: Callable[[str], None] | None = None) -> None:
        super().__init__(name="edge-smw-capture", daemon=True)
        self.spec = spec
        self.slot = slot
        self.source = source
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.on_frame = on_frame  # (frame, dropped) for metrics
        self.on_event = on_event  # "lost" | "reconnected" for metrics
        self.status = CameraStatus(spec.raw, state="live" if source else "waiting")
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._number = 0

    def stop(self) -> None:
        self._halt.set()

    def status_dict(self) -> dict[str, Any]:
        with self._lock:
            return self.status.to_dict()

    def _set_state(self, state: str, error: str | None = None, retry: float | None = None) -> None:
        with self._lock:
            if state != self.status.state:
                self.status.since = time.time()
            self.status.state = state
            self.status.next_retry_s = retry
            if error is not None:
                self.status.last_error = error

    def run(self) -> None:
        delay = self.backoff
        ever_open = self.source is not None
        try:
            while not self._halt.is_set():
                if self.source is None:
                    try:
                        self.source = open_source(self.spec)
                    except Exception as exc:  # every failure takes the same back-off path
                        state = "lost" if ever_open else "waiting"
                        text = _error_text(exc)
                        previous = self.status_dict()
                        self._set_state(state, text, retry=round(delay, 2))
                        if previous["state"] != state or previous["last_error"] != text:
                            log.warning("camera %s unavailable (%s); retrying with back-off "
                                        "(%.1f..%.0f s)", self.spec.raw, text, delay,
                                        self.max_backoff)
                        self._halt.wait(delay)
                        delay = min(delay * 2, self.max_backoff)
                        continue
                    if ever_open:
                        with self._lock:
                            self.status.reconnects += 1
                        log.info("camera %s reconnected", self.spec.raw)
                        if self.on_event:
                            self.on_event("reconnected")
                    ever_open = True
                    delay = self.backoff
                    self._set_state("live")
                if not self._pump():
                    return
        finally:
            if self.source is not None:
                self.source.close()
                self.source = None
            if self.status.state != "ended":
                self._set_state("stopped")

    def _pump(self) -> bool:
        """Read frames until the source is lost (False when capture should end)."""
        assert self.source is not None
        period = 1.0 / self.source.pace_fps if self.source.pace_fps else 0.0
        due = time.monotonic()
        while not self._halt.is_set():
            try:
                image, position = self.source.read()
            except EndOfSource as exc:
                log.info("%s; the service stays up with its last frame", exc)
                self._set_state("ended", str(exc))
                return False
            except Exception as exc:  # SourceLost, cv2.error, OSError...: all are a loss
                log.warning("camera %s lost: %s", self.spec.raw, _error_text(exc))
                with self._lock:
                    self.status.losses += 1
                self._set_state("lost", _error_text(exc))
                if self.on_event:
                    self.on_event("lost")
                with contextlib.suppress(Exception):
                    self.source.close()
                self.source = None
                return True
            self._number += 1
            frame = Frame(self._number, time.time(), time.monotonic(), image, position)
            dropped = self.slot.put(frame)
            with self._lock:
                self.status.frames += 1
            if self.on_frame:
                self.on_frame(frame, dropped)
            if period:
                due += period
                wait = due - time.monotonic()
                if wait > 0:
                    self._halt.wait(wait)
                else:
                    due = time.monotonic()  # fell behind: do not burst to catch up
        return False
