"""Clients that misbehave: thousands that come and go while no frame arrives, viewers that
vanish or stop reading, uploads that stall, and malformed or oversized requests.

All of it on loopback, against a real server: ``edge-smw serve`` in a subprocess, or the same
``Service`` and aiohttp app in this process where a test needs a short timeout setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.faults.support import raw_request, status_of
from tests.serve_support import ServeProcess, get_json, http, metrics, wait_until

pytestmark = pytest.mark.faults


def _noise_folder(folder: Path, count: int = 6, seed: int = 0) -> Path:
    """Frames of noise: no face, and JPEGs of a few hundred KB (they fill socket buffers)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        cv2.imwrite(str(folder / f"noise{i:02d}.png"),
                    rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    return folder


async def _open_and_close(port: int, path: str, abort: bool) -> bool:
    """One client: ask for a long-lived response, read its headers, go away (FIN or RST)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        return head.startswith(b"HTTP/1.1 200")
    finally:
        if abort:  # vanish: reset the connection without a goodbye
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _many_clients(port: int, path: str, total: int, at_once: int = 200) -> int:
    gate = asyncio.Semaphore(at_once)

    async def one(i: int) -> bool:
        async with gate:
            return await _open_and_close(port, path, abort=i % 2 == 1)

    results = await asyncio.gather(*(one(i) for i in range(total)))
    return sum(results)


def test_2000_viewers_come_and_go_while_no_frame_arrives(smiles_onnx, tmp_path):
    """The camera has ended: no new frame will ever wake the handlers, yet each one must
    notice its client left (closed or reset) and let go of its viewer slot."""
    folder = _noise_folder(tmp_path / "frames", count=3)
    with ServeProcess(["--model", smiles_onnx, "--camera", folder, "--fps", 20,
                       "--threads", 1]) as proc:
        port = int(proc.url.rsplit(":", 1)[1])
        wait_until(lambda: get_json(proc.url + "/healthz")[1]["camera"]["state"] == "ended", 30,
                   what="the folder to play to its end")
        growth = []
        for _ in range(2):  # the first wave sets the allocator's high-water mark
            rss_before = proc.rss_kb()
            ok = asyncio.run(_many_clients(port, "/stream.mjpg", 2000))
            assert ok == 2000
            ok = asyncio.run(_many_clients(port, "/api/events", 400))
            assert ok == 400
            wait_until(lambda: metrics(proc.url)["edge_smw_stream_viewers"] == 0, 20,
                       what="every stream handler to notice its client left")
            wait_until(lambda: metrics(proc.url)["edge_smw_event_clients"] == 0, 20,
                       what="every event handler to notice its client left")
            growth.append(proc.rss_kb() - rss_before)
        # Nothing is held per departed client: a second wave of 2,400 clients leaves memory
        # where the first left it (a leak of even 20 KB per client would add 48 MB).
        assert growth[1] < 40_000, f"RSS grew {growth} KB over two waves"
        assert get_json(proc.url + "/api/latest")[0] == 200
        assert proc.stop() == 0


# -- the same service in this process, with short timeouts ------------------------------------
class InProcess:
    """``Service`` + the aiohttp app on 127.0.0.1, in this test's event loop."""

    def __init__(self, model: Path, camera: Path, **options) -> None:
        from edge_smw.serve.service import ServeOptions, Service

        self.service = Service(ServeOptions(model=model, camera=str(camera), loop=True,
                                            threads=1, **options))

    async def __aenter__(self) -> InProcess:
        from aiohttp import web

        from edge_smw.serve.app import build_app

        self.service.start()
        self.runner = web.AppRunner(build_app(self.service), access_log=None,
                                    shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.service.stop)
        await self.runner.cleanup()

    async def until(self, predicate, timeout: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            await asyncio.sleep(0.05)


def test_a_viewer_that_stops_reading_is_dropped_and_others_keep_getting_frames(smiles_onnx,
                                                                               tmp_path):
    folder = _noise_folder(tmp_path / "frames")

    async def scenario() -> None:
        async with InProcess(smiles_onnx, folder, fps=20.0,
                             stream_write_timeout_s=1.0) as server:
            service = server.service
            loop = asyncio.get_running_loop()
            stalled = socket.socket()  # a peer gone silent: a tiny window, never read
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.setblocking(False)
            await loop.sock_connect(stalled, ("127.0.0.1", server.port))
            await loop.sock_sendall(stalled, b"GET /stream.mjpg HTTP/1.1\r\n"
                                             b"Host: 127.0.0.1\r\n\r\n")
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await server.until(lambda: service.viewers == 2, 20, "two viewers")
            received = 0

            async def keep_reading() -> None:
                nonlocal received
                while True:
                    received += len(await reader.read(1 << 16))

            reading = asyncio.ensure_future(keep_reading())
            try:
                await server.until(lambda: service.viewers == 1, 30,
                                   "the silent viewer to be dropped")
                sent = service.m_stream_sent.value()
                before = received
                await server.until(lambda: service.m_stream_sent.value() > sent + 5, 30,
                                   "frames to flow to the viewer that reads")
                assert received > before
            finally:
                reading.cancel()
                writer.close()
                stalled.close()
            await server.until(lambda: service.viewers == 0, 20, "the last viewer to leave")

    asyncio.run(scenario())


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def test_stalled_uploads_time_out_and_free_their_slots(smiles_onnx, tmp_path):
    folder = _noise_folder(tmp_path / "frames", count=2)
    body = _png(np.full((120, 160, 3), 90, np.uint8))

    async def post(port: int, data: bytes) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /api/score HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: image/png\r\nContent-Length: " + str(len(data)).encode()
                     + b"\r\nConnection: close\r\n\r\n" + data)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 60)
        writer.close()
        return int(head.split()[1])

    async def scenario() -> None:
        async with InProcess(smiles_onnx, folder, fps=5.0, upload_queue=2,
                             upload_timeout_s=1.0) as server:
            stalled = []
            for _ in range(2):  # each promises 100 KB and sends 10 bytes
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(b"POST /api/score HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
                             + body[:10])
                await writer.drain()
                stalled.append((reader, writer))
            answers = [await asyncio.wait_for(r.readuntil(b"\r\n"), 30) for r, _ in stalled]
            assert all(b" 408 " in a for a in answers), answers
            assert await post(server.port, body) == 200  # the slots are free again
            for _, writer in stalled:
                writer.close()
            requests = server.service.m_requests
            assert requests.value(code="408") == 2 and requests.value(code="200") == 1

    asyncio.run(scenario())


# -- malformed and oversized requests --------------------------------------------------------
@pytest.fixture(scope="module")
def served(smiles_onnx, tmp_path_factory):
    folder = _noise_folder(tmp_path_factory.mktemp("frames"), count=3)
    with ServeProcess(["--model", smiles_onnx, "--camera", folder, "--loop", "--fps", 5,
                       "--threads", 1, "--max-upload-mb", 1,
                       "--captures", tmp_path_factory.mktemp("captures")]) as proc:
        proc.port = int(proc.url.rsplit(":", 1)[1])
        yield proc


def _request(method: str, path: str, headers: dict[str, str] | None = None,
             body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


MALFORMED = {
    "not http": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64,  # a TLS hello
    "garbage line": b"HELLO THERE\r\n\r\n",
    "bad version": b"GET / HTTP/7.1\r\nHost: 127.0.0.1\r\n\r\n",
    "huge header": _request("GET", "/api/latest", {"X-Pad": "a" * 200_000}),
    "huge url": _request("GET", "/" + "a" * 100_000),
    "negative length": _request("POST", "/api/score", {"Content-Length": "-5"}),
    "length and chunked": _request("POST", "/api/score", {"Content-Length": "5",
                                                          "Transfer-Encoding": "chunked"},
                                   b"0\r\n\r\n"),
    "bad chunk": _request("POST", "/api/score", {"Transfer-Encoding": "chunked",
                                                 "Content-Type": "image/png"},
                          b"zz\r\nabc\r\n0\r\n\r\n"),
    "declared too big": _request("POST", "/api/score", {"Content-Length": "50000000",
                                                        "Content-Type": "image/png"},
                                 b"\x89PNG"),
    "chunked too big": _request("POST", "/api/score", {"Transfer-Encoding": "chunked",
                                                       "Content-Type": "image/png"},
                                b"".join(b"10000\r\n" + b"\0" * 0x10000 + b"\r\n"
                                         for _ in range(20)) + b"0\r\n\r\n"),
    "broken multipart": _request("POST", "/api/score",
                                 {"Content-Type": "multipart/form-data; boundary=XX",
                                  "Content-Length": "40"},
                                 b"--XX\r\nno headers end here" + b"!" * 15),
    "multipart no boundary": _request("POST", "/api/score",
                                      {"Content-Type": "multipart/form-data",
                                       "Content-Length": "4"}, b"abcd"),
    "not an image": _request("POST", "/api/score", {"Content-Type": "image/png",
                                                    "Content-Length": "11"}, b"hello world"),
    "empty upload": _request("POST", "/api/score", {"Content-Type": "image/png",
                                                    "Content-Length": "0"}),
    "json instead": _request("POST", "/api/score", {"Content-Type": "application/json",
                                                    "Content-Length": "2"}, b"{}"),
    "bad limit": _request("GET", "/api/captures?limit=1e999"),
    "traversal": _request("GET", "/captures/..%2f..%2fetc%2fpasswd"),
    "bad escapes": _request("GET", "/%ff%fe%00"),
    "wrong method": _request("DELETE", "/api/latest"),
    "post to a page": _request("POST", "/api/latest", {"Content-Length": "0"}),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_and_oversized_requests_get_a_4xx(served, name):
    response = raw_request(served.port, MALFORMED[name], timeout=20)
    status = status_of(response)
    assert 400 <= status < 500 or (status == 0 and name == "not http"), (name, response[:300])
    assert http(served.url + "/healthz")[0] in (200, 503)  # still answering


def test_the_server_survived_every_malformed_request(served):
    """Sends every malformed request itself (run alone or after the others), then checks the
    process, its 500 count and its log."""
    for request in MALFORMED.values():
        raw_request(served.port, request, timeout=20)
    assert served.proc.poll() is None
    values = metrics(served.url)
    assert values.get('edge_smw_score_requests_total{code="500"}', 0) == 0
    assert "Traceback" not in served.log() and "Error handling request" not in served.log()
