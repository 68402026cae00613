"""edge-smw serve when the camera is not there: absent at start, late, lost mid-stream, a
folder camera removed and put back, a file that ends.

The mid-stream fault uses a real network camera: an MJPEG-over-HTTP server in this test
process (like an IP camera's ``/video.mjpg``) streaming real face frames, which ends its
stream and then refuses connections for a while, as a camera that drops off the network does.
Every source goes through the same lost -> back-off -> reconnect path.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading

import cv2
import numpy as np
import pytest
from aiohttp import web

from tests.serve_support import (
    ServeProcess,
    get_footage,
    get_json,
    metrics,
    read_mjpeg,
    wait_until,
)

pytestmark = pytest.mark.faults

@pytest.fixture(scope="session")
def footage(smiles_dir, smiles_onnx, tmp_path_factory):
    return get_footage(smiles_dir, smiles_onnx, lambda: tmp_path_factory.mktemp("footage"))


class MjpegCamera:
    """An HTTP MJPEG camera on 127.0.0.1 that can be unplugged (``down``) and plugged back."""

    def __init__(self, frames, fps: float = 10.0) -> None:
        self.jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
                      for f in frames]
        self.fps = fps
        self.up = threading.Event()
        self.up.set()
        self.connections = 0
        self.refused = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/video.mjpg", self._stream)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/video.mjpg"
        self._ready.set()
        self._loop.run_forever()

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if not self.up.is_set():
            self.refused += 1
            return web.Response(status=503, text="camera offline")
        self.connections += 1
        resp = web.StreamResponse(headers={
            "Content-Type": "multipart/x-mixed-replace; boundary=frame"})
        await resp.prepare(request)
        i = 0
        try:
            while self.up.is_set():
                jpeg = self.jpegs[i % len(self.jpegs)]
                await resp.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                 + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                i += 1
                await asyncio.sleep(1 / self.fps)
        except ConnectionError:
            pass
        return resp  # the stream ends: the camera is gone

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _brightness(jpeg: bytes) -> float:
    return float(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE).mean())


def test_camera_lost_mid_stream_is_reported_and_reconnected(footage, smiles_onnx):
    faces = [f for f, s in zip(footage.frames, footage.scores, strict=True) if s is not None]
    camera = MjpegCamera(faces[:12])
    try:
        with ServeProcess(["--model", smiles_onnx, "--camera", camera.url, "--threads", 1]) as proc:
            wait_until(lambda: metrics(proc.url)["edge_smw_frames_scored_total"] >= 5, 60,
                       what="frames scored from the network camera")
            live_frame = read_mjpeg(proc.url + "/stream.mjpg", 1)[0]
            camera.up.clear()  # unplug: the stream ends, reconnects are refused

            def lost():
                status, health = get_json(proc.url + "/healthz")
                return (status, health) if health["camera"]["state"] == "lost" else None

            status, health = wait_until(lost, 60, what="/healthz to report the camera lost")
            assert status == 503 and health["status"] == "degraded"
            assert health["camera"]["source"] == camera.url
            assert health["camera"]["last_error"]
            assert get_json(proc.url + "/api/latest")[1]["camera"] == "lost"
            # viewers see it too: the last frame again, darkened, with a "camera lost" banner
            # (a new viewer first gets the newest picture, which may still be the live one)
            live = _brightness(live_frame)
            shown = read_mjpeg(proc.url + "/stream.mjpg", 2, timeout=30,
                               until=lambda jpeg: _brightness(jpeg) < 0.6 * live)
            assert _brightness(shown[-1]) < 0.6 * live, [_brightness(j) for j in shown]
            wait_until(lambda: camera.refused >= 1, 60, what="a reconnect attempt")
            during = metrics(proc.url)
            assert during["edge_smw_camera_lost_total"] >= 1
            assert during["edge_smw_camera_up"] == 0
            assert proc.proc.poll() is None  # the service stays up

            camera.up.set()  # plugged back in
            wait_until(lambda: get_json(proc.url + "/healthz")[0] == 200, 60,
                       what="/healthz to report the camera live again")
            wait_until(lambda: metrics(proc.url)["edge_smw_frames_scored_total"]
                       > during["edge_smw_frames_scored_total"] + 3, 60,
                       what="scoring to resume after the reconnect")
            after = metrics(proc.url)
            assert after["edge_smw_camera_reconnects_total"] >= 1
            assert after["edge_smw_camera_up"] == 1
            assert camera.connections >= 2
            health = get_json(proc.url + "/healthz")[1]
            assert health["camera"]["reconnects"] >= 1 and health["camera"]["losses"] >= 1
            assert proc.stop() == 0
    finally:
        camera.close()


def test_wait_for_camera_starts_and_picks_it_up(footage, smiles_onnx, tmp_path):
    later = tmp_path / "later.mp4"
    with ServeProcess(["--model", smiles_onnx, "--camera", later, "--loop", "--threads", 1,
                       "--wait-for-camera"]) as proc:
        status, health = get_json(proc.url + "/healthz")
        assert status == 503 and health["camera"]["state"] == "waiting"
        assert "later.mp4" in health["camera"]["last_error"]
        staged = tmp_path / ".later.partial"
        shutil.copyfile(footage.video, staged)
        os.replace(staged, later)  # the camera appears
        wait_until(lambda: get_json(proc.url + "/healthz")[0] == 200, 60,
                   what="the late camera to be opened")
        wait_until(lambda: metrics(proc.url)["edge_smw_frames_scored_total"] > 0, 60,
                   what="frames scored")
        assert proc.stop() == 0


def test_absent_video_without_wait_is_an_error(smiles_onnx, tmp_path, capsys):
    from edge_smw.cli.main import main

    rc = main(["serve", "--model", str(smiles_onnx), "--camera", str(tmp_path / "none.mp4"),
               "--port", "0", "--threads", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "none.mp4" in err and "not found" in err


def test_folder_camera_removed_then_restored_reconnects(footage, smiles_onnx, tmp_path):
    folder = footage.write_folder(tmp_path / "frames", step=4)
    away = tmp_path / "unplugged"
    with ServeProcess(["--model", smiles_onnx, "--camera", folder, "--loop", "--fps", 10,
                       "--threads", 1]) as proc:
        wait_until(lambda: metrics(proc.url)["edge_smw_frames_scored_total"] >= 3, 30,
                   what="frames scored from the folder")
        folder.rename(away)  # the card is pulled, or the share unmounted

        def lost():
            status, health = get_json(proc.url + "/healthz")
            return (status, health) if health["camera"]["state"] == "lost" else None

        status, health = wait_until(lost, 30, what="/healthz to report the folder lost")
        assert status == 503 and str(folder) in health["camera"]["last_error"]
        away.rename(folder)  # and put back
        wait_until(lambda: get_json(proc.url + "/healthz")[0] == 200, 30,
                   what="/healthz to report the folder live again")
        before = metrics(proc.url)["edge_smw_frames_scored_total"]
        wait_until(lambda: metrics(proc.url)["edge_smw_frames_scored_total"] > before + 2, 30,
                   what="scoring to resume")
        health = get_json(proc.url + "/healthz")[1]
        assert health["camera"]["reconnects"] >= 1 and health["camera"]["losses"] >= 1
        assert proc.stop() == 0
    assert "Traceback" not in proc.log()


def test_a_file_that_ends_keeps_the_service_up(footage, smiles_onnx):
    with ServeProcess(["--model", smiles_onnx, "--camera", footage.video, "--fps", 50,
                       "--threads", 1]) as proc:
        def ended():
            status, health = get_json(proc.url + "/healthz")
            return (status, health) if health["camera"]["state"] == "ended" else None

        status, health = wait_until(ended, 30, what="the video to end")
        assert status == 503 and "played to its end" in health["camera"]["last_error"]
        assert get_json(proc.url + "/api/latest")[0] == 200  # the last result is still served
        assert read_mjpeg(proc.url + "/stream.mjpg", 1, timeout=10)  # and the last picture
        assert proc.stop() == 0
