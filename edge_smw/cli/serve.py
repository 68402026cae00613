"""edge-smw serve."""

from __future__ import annotations

import argparse

from edge_smw.cli.common import add_detector
from edge_smw.cli.score import BACKEND_CHOICES

HELP = "run a camera service: live scoring, web view, auto-capture of best shots, metrics"
EXAMPLES = """
  edge-smw serve --model export/ --camera /dev/video0
  edge-smw serve --model model.onnx --camera clip.mp4 --loop --captures shots/ --threshold 4.2
  edge-smw serve --model model.engine --camera csi://0 --width 1280 --height 720 --fps 30
  EDGE_SMW_TOKEN=... edge-smw serve --model model.onnx --camera rtsp://cam.local/stream \\
      --wait-for-camera --host 0.0.0.0 --allow-host camera.lan
  then open http://127.0.0.1:8080/ (with a token: http://HOST:8080/?token=TOKEN)
"""

# Beyond this an upload limit is a typo: up to 32 uploads are held in memory at once.
MAX_UPLOAD_MB = 200.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="exported .onnx or .engine, or an export folder")
    p.add_argument("--camera", required=True,
                   help="/dev/videoN, a device index (0), a video file, an rtsp:// or http:// "
                        "URL, a folder of images, or csi://N (Jetson CSI sensor)")
    src = p.add_argument_group("camera")
    src.add_argument("--width", type=int, help="capture width (files/folders: resize to it)")
    src.add_argument("--height", type=int, help="capture height")
    src.add_argument("--fps", type=float,
                     help="camera frame rate; files/folders are played at this rate (default: "
                          "the file's own rate, 5 for folders)")
    src.add_argument("--loop", action="store_true", help="replay a video file or folder forever")
    src.add_argument("--wait-for-camera", action="store_true",
                     help="start even if the camera is absent and keep trying to open it")
    run = p.add_argument_group("scoring")
    run.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                     help="inference backend (default: the fastest available)")
    run.add_argument("--threads", type=int, help="CPU threads for inference")
    run.add_argument("--detect", action=argparse.BooleanOptionalAction, default=True,
                     help="find faces in each frame (default), or score each frame whole as "
                          "one face crop (--no-detect: a camera framed on one face)")
    run.add_argument("--max-faces", type=int, default=5, help="faces scored per frame")
    add_detector(run)
    run.add_argument("--smooth", default="ema", choices=["ema", "window", "none"],
                     help="per-face temporal smoothing of the score (default ema)")
    run.add_argument("--smooth-alpha", type=float, default=0.5,
                     help="ema weight of the newest frame, 0..1 (default 0.5)")
    run.add_argument("--smooth-window", type=int, default=5,
                     help="window: frames averaged (default 5)")
    cap = p.add_argument_group("auto-capture")
    cap.add_argument("--captures", metavar="DIR",
                     help="save frames whose smoothed score stays >= --threshold here")
    cap.add_argument("--threshold", type=float,
                     help="smoothed expected score (1..K) that triggers a capture (default: "
                          "halfway between the top two levels, K - 0.5)")
    cap.add_argument("--capture-frames", type=int, default=5,
                     help="consecutive scored frames at/above the threshold (default 5)")
    cap.add_argument("--cooldown", type=float, default=5.0,
                     help="seconds between captures (default 5)")
    cap.add_argument("--max-captures", type=int, default=1000,
                     help="stop capturing when the folder holds this many (default 1000)")
    cap.add_argument("--min-free-mb", type=float, default=200.0,
                     help="stop capturing below this much free disk (default 200 MB)")
    web_ = p.add_argument_group("web")
    web_.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (default 127.0.0.1: this machine only; "
                           "0.0.0.0 exposes it, use --token then)")
    web_.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free)")
    web_.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                      help="also answer requests for this host name (repeatable); by default "
                           "only 127.0.0.1, localhost, [::1] and the --host value are "
                           "answered (and, with --host 0.0.0.0, IP addresses and this "
                           "machine's name), which keeps other web sites out (DNS rebinding)")
    web_.add_argument("--token-file", metavar="FILE",
                      help="require the token on the first line of FILE on every data "
                           "endpoint (default: $EDGE_SMW_TOKEN when set)")
    web_.add_argument("--token",
                      help="the token itself (visible to other users in `ps`: prefer "
                           "--token-file or $EDGE_SMW_TOKEN)")
    web_.add_argument("--max-upload-mb", type=float, default=10.0,
                      help="largest POST /api/score upload (default 10 MB, at most "
                           f"{MAX_UPLOAD_MB:g})")
    web_.add_argument("--stream-max-side", type=int, default=960,
                      help="downscale the MJPEG stream to this long side (default 960)")
    web_.add_argument("--access-log", action="store_true", help="log every HTTP request")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edge_smw.artifacts.sessions import check_threads
    from edge_smw.errors import InputError
    from edge_smw.runtime.runtime import check_max_faces
    from edge_smw.serve.app import load_token, run_service
    from edge_smw.serve.capture import CaptureOptions, check_capture_settings
    from edge_smw.serve.scoring import SmoothingOptions
    from edge_smw.serve.service import ServeOptions, Service
    from edge_smw.serve.sources import parse_source

    # Every setting is checked before the model is loaded: one line, no traceback.
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be 0..65535, got {args.port}")
    if not 0 < args.max_upload_mb <= MAX_UPLOAD_MB:
        raise InputError(f"--max-upload-mb must be more than 0 and at most {MAX_UPLOAD_MB:g}, "
                         f"got {args.max_upload_mb:g}")
    if args.stream_max_side < 64:
        raise InputError(f"--stream-max-side must be >= 64, got {args.stream_max_side}")
    if args.threshold is not None and args.captures is None:
        raise InputError("--threshold needs --captures DIR (where to save the frames)")
    check_capture_settings(min_frames=args.capture_frames, cooldown_s=args.cooldown,
                           max_count=args.max_captures, min_free_mb=args.min_free_mb)
    check_threads(args.threads, "--threads")
    check_max_faces(args.max_faces, "--max-faces")
    token = load_token(args.token, args.token_file)
    # Fail on a bad --camera before loading the model.
    parse_source(args.camera, width=args.width, height=args.height, fps=args.fps, loop=args.loop)
    smoothing = SmoothingOptions(method=args.smooth, alpha=args.smooth_alpha,
                                 window=args.smooth_window)
    options = ServeOptions(
        model=Path(args.model), camera=args.camera, width=args.width, height=args.height,
        fps=args.fps, loop=args.loop, backend=args.backend, threads=args.threads,
        detect=args.detect, max_faces=args.max_faces, smoothing=smoothing,
        wait_for_camera=args.wait_for_camera, detector=args.detector,
        allow_detector_mismatch=args.allow_detector_mismatch,
        stream_max_side=args.stream_max_side,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
    )
    service = Service(options)
    if args.captures is not None:
        k = len(service.levels)
        threshold = args.threshold if args.threshold is not None else k - 0.5
        if not 1.0 <= threshold <= k:
            raise InputError(f"--threshold {threshold} is outside this model's score range "
                             f"1..{k} (levels {', '.join(service.levels)})")
        service.set_capture(CaptureOptions(
            folder=Path(args.captures), threshold=threshold, min_frames=args.capture_frames,
            cooldown_s=args.cooldown, min_free_mb=args.min_free_mb,
            max_count=args.max_captures,
        ))
    run_service(service, host=args.host, port=args.port, token=token,
                access_log=args.access_log, allow_hosts=args.allow_host)
    return 0
