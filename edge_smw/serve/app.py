"""The web side of ``serve`` (aiohttp): live page, MJPEG, JSON, SSE, uploads, health, metrics.

Long-lived responses (``/stream.mjpg``, ``/api/events``) each wait on the service's
``Broadcast`` for "anything newer than what this client got", so every client is served at
its own pace with the newest frame and none of them can slow the camera threads.
With ``--token``, every endpoint except the page shell and its static files (which carry no
data) needs the token, as ``Authorization: Bearer TOKEN``, ``X-Edge-Smw-Token: TOKEN`` or
``?token=TOKEN`` (the page passes its own ``?token=`` on to its requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

from edge_smw.errors import EdgeSmwError, ImageReadError, InputError
from edge_smw.images import decode_image_bytes
from edge_smw.serve.service import Service

log = logging.getLogger("edge_smw.serve.app")

STATIC_DIR = Path(__file__).resolve().parent / "static"
SERVICE = web.AppKey("service", Service)
TOKEN = web.AppKey("token", str)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
STATE = web.AppKey("state", dict)
PUBLIC_PATHS = ("/", "/index.html", "/favicon.ico")
BOUNDARY = "frame"
SSE_KEEPALIVE_S = 15.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, default=str))


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status=status)


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[TOKEN]
    path = request.path
    if not token or path in PUBLIC_PATHS or path.startswith("/static/"):
        return await handler(request)
    given = request.query.get("token") or request.headers.get("X-Edge-Smw-Token", "")
    auth = request.headers.get("Authorization", "")
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        return _error(401, "this server needs its token: Authorization: Bearer TOKEN, "
                           "X-Edge-Smw-Token: TOKEN or ?token=TOKEN")
    return await handler(request)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Package errors become a JSON 4xx naming the problem; HTTP errors pass through as JSON."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return _error(exc.status, exc.text or exc.reason)
        raise
    except ImageReadError as exc:
        return _error(415, str(exc))
    except InputError as exc:
        return _error(400, str(exc))


def build_app(service: Service, *, token: str | None = None) -> web.Application:
    """The aiohttp application for ``service`` (which the caller starts and stops)."""
    app = web.Application(middlewares=[_errors, _auth],
                          client_max_size=service.options.max_upload_bytes)
    app[SERVICE] = service
    app[TOKEN] = token or ""
    app[EXECUTOR] = ThreadPoolExecutor(max_workers=service.options.upload_workers,
                                       thread_name_prefix="edge-smw-upload")
    app[STATE] = {"uploads": 0}
    app.router.add_get("/", index)
    app.router.add_get("/index.html", index)
    app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False)
    app.router.add_get("/stream.mjpg", stream)
    app.router.add_get("/api/latest", latest)
    app.router.add_get("/api/events", events)
    app.router.add_get("/api/captures", captures)
    app.router.add_get("/captures/{name}", capture_file)
    app.router.add_post("/api/score", score)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)

    async def _bind(app: web.Application) -> None:
        service.bind_loop(asyncio.get_running_loop())

    async def _close_pool(app: web.Application) -> None:
        app[EXECUTOR].shutdown(wait=True, cancel_futures=True)

    app.on_startup.append(_bind)
    app.on_cleanup.append(_close_pool)
    return app


# -- handlers ----------------------------------------------------------------------------------
async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def stream(request: web.Request) -> web.StreamResponse:
    """MJPEG: one part per rendered frame, always the newest; a slow client skips frames."""
    service = request.app[SERVICE]
    resp = web.StreamResponse(headers={
        "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
        "Cache-Control": "no-cache, no-store, must-revalidate",
        "Pragma": "no-cache",
    })
    await resp.prepare(request)
    service.viewers += 1
    seq = 0
    try:
        while not service.stopping.is_set():
            got = await service.stream.wait_newer(seq, timeout=1.0)
            if got is None:
                continue
            new_seq, jpeg = got
            if seq and new_seq > seq + 1:
                service.m_stream_skipped.inc(new_seq - seq - 1)
            seq = new_seq
            head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(jpeg)}\r\n\r\n").encode()
            await resp.write(head + jpeg + b"\r\n")
            service.m_stream_sent.inc()
    except ConnectionError:
        pass  # the viewer went away
    finally:
        service.viewers -= 1
    return resp


async def latest(request: web.Request) -> web.StreamResponse:
    return _json(request.app[SERVICE].latest())


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: one ``data:`` JSON per scored frame (newest only when behind)."""
    service = request.app[SERVICE]
    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })
    await resp.prepare(request)
    service.m_event_clients.add(1)
    seq = 0
    try:
        await resp.write(b"retry: 2000\n\n")
        last_write = time.monotonic()
        while not service.stopping.is_set():
            got = await service.events.wait_newer(seq, timeout=1.0)
            if got is None:
                if time.monotonic() - last_write >= SSE_KEEPALIVE_S:
                    await resp.write(b": keep-alive\n\n")
                    last_write = time.monotonic()
                continue
            seq, text = got
            await resp.write(f"id: {seq}\ndata: {text}\n\n".encode())
            last_write = time.monotonic()
    except ConnectionError:
        pass  # the client went away
    finally:
        service.m_event_clients.add(-1)
    return resp


async def captures(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    try:
        limit = max(1, min(200, int(request.query.get("limit", "50"))))
    except ValueError:
        return _error(400, "limit must be a whole number (1..200)")
    if service.capture is None:
        return _json({"enabled": False, "count": 0, "captures": []})
    return _json({"enabled": True, "count": service.capture.count,
                  "threshold": service.capture.options.threshold,
                  "captures": service.capture.list(limit)})


async def capture_file(request: web.Request) -> web.StreamResponse:
    """A saved capture or its sidecar; only names the service itself writes (no traversal)."""
    service = request.app[SERVICE]
    name = request.match_info["name"]
    path = service.capture.resolve(name) if service.capture is not None else None
    if path is None:
        return _error(404, f"no capture named {name!r}")
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})


async def score(request: web.Request) -> web.StreamResponse:
    """Score an uploaded image: raw body (image/*) or multipart field ``image``/``file``."""
    service = request.app[SERVICE]
    state = request.app[STATE]
    t0 = time.perf_counter()
    limit = service.options.max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        service.m_requests.inc(code="413")
        return _error(413, f"upload of {request.content_length} bytes is over the "
                           f"{limit}-byte limit")
    if state["uploads"] >= service.options.upload_queue:
        service.m_requests.inc(code="503")
        resp = _error(503, "busy scoring other uploads; retry shortly")
        resp.headers["Retry-After"] = "1"
        return resp
    state["uploads"] += 1
    try:
        try:
            data, name = await _read_upload(request)
        except web.HTTPRequestEntityTooLarge:
            service.m_requests.inc(code="413")
            return _error(413, f"upload is over the {limit}-byte limit")
        if data is None:
            service.m_requests.inc(code="400")
            return _error(400, "no image: POST the image as the body (Content-Type image/...) "
                               "or as multipart field 'image'")
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(request.app[EXECUTOR], _decode_and_score,
                                                service, data, name)
        except ImageReadError as exc:
            service.m_requests.inc(code="415")
            return _error(415, str(exc))
        except EdgeSmwError as exc:
            service.m_requests.inc(code="400")
            return _error(400, str(exc))
    finally:
        state["uploads"] -= 1
    service.m_requests.inc(code="200")
    service.m_request_latency.observe(time.perf_counter() - t0)
    return _json(result)


async def _read_upload(request: web.Request) -> tuple[bytes | None, str]:
    if request.content_type.startswith("multipart/"):
        form = await request.post()
        for key in ("image", "file"):
            field = form.get(key)
            if isinstance(field, web.FileField):
                return field.file.read(), field.filename or key
            if isinstance(field, str | bytes) and field:
                return (field.encode() if isinstance(field, str) else field), key
        return None, "upload"
    data = await request.read()
    return (data or None), "upload"


def _decode_and_score(service: Service, data: bytes, name: str) -> dict[str, Any]:
    from PIL import Image, UnidentifiedImageError

    try:  # the header alone says how big the decoded image would be
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
    except (UnidentifiedImageError, OSError, ValueError):
        w = h = 0  # decode_image_bytes below names the problem
    if w * h > service.options.max_upload_pixels:
        raise ImageReadError(name, f"too large ({w}x{h} pixels, limit "
                                   f"{service.options.max_upload_pixels}); downscale it first")
    image = decode_image_bytes(data, name=name)
    return service.score_image(image)


async def healthz(request: web.Request) -> web.StreamResponse:
    ok, data = request.app[SERVICE].health()
    return _json(data, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.StreamResponse:
    return web.Response(text=request.app[SERVICE].metrics.render(),
                        content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


# -- running -----------------------------------------------------------------------------------
async def _serve(service: Service, host: str, port: int, token: str | None,
                 access_log: bool) -> None:
    app = build_app(service, token=token)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=3.0,
                           access_log=logging.getLogger("aiohttp.access") if access_log else None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); is another "
                         "server using the port? choose one with --port") from exc
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows: Ctrl-C only
            loop.add_signal_handler(sig, stop.set)
    for addr in runner.addresses:
        bound_host, bound_port = addr[0], addr[1]
        shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
        print(f"edge-smw serve: listening on http://{shown}:{bound_port}/", flush=True)
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        log.info("stopping: closing the camera, finishing captures in flight")
        await loop.run_in_executor(None, service.stop)
        await runner.cleanup()
        log.info("stopped cleanly")


def run_service(service: Service, *, host: str = "127.0.0.1", port: int = 8080,
                token: str | None = None, access_log: bool = False) -> None:
    """Start ``service`` and serve it until SIGINT/SIGTERM; then stop everything cleanly."""
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        log.warning("listening on %s without --token: anyone who can reach this machine can "
                    "watch the camera and read captures", host)
    service.start()
    try:
        asyncio.run(_serve(service, host, port, token, access_log))
    finally:
        service.stop()
