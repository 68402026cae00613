"""edge-smw serve: sources, smoothing, auto-capture, metrics, and the running service.

The running service is a real ``edge-smw serve`` process whose camera is a video file (and a
folder) of real SMILEsmileD faces; its answers are checked against the Runtime's own scores
of the very same decoded frames.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_smw.errors import BackendUnavailableError, InputError
from edge_smw.runtime import FaceScore
from edge_smw.serve.capture import CAPTURE_NAME, AutoCapture, CaptureOptions
from edge_smw.serve.metrics import Registry, parse_text
from edge_smw.serve.scoring import FaceTracker, ScoredFrame, SmoothingOptions, iou
from edge_smw.serve.service import Broadcast
from edge_smw.serve.sources import (
    CameraError,
    Frame,
    FrameSlot,
    gstreamer_available,
    open_source,
    parse_source,
)
from tests.serve_support import (
    ServeProcess,
    get_footage,
    get_json,
    green_pixels,
    http,
    metrics,
    read_events,
    read_mjpeg,
    wait_until,
)
from tests.skips import machine_reason

TOKEN = "s3cret-token"


@pytest.fixture(scope="session")
def footage(smiles_dir, smiles_onnx, tmp_path_factory):
    return get_footage(smiles_dir, smiles_onnx, lambda: tmp_path_factory.mktemp("footage"))


# -- sources -----------------------------------------------------------------------------------
def test_parse_source_kinds(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"x")
    assert parse_source("/dev/video0").kind == "device"
    assert parse_source("2").kind == "index" and parse_source("2").target == 2
    assert parse_source("rtsp://cam.local/stream").kind == "url"
    assert parse_source("http://10.0.0.5/video.mjpg").kind == "url"
    assert parse_source(str(tmp_path)).kind == "folder"
    spec = parse_source(str(video), width=320, fps=12, loop=True)
    assert (spec.kind, spec.width, spec.fps, spec.loop, spec.live) == ("file", 320, 12, True, False)
    assert parse_source("csi://1").kind == "csi" and parse_source("csi://1").live
    for bad in ("csi://front", "no/such/thing", ""):
        with pytest.raises(CameraError):
            parse_source(bad)
    with pytest.raises(CameraError, match="--width"):
        parse_source("0", width=-1)


def test_absent_device_names_itself_and_what_to_check():
    with pytest.raises(CameraError) as info:
        open_source(parse_source("/dev/video97"))
    message = str(info.value)
    assert "/dev/video97" in message and "v4l2-ctl --list-devices" in message
    assert "--wait-for-camera" in message


@pytest.mark.skipif(gstreamer_available(), reason=machine_reason(
    "this OpenCV has GStreamer; the error path only exists without it"))
def test_csi_without_gstreamer_is_a_clear_error():
    with pytest.raises(BackendUnavailableError, match="GStreamer") as info:
        open_source(parse_source("csi://0"))
    assert "csi://0" in str(info.value)


def test_camera_absent_cli_exits_nonzero(smiles_onnx, capsys):
    from edge_smw.cli.main import main

    rc = main(["serve", "--model", str(smiles_onnx), "--camera", "/dev/video97", "--port", "0",
               "--threads", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "/dev/video97" in err and "v4l2-ctl --list-devices" in err
    assert "Traceback" not in err


def test_frame_slot_keeps_only_the_newest():
    slot = FrameSlot()
    frames = [Frame(i, time.time(), time.monotonic(), np.zeros((2, 2, 3), np.uint8))
              for i in range(1, 4)]
    assert slot.put(frames[0]) is False
    assert slot.put(frames[1]) is True  # frame 1 was never taken: dropped
    assert slot.put(frames[2]) is True
    assert slot.take(0.01).number == 3
    assert slot.take(0.01) is None  # nothing newer
    assert slot.put(frames[0]) is False  # the previous one was taken


def test_folder_source_plays_images_in_order_and_loops(footage, tmp_path):
    folder = footage.write_folder(tmp_path / "imgs", step=20)
    (folder / "notes.txt").write_text("not an image")
    source = open_source(parse_source(str(folder), loop=True, width=320))
    names = [source.read()[1] for _ in range(5)]
    assert names == ["frame0000.png", "frame0020.png", "frame0040.png", "frame0060.png",
                     "frame0000.png"]
    assert source.read()[0].shape == (240, 320, 3)


def test_capture_thread_plays_a_folder_once_then_reports_ended(footage, tmp_path):
    from edge_smw.serve.sources import CaptureThread

    folder = footage.write_folder(tmp_path / "imgs", step=25)
    spec = parse_source(str(folder), fps=50)
    seen = []
    thread = CaptureThread(spec, FrameSlot(), source=open_source(spec),
                           on_frame=lambda frame, dropped: seen.append(frame.position))
    thread.start()
    thread.join(30)
    status = thread.status_dict()
    assert not thread.is_alive() and status["state"] == "ended"
    expected = [f"frame{i:04d}.png" for i in range(0, len(footage.frames), 25)]
    assert seen == expected and status["frames"] == len(expected)


def test_serve_listens_on_loopback_by_default():
    from edge_smw.cli.main import build_parser

    args = build_parser().parse_args(["serve", "--model", "m.onnx", "--camera", "0"])
    assert args.host == "127.0.0.1" and args.token is None and args.port == 8080


def test_folder_of_undecodable_images_is_a_camera_error(footage, tmp_path):
    """Not a camera that is lost and reopened every second, forever: an error naming it."""
    folder = tmp_path / "badalbum"
    folder.mkdir()
    for name in ("a.jpg", "b.png"):
        (folder / name).write_bytes(b"not an image")
    with pytest.raises(CameraError, match="badalbum: none of its 2 image files can be decoded"):
        open_source(parse_source(str(folder)))
    # one readable image among them is enough; the bad ones are skipped
    cv2.imwrite(str(folder / "c.png"), footage.frames[0])
    source = open_source(parse_source(str(folder), loop=True))
    assert [source.read()[1] for _ in range(2)] == ["c.png", "c.png"]


def _serve_error(argv: list[str], capsys) -> str:
    from edge_smw.cli.main import main

    rc = main(["serve", "--port", "0", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(("extra", "words"), [
    (["--fps", "nan"], "--fps must be a finite number"),
    (["--fps", "inf"], "--fps must be a finite number"),
    (["--cooldown", "nan"], "--cooldown must be a finite number"),
    (["--cooldown", "inf"], "--cooldown must be a finite number"),
    (["--min-free-mb", "nan"], "--min-free-mb must be a finite number"),
    # capture settings are checked with or without --captures
    (["--capture-frames", "0"], "--capture-frames"),
    (["--cooldown", "-1"], "--cooldown"),
    (["--max-captures", "-1"], "--max-captures"),
    (["--min-free-mb", "-1"], "--min-free-mb"),
])
def test_non_finite_and_bad_capture_numbers_are_refused_before_the_model(tmp_path, capsys,
                                                                         extra, words):
    # the model does not exist: these are refused before it is looked at
    err = _serve_error(["--model", str(tmp_path / "none.onnx"), "--camera", str(tmp_path),
                        *extra], capsys)
    assert words in err, err


def test_api_refuses_non_finite_numbers(tmp_path):
    with pytest.raises(InputError, match="--fps"):
        parse_source(str(tmp_path), fps=float("nan"))
    with pytest.raises(InputError, match="--cooldown"):
        CaptureOptions(tmp_path, threshold=1.5, cooldown_s=float("nan"))
    with pytest.raises(InputError, match="--min-free-mb"):
        CaptureOptions(tmp_path, threshold=1.5, min_free_mb=float("inf"))


def test_unresolvable_host_blames_the_host_not_the_port(footage, smiles_onnx, tmp_path,
                                                        capsys):
    folder = footage.write_folder(tmp_path / "frames", step=40)
    err = _serve_error(["--model", str(smiles_onnx), "--camera", str(folder), "--threads", "1",
                        "--host", "999.1.1.1"], capsys)
    assert "--host 999.1.1.1" in err and "--port" not in err, err


def test_port_in_use_still_blames_the_port():
    import errno
    import socket

    from edge_smw.serve.app import listen_error

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with socket.socket() as other, pytest.raises(OSError) as info:
            other.bind(("127.0.0.1", port))
    finally:
        taken.close()
    assert info.value.errno == errno.EADDRINUSE
    assert "choose one with --port" in listen_error("127.0.0.1", port, info.value)


def test_camera_errors_are_one_line_without_opencv_noise(smiles_onnx, tmp_path):
    """OpenCV's ``[ WARN:0@...] cap.cpp`` and FFmpeg's ``[mjpeg @ ...]`` stay off stderr."""
    import subprocess
    import sys

    cases = {"zeros.mjpeg": bytes(5000),  # FFmpeg: "No JPEG data found in image"
             "text.mp4": b"not a video at all\n" * 50}  # "moov atom not found", cap.cpp:212
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        result = subprocess.run(
            [sys.executable, "-m", "edge_smw.cli.main", "serve", "--model", str(smiles_onnx),
             "--camera", str(tmp_path / name), "--port", "0", "--threads", "1"],
            capture_output=True, text=True, timeout=120,
            env=dict(os.environ, OMP_NUM_THREADS="1"))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith("edge-smw serve: error:") and name in lines[0]


# -- smoothing and tracking --------------------------------------------------------------------
def _face(box, p_high):
    probs = np.array([1 - p_high, p_high])
    return FaceScore(box, probs, int(probs.argmax()), ("low", "high")[int(probs.argmax())],
                     float(probs @ [1, 2]))


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)


def test_ema_smoothing_follows_each_face():
    tracker = FaceTracker(SmoothingOptions("ema", alpha=0.25), 2)
    a, b = (10, 10, 100, 100), (300, 20, 90, 90)
    first = tracker.update([_face(a, 0.0), _face(b, 1.0)])
    # order of faces changes, boxes move a little: tracks follow by IoU
    second = tracker.update([_face((306, 24, 90, 90), 1.0), _face((14, 12, 100, 100), 1.0)])
    assert [f.track for f in second] == [first[1].track, first[0].track]
    assert second[1].smoothed_score == pytest.approx(1 + 0.25 * 1.0 + 0.75 * 0.0)
    assert second[0].smoothed_score == pytest.approx(2.0)
    assert second[1].smoothed_level == 0 and second[1].face.level == 1  # raw flips, display not
    assert second[1].frames_tracked == 2


def test_window_smoothing_and_track_expiry():
    tracker = FaceTracker(SmoothingOptions("window", window=3, max_missed=1), 2)
    box = (50, 50, 80, 80)
    scores = [tracker.update([_face(box, p)])[0].smoothed_score for p in (0.0, 1.0, 1.0, 1.0)]
    assert scores == pytest.approx([1.0, 1.5, 1 + 2 / 3, 2.0])
    track = tracker.tracks[0].id
    tracker.update([])
    assert tracker.update([_face(box, 0.0)])[0].track == track  # one miss is tolerated
    tracker.update([])
    tracker.update([])
    assert tracker.update([_face(box, 0.0)])[0].track != track  # two misses: a new face


def test_smoothing_options_are_checked():
    for kwargs, words in (({"method": "median"}, "--smooth must be one of .* got 'median'"),
                          ({"alpha": 0.0}, r"--smooth-alpha must be in \(0, 1\], got 0.0"),
                          ({"window": 0}, "--smooth-window must be >= 1 frame, got 0")):
        with pytest.raises(InputError, match=words):
            SmoothingOptions(**kwargs)


# -- auto-capture (decisions and files, on real scored frames) ----------------------------------
def _scored_stream(footage, indices, smoothing=SmoothingOptions("none")):
    tracker = FaceTracker(smoothing, len(footage.runtime.levels))
    for n, i in enumerate(indices, start=1):
        result = footage.runtime.score(footage.frames[i])
        frame = Frame(n, time.time(), time.monotonic(), footage.frames[i], i)
        yield ScoredFrame(frame, tracker.update(result.faces), result.timings)


def _high_run(footage, length):
    """Indices of ``length`` consecutive decoded frames scoring at/above the threshold."""
    run = []
    for i, s in enumerate(footage.scores):
        run = run + [i] if s is not None and s >= footage.threshold else []
        if len(run) == length:
            return run
    pytest.fail("footage has no long enough run of high-scoring frames")


def _capture(footage, folder, **kwargs):
    options = CaptureOptions(folder=folder, threshold=footage.threshold, **kwargs)
    saved, skipped = [], []
    cap = AutoCapture(options, model={"sha256": "abc"}, source="test", levels=("a", "b"),
                      on_saved=saved.append, on_skipped=skipped.append)
    cap.start()
    return cap, saved, skipped


def test_capture_needs_n_consecutive_frames_and_respects_cooldown(footage, tmp_path):
    run = _high_run(footage, 4)
    low = next(i for i, s in enumerate(footage.scores) if s is not None and s < footage.threshold)
    cap, saved, _ = _capture(footage, tmp_path / "caps", min_frames=3, cooldown_s=3600)
    names = [cap.observe(s) for s in _scored_stream(footage, run[:2] + [low] + run)]
    cap.close()
    # high, high, low (streak broken), high, high, HIGH -> capture; 4th high: cooling down
    assert [n is not None for n in names] == [False, False, False, False, False, True, False]
    files = sorted(p.name for p in (tmp_path / "caps").iterdir())
    assert files == [names[5] + ".jpg", names[5] + ".json"]
    sidecar = json.loads((tmp_path / "caps" / files[1]).read_text())
    assert sidecar["frame"] == 6 and sidecar["position"] == run[2]
    assert sidecar["trigger"]["consecutive_frames"] == 3
    assert sidecar["faces"][0]["expected_score"] >= footage.threshold
    image = cv2.imread(str(tmp_path / "caps" / files[0]))
    assert image.shape == footage.frames[run[2]].shape  # full resolution
    assert np.abs(image.astype(int) - footage.frames[run[2]]).mean() < 3
    assert len(saved) == 1 and saved[0]["name"] == names[5]


def test_capture_max_count_and_disk_floor_hold_back_with_one_log_line(footage, tmp_path, caplog):
    run = _high_run(footage, 4)
    caplog.set_level(logging.INFO, logger="edge_smw.serve.capture")
    cap, saved, skipped = _capture(footage, tmp_path / "a", min_frames=1, cooldown_s=0,
                                   max_count=2)
    for scored in _scored_stream(footage, run):
        cap.observe(scored)
    cap.close()
    assert len(saved) == 2 and skipped == ["max_count", "max_count"]
    assert len([r for r in caplog.records if "--max-captures 2" in r.message]) == 1
    assert len(list((tmp_path / "a").glob("*.jpg"))) == 2

    caplog.clear()
    cap, saved, skipped = _capture(footage, tmp_path / "b", min_frames=1, cooldown_s=0,
                                   min_free_mb=1e12)
    for scored in _scored_stream(footage, run):
        cap.observe(scored)
    cap.close()
    assert saved == [] and skipped == ["disk_floor"] * 4
    assert len([r for r in caplog.records if "--min-free-mb" in r.message]) == 1
    assert list((tmp_path / "b").iterdir()) == []


@pytest.mark.faults
def test_capture_writer_survives_a_broken_folder_and_retries(footage, tmp_path, caplog,
                                                            monkeypatch):
    """No root needed: the captures folder is replaced by a file (every write fails), then
    put right. The writer keeps the capture, holds new ones back, and saves again."""
    from edge_smw.serve import capture as capture_module

    monkeypatch.setattr(capture_module, "RETRY_BACKOFF_S", 0.05)
    caplog.set_level(logging.INFO, logger="edge_smw.serve.capture")
    folder = tmp_path / "caps"
    cap, saved, skipped = _capture(footage, folder, min_frames=1, cooldown_s=0)
    first, second, third = list(_scored_stream(footage, _high_run(footage, 3)))
    try:
        assert cap.observe(first) is not None
        wait_until(lambda: len(saved) == 1, 30, what="the first capture")
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
        folder.write_text("a file where the folder was")
        kept = cap.observe(second)
        assert kept is not None
        wait_until(lambda: not cap.writable and cap.write_errors >= 2, 30,
                   what="failed attempts")
        # the OS's words, or edge_smw.atomic's own ("it is a file, not a folder")
        assert any(words in cap.write_error
                   for words in ("File exists", "Not a directory", "not a folder"))
        assert cap.observe(third) is None and skipped == ["unwritable"]
        folder.unlink()  # put right: the writer's next attempt recreates the folder
        wait_until(lambda: cap.writable and len(saved) == 2, 30, what="the kept capture saved")
    finally:
        cap.close()
    assert saved[1]["name"] == kept
    assert (folder / f"{kept}.jpg").is_file() and (folder / f"{kept}.json").is_file()
    messages = [r.message for r in caplog.records]
    assert len([m for m in messages if "cannot save into" in m]) == 1
    assert len([m for m in messages if "is writable again" in m]) == 1


def test_capture_folder_listing_survives_restart(footage, tmp_path):
    run = _high_run(footage, 2)
    cap, saved, _ = _capture(footage, tmp_path / "caps", min_frames=1, cooldown_s=0)
    for scored in _scored_stream(footage, run):
        cap.observe(scored)
    cap.close()
    again, _, _ = _capture(footage, tmp_path / "caps", min_frames=1, cooldown_s=0)
    again.close()
    assert again.count == 2
    assert [c["name"] for c in again.list()] == [s["name"] for s in reversed(saved)]
    assert again.resolve(saved[0]["name"] + ".jpg") is not None
    for bad in ("../x.jpg", ".hidden.jpg", saved[0]["name"], "x/../" + saved[0]["name"] + ".jpg"):
        assert again.resolve(bad) is None


# -- metrics and broadcast ---------------------------------------------------------------------
def test_metrics_text_format():
    reg = Registry()
    c = reg.counter("t_requests_total", "Requests.", ["code"])
    h = reg.histogram("t_latency_seconds", "Latency.")
    c.inc(code="200")
    c.inc(2, code="413")
    for v in (0.0005, 0.003, 0.003, 7.0):
        h.observe(v)
    text = reg.render()
    assert "# TYPE t_requests_total counter" in text
    assert "# TYPE t_latency_seconds histogram" in text
    values = parse_text(text)
    assert values['t_requests_total{code="413"}'] == 2
    assert values['t_latency_seconds_bucket{le="0.001"}'] == 1
    assert values['t_latency_seconds_bucket{le="0.005"}'] == 3
    assert values['t_latency_seconds_bucket{le="5"}'] == 3
    assert values['t_latency_seconds_bucket{le="+Inf"}'] == 4
    assert values["t_latency_seconds_count"] == 4
    assert values["t_latency_seconds_sum"] == pytest.approx(7.0065)


def test_broadcast_gives_slow_readers_the_newest_value():
    async def scenario():
        b = Broadcast()
        b.bind(asyncio.get_running_loop())
        waiter = asyncio.ensure_future(b.wait_newer(0, timeout=5))
        await asyncio.sleep(0)
        producer = threading.Thread(target=lambda: [b.publish(i) for i in range(1, 6)])
        producer.start()
        first = await waiter  # woken by a publish from another thread
        producer.join()
        behind = await b.wait_newer(first[0] if first[0] < 5 else 0, timeout=1)
        nothing = await b.wait_newer(5, timeout=0.05)
        return first, behind, nothing

    first, behind, nothing = asyncio.run(scenario())
    assert 1 <= first[0] <= 5 and first[1] == first[0]
    assert behind == (5, 5)  # a reader that fell behind gets the newest, nothing queued
    assert nothing is None


# -- the running service, camera = a video file ----------------------------------------------
@pytest.fixture(scope="module")
def served(footage, smiles_onnx, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_video")
    (root / "secret.txt").write_text("TOP-SECRET")
    captures = root / "captures"
    with ServeProcess(["--model", smiles_onnx, "--camera", footage.video, "--loop",
                       "--threads", "1", "--captures", captures,
                       "--threshold", footage.threshold, "--capture-frames", 3,
                       "--cooldown", 0.5, "--smooth", "none", "--token", TOKEN,
                       "--max-upload-mb", 0.25]) as proc:
        proc.captures = captures
        proc.root = root
        yield proc


def _auth(url):
    return url + ("&" if "?" in url else "?") + "token=" + TOKEN


def test_latest_matches_runtime_on_the_same_frame(served, footage):
    def scored_face():
        status, data = get_json(_auth(served.url + "/api/latest"))
        assert status == 200
        return data if data["faces"] else None

    data = wait_until(scored_face, 60, what="a scored frame with a face")
    assert isinstance(data["frame"], int) and data["time"] > 0
    assert data["levels"] == list(footage.runtime.levels)
    position = data["position"]
    expected = footage.runtime.score(footage.frames[position]).faces
    assert len(data["faces"]) == len(expected)
    for got, want in zip(data["faces"], expected, strict=True):
        assert got["box"] == list(want.box)
        assert got["level"] == want.level_name
        assert got["probabilities"] == pytest.approx(want.probabilities, abs=1e-4)
        assert got["expected_score"] == pytest.approx(want.expected_score, abs=1e-3)
        assert got["smoothed_score"] == pytest.approx(want.expected_score, abs=1e-3)  # none


def test_events_carry_each_scored_frame(served, footage):
    events = read_events(_auth(served.url + "/api/events"), 6)
    assert len(events) == 6, events  # a stream that ends early is a failure, not a pass
    frames = [e["frame"] for e in events]
    assert frames == sorted(set(frames)), frames
    for event in events:
        assert set(event) >= {"time", "frame", "position", "faces", "best", "timings_ms"}
        position = event["position"]
        assert (len(event["faces"]) > 0) == (footage.scores[position] is not None)
        for face in event["faces"]:
            assert set(face) >= {"box", "level", "probabilities", "expected_score",
                                 "smoothed_score", "track"}


def test_stream_shows_frames_with_face_boxes(served):
    parts = read_mjpeg(_auth(served.url + "/stream.mjpg"), 25)
    frames = [cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR) for p in parts]
    assert all(f is not None and f.shape == (480, 640, 3) for f in frames)
    assert max(green_pixels(f) for f in frames) > 300  # boxes were drawn on face frames


def test_auto_capture_writes_the_expected_frames(served, footage, smiles_onnx):
    wait_until(lambda: len(list(served.captures.glob("*.json"))) >= 3, 120,
               what="three auto-captures")
    status, listing = get_json(_auth(served.url + "/api/captures"))
    assert status == 200 and listing["enabled"] and listing["threshold"] == footage.threshold
    sha = hashlib.sha256(Path(smiles_onnx).read_bytes()).hexdigest()
    sidecars = sorted(served.captures.glob("*.json"))
    times = []
    for path in sidecars:
        assert CAPTURE_NAME.match(path.name)
        sidecar = json.loads(path.read_text())
        image_path = path.with_suffix(".jpg")
        assert image_path.is_file(), f"sidecar without its image: {path}"
        position = sidecar["position"]
        # the frame that was saved is the decoded video frame that triggered, at full size
        image = cv2.imread(str(image_path))
        assert image.shape == (sidecar["height"], sidecar["width"], 3) == (480, 640, 3)
        assert np.abs(image.astype(int) - footage.frames[position]).mean() < 3
        # ... and it really scored at/above the threshold (checked independently here)
        assert footage.scores[position] is not None
        assert footage.scores[position] >= footage.threshold
        trigger = sidecar["trigger"]
        assert trigger["consecutive_frames"] >= 3 and trigger["threshold"] == footage.threshold
        face = next(f for f in sidecar["faces"] if f["track"] == trigger["track"])
        assert face["smoothed_score"] >= footage.threshold
        assert face["expected_score"] == pytest.approx(footage.scores[position], abs=1e-3)
        assert sidecar["model"]["sha256"] == sha
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}", sidecar["time"])
        times.append(sidecar["timestamp"])
    assert all(b - a >= 0.5 for a, b in zip(times, times[1:], strict=False))  # cool-down
    listed = {c["name"] for c in listing["captures"]}
    assert listed <= {p.stem for p in sidecars}
    name = listing["captures"][0]["name"] + ".jpg"
    status, _, body = http(_auth(served.url + "/captures/" + name))
    assert status == 200 and body == (served.captures / name).read_bytes()
    # atomic writes: no temporary files left beside the captures
    assert not [p for p in served.captures.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("path", [
    "/captures/../secret.txt", "/captures/..%2Fsecret.txt", "/captures/%2e%2e%2fsecret.txt",
    "/captures/..%5Csecret.txt", "/captures/%2e%2e/secret.txt", "/static/../secret.txt",
    "/static/..%2F..%2Fsecret.txt", "/captures/.secret.txt", "/captures/nothing.jpg",
])
def test_capture_paths_cannot_escape(served, path):
    status, _, body = http(_auth(served.url + path))
    assert status in (400, 403, 404)
    assert b"TOP-SECRET" not in body


def test_upload_is_scored_like_the_runtime(served, footage):
    from edge_smw.images import decode_image_bytes

    index = next(i for i, s in enumerate(footage.scores) if s is not None)
    data = footage.jpeg(index)
    status, _, body = http(_auth(served.url + "/api/score"), data=data,
                           headers={"Content-Type": "image/jpeg"})
    assert status == 200, body
    result = json.loads(body)
    want = footage.runtime.score(decode_image_bytes(data)).faces
    assert [f["box"] for f in result["faces"]] == [list(f.box) for f in want]
    assert result["faces"][0]["probabilities"] == pytest.approx(want[0].probabilities, abs=1e-4)

    async def multipart():
        import aiohttp

        form = aiohttp.FormData()
        form.add_field("image", data, filename="face.jpg", content_type="image/jpeg")
        async with aiohttp.ClientSession() as session, session.post(
                served.url + "/api/score", data=form,
                headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            return resp.status, await resp.json()

    status, result = asyncio.run(multipart())
    assert status == 200
    assert result["faces"][0]["probabilities"] == pytest.approx(want[0].probabilities, abs=1e-4)


def test_bad_uploads_are_rejected(served, footage):
    from PIL import Image

    url = _auth(served.url + "/api/score")
    jpeg = footage.jpeg(0)
    big = np.random.default_rng(0).integers(0, 255, (600, 800, 3), np.uint8)
    oversized = cv2.imencode(".png", big)[1].tobytes()
    assert len(oversized) > 0.25 * 1024 * 1024
    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, "PNG")  # 81 Mpixel, a few KB compressed
    cases = {
        "oversized": (oversized, "image/png", 413),
        "not an image": (b"hello, I am text", "image/jpeg", 415),
        "truncated": (jpeg[: len(jpeg) // 3], "image/jpeg", 415),
        "pixel bomb": (bomb.getvalue(), "image/png", 415),
        "empty": (b"", "image/jpeg", 400),
    }
    for what, (data, ctype, expected) in cases.items():
        status, _, body = http(url, data=data, headers={"Content-Type": ctype}, method="POST")
        assert status == expected, (what, status, body)
        assert json.loads(body)["error"], what
    values = metrics(served.url, TOKEN)
    assert values['edge_smw_score_requests_total{code="415"}'] >= 3


def test_token_is_enforced(served):
    for path in ("/api/latest", "/metrics", "/healthz", "/api/captures", "/stream.mjpg"):
        assert http(served.url + path)[0] == 401, path
        assert http(served.url + path + "?token=wrong")[0] == 401, path
    assert http(served.url + "/api/latest",
                headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert http(served.url + "/api/latest", headers={"X-Edge-Smw-Token": TOKEN})[0] == 200
    assert http(served.url + "/api/score", data=b"x")[0] == 401
    status, _, page = http(served.url + "/")  # the page shell carries no data
    assert status == 200 and b"stream" in page
    assert http(served.url + "/static/app.js")[0] == 200


def test_health_and_metrics(served):
    status, health = get_json(_auth(served.url + "/healthz"))
    assert status == 200 and health["status"] == "ok"
    assert health["camera"]["state"] == "live" and health["camera"]["frames"] > 0
    assert health["model"]["levels"] == ["not_smiling", "smiling"]
    values = metrics(served.url, TOKEN)
    for name in ("edge_smw_frames_captured_total", "edge_smw_frames_scored_total",
                 "edge_smw_frames_dropped_total", "edge_smw_captures_total",
                 "edge_smw_camera_reconnects_total", "edge_smw_camera_up"):
        assert name in values, name
    assert values["edge_smw_frames_captured_total"] >= values["edge_smw_frames_scored_total"] > 0
    assert values["edge_smw_camera_up"] == 1
    assert values['edge_smw_stage_latency_seconds_count{stage="total"}'] > 0
    buckets = [v for k, v in values.items()
               if k.startswith('edge_smw_stage_latency_seconds_bucket{stage="infer"')]
    assert buckets == sorted(buckets) and buckets[-1] == values[
        'edge_smw_stage_latency_seconds_count{stage="infer"}']


# -- camera = a folder of images; clean stop on SIGTERM with clients attached ------------------
def test_folder_camera_and_clean_sigterm(footage, smiles_onnx, tmp_path):
    import signal

    folder = footage.write_folder(tmp_path / "frames", step=2)
    captures = tmp_path / "captures"
    proc = ServeProcess(["--model", smiles_onnx, "--camera", folder, "--loop", "--fps", 8,
                         "--threads", "1", "--captures", captures,
                         "--threshold", footage.threshold, "--capture-frames", 2,
                         "--cooldown", 0, "--smooth", "window", "--smooth-window", 2])
    try:
        def with_face():
            data = get_json(proc.url + "/api/latest")[1]
            return data if data["faces"] else None

        data = wait_until(with_face, 60, what="a scored image with a face")
        assert re.fullmatch(r"frame\d{4}\.png", data["position"])
        index = int(data["position"][5:9])
        want = footage.runtime.score(cv2.imread(str(folder / data["position"]))).faces
        assert data["faces"][0]["probabilities"] == pytest.approx(want[0].probabilities,
                                                                  abs=1e-4)
        assert footage.scores[index] is not None
        wait_until(lambda: list(captures.glob("*.json")), 60, what="an auto-capture")
        # clients attached while stopping: they must not hold the process up
        stream = threading.Thread(target=lambda: read_mjpeg(proc.url + "/stream.mjpg", 10**6),
                                  daemon=True)
        events = threading.Thread(target=lambda: read_events(proc.url + "/api/events", 10**6),
                                  daemon=True)
        stream.start()
        events.start()
        time.sleep(1.0)
        rc = proc.stop(signal.SIGTERM, timeout=60)
    finally:
        proc.stop()
    assert rc == 0, proc.log()
    assert "stopped cleanly" in proc.log()
    names = sorted(p.name for p in captures.iterdir())
    assert names and not [n for n in names if n.startswith(".")]  # nothing half-written
    stems = {Path(n).stem for n in names}
    for stem in stems:
        assert (captures / f"{stem}.jpg").is_file() and (captures / f"{stem}.json").is_file()
        sidecar = json.loads((captures / f"{stem}.json").read_text())
        face = next(f for f in sidecar["faces"] if f["track"] == sidecar["trigger"]["track"])
        assert face["smoothed_score"] >= footage.threshold
        assert sidecar["source"] == str(folder)


def test_serve_imports_no_torch(tmp_path):
    import subprocess
    import sys

    code = ("import sys, edge_smw.serve.app, edge_smw.cli.serve; "
            "bad = [m for m in ('torch', 'torchvision', 'timm') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ))
    assert result.returncode == 0, result.stdout + result.stderr
