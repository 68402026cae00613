"""A bounded load test of edge-smw serve on 127.0.0.1: many viewers plus scoring uploads.

50 MJPEG viewers, 5 viewers that never read (slow clients), one SSE client and 20 uploads
per second to POST /api/score, for a few seconds (EDGE_SMW_LOAD_SECONDS=30 runs the long
variant, which is skipped otherwise). It must end with no failed request, every viewer served,
scoring still going, and the server's resident memory grown by less than a bound.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import aiohttp
import cv2
import pytest

from tests.serve_support import ServeProcess, get_footage, metrics
from tests.skips import machine_reason

VIEWERS = 50
SLOW_VIEWERS = 5
UPLOADS_PER_S = 20
SHORT_SECONDS = 4.0
RSS_GROWTH_LIMIT_MB = 64


@pytest.fixture(scope="session")
def footage(smiles_dir, smiles_onnx, tmp_path_factory):
    return get_footage(smiles_dir, smiles_onnx, lambda: tmp_path_factory.mktemp("footage"))


def _upload(footage) -> bytes:
    """A half-size frame with a face the Runtime finds (cheap to score: the load is HTTP)."""
    for i, s in enumerate(footage.scores):
        if s is None:
            continue
        small = cv2.resize(footage.frames[i], (320, 240), interpolation=cv2.INTER_AREA)
        if footage.runtime.score(small).faces:
            return cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    pytest.fail("no half-size frame with a detectable face")


async def _viewer(session, url, deadline, stats):
    frames = 0
    tail = b""
    async with session.get(url + "/stream.mjpg") as resp:
        assert resp.status == 200
        async for chunk in resp.content.iter_any():
            data = tail + chunk
            frames += data.count(b"Content-Type: image/jpeg")
            tail = data[-32:]
            if time.monotonic() >= deadline:
                break
    stats["viewer_frames"].append(frames)


def _slow_viewer(port: int) -> socket.socket:
    """A client that asks for the stream and then never reads (tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return sock


async def _events(session, url, deadline, stats):
    async with session.get(url + "/api/events") as resp:
        assert resp.status == 200
        async for line in resp.content:
            if line.startswith(b"data: "):
                stats["events"] += 1
            if time.monotonic() >= deadline:
                break


async def _upload_one(session, url, data, stats):
    t0 = time.perf_counter()
    try:
        async with session.post(url + "/api/score", data=data,
                                headers={"Content-Type": "image/jpeg"}) as resp:
            body = await resp.json()
            stats["uploads"].append(resp.status)
            if resp.status == 200:
                stats["faces"] += len(body["faces"])
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        stats["errors"].append(repr(exc))
    stats["upload_s"].append(time.perf_counter() - t0)


async def _load(proc: ServeProcess, seconds: float, upload: bytes) -> dict:
    url = proc.url
    port = int(url.rsplit(":", 1)[1])
    stats = {"viewer_frames": [], "uploads": [], "errors": [], "faces": 0, "events": 0,
             "upload_s": [], "rss_kb": []}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=timeout) as session:
        slow = [_slow_viewer(port) for _ in range(SLOW_VIEWERS)]
        deadline = time.monotonic() + seconds
        tasks = [asyncio.ensure_future(_viewer(session, url, deadline, stats))
                 for _ in range(VIEWERS)]
        tasks.append(asyncio.ensure_future(_events(session, url, deadline, stats)))
        uploads = []
        next_upload = time.monotonic()
        next_sample = time.monotonic()
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_upload:
                uploads.append(asyncio.ensure_future(_upload_one(session, url, upload, stats)))
                next_upload += 1.0 / UPLOADS_PER_S
            if now >= next_sample:
                stats["rss_kb"].append((now, proc.rss_kb()))
                next_sample += 0.25
            await asyncio.sleep(min(next_upload, next_sample) - time.monotonic())
        results = await asyncio.gather(*tasks, *uploads, return_exceptions=True)
        stats["errors"] += [repr(r) for r in results if isinstance(r, BaseException)]
        stats["rss_kb"].append((time.monotonic(), proc.rss_kb()))
        for sock in slow:
            sock.close()
    return stats


def run_load_test(footage, smiles_onnx, seconds: float) -> None:
    upload = _upload(footage)
    with ServeProcess(["--model", smiles_onnx, "--camera", footage.video, "--loop",
                       "--fps", 8, "--threads", 1]) as proc:
        before = metrics(proc.url)
        stats = asyncio.run(_load(proc, seconds, upload))
        after = metrics(proc.url)
        alive = proc.proc.poll() is None
        rc = proc.stop()
    samples = stats["rss_kb"]
    start = samples[0][0]
    warm = [kb for t, kb in samples if t - start >= min(1.0, seconds / 4)]
    growth_mb = (max(warm) - warm[0]) / 1024
    n_up = len(stats["uploads"])
    scored = after["edge_smw_frames_scored_total"] - before["edge_smw_frames_scored_total"]
    print(f"\nload {seconds:.0f} s: {VIEWERS} viewers got {min(stats['viewer_frames'])}.."
          f"{max(stats['viewer_frames'])} frames each, {SLOW_VIEWERS} never-reading viewers, "
          f"{stats['events']} SSE events, {n_up} uploads "
          f"(median {sorted(stats['upload_s'])[n_up // 2] * 1000:.0f} ms), "
          f"scored {scored:.0f} camera frames, viewer-skipped frames "
          f"{after['edge_smw_stream_frames_skipped_total']:.0f}, RSS {warm[0] / 1024:.0f} -> "
          f"{warm[-1] / 1024:.0f} MB (max growth {growth_mb:.1f} MB)")
    assert alive and rc == 0, proc.log()
    assert stats["errors"] == [], stats["errors"][:5]
    assert n_up >= UPLOADS_PER_S * seconds * 0.5  # the load really was generated
    assert set(stats["uploads"]) == {200}, sorted(set(stats["uploads"]))
    assert stats["faces"] == n_up  # every upload was really scored
    assert len(stats["viewer_frames"]) == VIEWERS and min(stats["viewer_frames"]) >= 1
    assert stats["events"] >= 1
    # scoring went on while 5 clients never read their stream
    assert scored > 2
    assert growth_mb < RSS_GROWTH_LIMIT_MB, f"RSS grew {growth_mb:.1f} MB under load"


def test_load_short(footage, smiles_onnx):
    run_load_test(footage, smiles_onnx, SHORT_SECONDS)


@pytest.mark.skipif(not os.environ.get("EDGE_SMW_LOAD_SECONDS"),
                    reason=machine_reason("opt-in long load test: set EDGE_SMW_LOAD_SECONDS "
                                          "(e.g. 30) to run it"))
def test_load_long(footage, smiles_onnx):
    run_load_test(footage, smiles_onnx, float(os.environ["EDGE_SMW_LOAD_SECONDS"]))
