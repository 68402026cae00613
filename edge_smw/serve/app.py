"""The web side of ``serve`` (aiohttp): live page, MJPEG, JSON, SSE, uploads, health, metrics.

Long-lived responses (``/stream.mjpg``, ``/api/events``) each wait on the service's
``Broadcast`` for "anything newer than what this client got", so every client is served at
its own pace with the newest frame and none of them can slow the camera threads; a client
that went away, or stopped reading, is noticed and let go even while no frame arrives.
With a token (``--token-file``, ``$EDGE_SMW_TOKEN`` or ``--token``), every endpoint except the
page shell and its static files (which carry no data) needs it, as ``Authorization: Bearer
TOKEN``, ``X-Edge-Smw-Token: TOKEN`` or ``?token=TOKEN`` (the page passes its own ``?token=``
on to its requests); it is never logged.
Against DNS rebinding, only requests whose ``Host`` is a name this server is bound to (or one
added with ``--allow-host``) are answered, and POSTs from another origin are refused, so a
web page on another site can neither read the camera nor use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from edge_smw.errors import EdgeSmwError, ImageReadError, InputError
from edge_smw.images import decode_image_bytes
from edge_smw.serve.service import Service

log = logging.getLogger("edge_smw.serve.app")

STATIC_DIR = Path(__file__).resolve().parent / "static"
SERVICE = web.AppKey("service", Service)
TOKEN = web.AppKey("token", str)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
STATE = web.AppKey("state", dict)
HOSTS = web.AppKey("hosts", frozenset)
PUBLIC_PATHS = ("/", "/index.html", "/favicon.ico")
BOUNDARY = "frame"
SSE_KEEPALIVE_S = 15.0
# How often a long-lived response with nothing to send checks that its client is still there.
IDLE_CHECK_S = 1.0
TOKEN_ENV = "EDGE_SMW_TOKEN"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, default=str))


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status=status)


def host_name(value: str) -> str:
    """The name part of a ``Host`` header or URL netloc: lower case, no port, no brackets."""
    value = value.strip().lower().rstrip(".")
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        return value.rsplit(":", 1)[0].rstrip(".")
    return value  # a bare name, or a bare IPv6 address


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def allowed_hosts(host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The ``Host`` names this server answers to when bound to ``host``.

    Loopback names, the bound name and ``extra`` (``--allow-host``). Bound to every interface
    (0.0.0.0 or ::), the machine's own name (and name.local) too; IP addresses are then
    accepted as they are (see ``_host_ok``).
    """
    names = {*LOOPBACK_HOSTS, host_name(host)} | {host_name(e) for e in extra if e.strip()}
    if host in WILDCARD_HOSTS:
        own = socket.gethostname().lower()
        names |= {own, own + ".local"}
    names.discard("")
    return frozenset(names)


def _host_ok(name: str, hosts: frozenset[str], wildcard: bool) -> bool:
    # An IP literal cannot be rebound: a page from another site never sends it as its Host.
    return name in hosts or (wildcard and _is_ip(name))


def _same_origin(origin: str, request: web.Request) -> bool:
    """Whether an ``Origin`` header names this very server (scheme, host and port)."""
    parts = urlsplit(origin.strip())
    if parts.scheme != request.scheme or not parts.hostname:
        return False  # "null" (sandboxed frames, file://), another scheme, anything malformed
    default = 443 if parts.scheme == "https" else 80
    try:
        origin_port = parts.port or default
    except ValueError:
        return False
    host = request.host or ""
    own = urlsplit(f"//{host}")
    try:
        own_port = own.port or default
    except ValueError:
        return False
    return host_name(parts.netloc) == host_name(host) and origin_port == own_port


@web.middleware
async def _origin(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer only to our own Host names (no DNS rebinding); changes only from our origin."""
    hosts: frozenset[str] = request.app[HOSTS]
    name = host_name(request.host or "")
    if not _host_ok(name, hosts, request.app[STATE]["wildcard"]):
        return _error(421, f"this server does not answer to the host name {name!r}; if that "
                           "is how you reach it, start serve with --allow-host " + (name or "NAME"))
    if request.method not in _SAFE_METHODS:
        origin = request.headers.get("Origin")
        if origin is not None and not _same_origin(origin, request):
            return _error(403, "requests from another web page (Origin "
                               f"{origin.strip()[:100]!r}) are refused")
    return await handler(request)


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
    except (asyncio.CancelledError, ConnectionError):
        raise  # the client went away: nobody to answer
    except Exception as exc:  # a bug or a backend failure: one JSON line, and the log
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the serve log")


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs every malformed HTTP request it answered with 400 as an ERROR with a
    traceback: anyone who can reach the port could fill the disk with them. They become one
    DEBUG line each (the client got its 400 anyway)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            log.debug("malformed request answered with %s: %s", exc.code,
                      " ".join(str(exc.message).split())[:200])
            return False
        return True


class AccessLogger(AbstractAccessLogger):
    """--access-log lines without query strings or headers: the token never reaches a log."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse,
            time: float) -> None:
        self.logger.info('%s "%s %s" %d %s %.3fs', request.remote, request.method,
                         request.path, response.status, response.body_length, time)


def build_app(service: Service, *, token: str | None = None, host: str = "127.0.0.1",
              allow_hosts: Iterable[str] = ()) -> web.Application:
    """The aiohttp application for ``service`` (which the caller starts and stops).

    ``host`` is the address the server is bound to and ``allow_hosts`` further names it is
    reached by: requests for any other ``Host`` get 421 (DNS rebinding).
    """
    app = web.Application(middlewares=[_origin, _errors, _auth],
                          client_max_size=service.options.max_upload_bytes)
    app[SERVICE] = service
    app[TOKEN] = token or ""
    app[HOSTS] = allowed_hosts(host, allow_hosts)
    app[EXECUTOR] = ThreadPoolExecutor(max_workers=service.options.upload_workers,
                                       thread_name_prefix="edge-smw-upload")
    app[STATE] = {"uploads": 0, "wildcard": host in WILDCARD_HOSTS}
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
            got = await service.stream.wait_newer(seq, timeout=IDLE_CHECK_S)
            if got is None:
                if _gone(request):  # no frame (camera lost or ended) and no viewer either
                    break
                continue
            new_seq, jpeg = got
            if seq and new_seq > seq + 1:
                service.m_stream_skipped.inc(new_seq - seq - 1)
            seq = new_seq
            head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(jpeg)}\r\n\r\n").encode()
            if not await _send(request, resp, head + jpeg + b"\r\n"):
                break
            service.m_stream_sent.inc()
    except ConnectionError:
        pass  # the viewer went away
    finally:
        service.viewers -= 1
    return resp


def _gone(request: web.Request) -> bool:
    """Whether the client closed its connection (noticed without writing to it)."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def _send(request: web.Request, resp: web.StreamResponse, data: bytes) -> bool:
    """Write to a long-lived response; False when the client is gone or stopped reading.

    A client that does not take a frame within ``stream_write_timeout_s`` (a peer that
    vanished without closing, or one that never reads) is disconnected, so it cannot hold a
    handler, a viewer slot and its buffered frames forever.
    """
    timeout = request.app[SERVICE].options.stream_write_timeout_s
    try:
        await asyncio.wait_for(resp.write(data), timeout)
    except asyncio.TimeoutError:
        transport = request.transport
        if transport is not None:
            transport.abort()
        return False
    return True


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
        if not await _send(request, resp, b"retry: 2000\n\n"):
            return resp
        last_write = time.monotonic()
        while not service.stopping.is_set():
            got = await service.events.wait_newer(seq, timeout=IDLE_CHECK_S)
            if got is None:
                if _gone(request):
                    break
                if time.monotonic() - last_write >= SSE_KEEPALIVE_S:
                    if not await _send(request, resp, b": keep-alive\n\n"):
                        break
                    last_write = time.monotonic()
                continue
            seq, text = got
            if not await _send(request, resp, f"id: {seq}\ndata: {text}\n\n".encode()):
                break
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
    state["uploads"] += 1  # counted while its body arrives too: slow senders hold a slot
    try:
        try:
            data, name = await asyncio.wait_for(_read_upload(request),
                                                service.options.upload_timeout_s)
        except web.HTTPRequestEntityTooLarge:
            service.m_requests.inc(code="413")
            return _error(413, f"upload is over the {limit}-byte limit")
        except asyncio.TimeoutError:
            service.m_requests.inc(code="408")
            return _error(408, f"the upload did not arrive within "
                               f"{service.options.upload_timeout_s:g} s")
        except (ValueError, AssertionError, HttpProcessingError, web.HTTPBadRequest) as exc:
            service.m_requests.inc(code="400")
            reason = " ".join(str(getattr(exc, "message", exc)).split())[:200]
            return _error(400, f"malformed upload ({reason}); POST the image as the body or "
                               "as multipart field 'image'")
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
    image = decode_image_bytes(data, name=name, max_pixels=service.options.max_upload_pixels)
    return service.score_image(image)


async def healthz(request: web.Request) -> web.StreamResponse:
    ok, data = request.app[SERVICE].health()
    return _json(data, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.StreamResponse:
    return web.Response(text=request.app[SERVICE].metrics.render(),
                        content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


# -- running -----------------------------------------------------------------------------------
def load_token(token: str | None = None, token_file: str | os.PathLike[str] | None = None,
               environ: Mapping[str, str] = os.environ) -> str | None:
    """The access token: ``--token``, else the first line of ``--token-file``, else
    ``$EDGE_SMW_TOKEN``; None when there is none. A file or the environment keeps it out of
    ``ps``; it is never logged."""
    if token is not None and token_file is not None:
        raise InputError("give the token once: --token or --token-file, not both")
    if token_file is not None:
        path = Path(token_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise InputError(f"--token-file {path}: cannot be read ({reason})") from exc
        lines = text.strip().splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            raise InputError(f"--token-file {path} is empty; write the token on its first line")
    elif token is None:
        token = environ.get(TOKEN_ENV) or None
    if token is not None and (not token.strip() or any(c.isspace() for c in token)):
        raise InputError("the token must be one word without spaces (and not empty)")
    return token


async def _serve(service: Service, host: str, port: int, token: str | None,
                 access_log: bool, allow_hosts: Iterable[str]) -> None:
    app = build_app(service, token=token, host=host, allow_hosts=allow_hosts)
    malformed = MalformedRequestFilter()
    logging.getLogger("aiohttp.server").addFilter(malformed)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=3.0,
                           access_log=logging.getLogger("aiohttp.access") if access_log else None,
                           access_log_class=AccessLogger)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise InputError(listen_error(host, port, exc)) from exc
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
        logging.getLogger("aiohttp.server").removeFilter(malformed)
        log.info("stopped cleanly")


def listen_error(host: str, port: int, exc: OSError) -> str:
    """Why ``host:port`` cannot be listened on, blaming the part that is wrong: a name that
    does not resolve or an address not on this machine is the --host, anything else the port."""
    reason = exc.strerror or str(exc)
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return (f"cannot listen on --host {host} ({reason}): give an address of this machine "
                "(127.0.0.1 for this machine only, 0.0.0.0 for every network) or a name that "
                "resolves to one")
    return (f"cannot listen on {host}:{port} ({reason}); is another server using the port? "
            "choose one with --port")


def run_service(service: Service, *, host: str = "127.0.0.1", port: int = 8080,
                token: str | None = None, access_log: bool = False,
                allow_hosts: Iterable[str] = ()) -> None:
    """Start ``service`` and serve it until SIGINT/SIGTERM; then stop everything cleanly."""
    allow_hosts = tuple(allow_hosts)
    if host not in LOOPBACK_HOSTS and not token:
        log.warning("listening on %s without a token: anyone who can reach this machine can "
                    "watch the camera and read captures (set one with --token-file or $%s)",
                    host, TOKEN_ENV)
    service.start()
    try:
        asyncio.run(_serve(service, host, port, token, access_log, allow_hosts))
    finally:
        service.stop()
