"""The local labelling web server (aiohttp), bound to 127.0.0.1 only.

Photos never leave the machine: the page and its API are served on the loopback interface,
need the session's access token (given in the address the CLI prints and opens), answer
only requests whose Host is the loopback address (no DNS rebinding), accept changes only as
JSON from the page's own origin, and open only the files found in PHOTOS_DIR.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import webbrowser
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from edge_smw.atomic import sweep_temp_files
from edge_smw.contract import PreprocessContract
from edge_smw.data.datasets import parse_levels
from edge_smw.detect import with_detector
from edge_smw.errors import EdgeSmwError, ImageReadError, InputError
from edge_smw.label.photos import PathRejected, PhotoAnalyser, PhotoInfo, list_photos
from edge_smw.label.store import (
    SKIPPED,
    CsvOwnerLock,
    LabelStore,
    StaleRevisionError,
    UnknownPhotoError,
)

if TYPE_CHECKING:  # pragma: no cover
    from edge_smw.runtime.runtime import Runtime

log = logging.getLogger("edge_smw.label")

STATIC = Path(__file__).resolve().parent / "static"
HOST = "127.0.0.1"
ORDERS = ("name", "uncertainty", "margin")
DEFAULT_LEVELS = "5"
MAX_LEVELS = 10  # keys 1..9 and 0
# The poster's meaning of a 1..5 score, shown beside the keys.
POSTER_HINTS = ("hate", "dislike", "neutral", "like", "love")
TOKEN_COOKIE = "edge_smw_label"
TOKEN_HEADER = "X-Edge-Smw-Token"
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})


class LabelSession:
    """Everything one ``edge-smw label`` run works on: photos, labels CSV, optional model.

    Owns the CSV (an OS lock) and the model until ``close``.
    """

    def __init__(
        self,
        photos_dir: str | os.PathLike[str],
        *,
        levels: str | Sequence[str] | None = None,
        labels_csv: str | os.PathLike[str] | None = None,
        model: str | os.PathLike[str] | None = None,
        order: str = "name",
        detect: bool | None = None,
        detector: str = "auto",
        backend: str = "auto",
        progress: bool = False,
        token: str | None = None,
    ) -> None:
        self.root = Path(photos_dir)
        if not self.root.is_dir():
            raise InputError(f"PHOTOS_DIR {self.root} is not a folder; give the folder of your "
                             "photos")
        if order not in ORDERS:
            raise InputError(f"--order {order!r}: choose one of {list(ORDERS)}")
        if order != "name" and model is None:
            raise InputError(f"--order {order} ranks photos by the model's uncertainty; give "
                             "the exported model with --model")
        self.order_name = order
        self.detect = detect
        self.detector = detector
        self.token = token or secrets.token_urlsafe(24)
        self.labels_csv = Path(labels_csv) if labels_csv else self.root / "labels.csv"
        if self.labels_csv.suffix.lower() != ".csv":
            raise InputError(f"--labels {self.labels_csv}: give a .csv file (edge-smw train "
                             "reads path,score CSVs)")
        self.runtime: Runtime | None = None
        self._lock = CsvOwnerLock(self.labels_csv).acquire()
        # The CSV is ours now: temporary copies of it left by a crash can go.
        sweep_temp_files(self.labels_csv.parent, lambda name: name == self.labels_csv.name)
        try:
            self._open(levels, model, backend, progress)
        except BaseException:
            self.close()
            raise

    def _open(self, levels: str | Sequence[str] | None, model: str | os.PathLike[str] | None,
              backend: str, progress: bool) -> None:
        wanted = parse_levels(levels) if isinstance(levels, str) or levels is None else tuple(
            str(level) for level in levels)
        if wanted is not None and any(not name.strip() for name in wanted):
            raise InputError(f"levels {list(wanted)}: a level name is empty; give names such "
                             "as not_smiling,smiling")
        if model is not None:
            from edge_smw.runtime.runtime import Runtime

            self.runtime = Runtime(model, backend=backend, detect_faces=False)
            contract = self.runtime.contract
            if self.detect is None:  # crop as the model was trained
                self.detect = self.runtime.info.detect
            if wanted is not None and tuple(wanted) != contract.levels:
                raise InputError(f"--levels {list(wanted)} differ from the model's levels "
                                 f"{list(contract.levels)}; leave --levels out to use the model's")
        else:
            # No model: the contract's defaults (its crop margin) say how training will crop.
            contract = PreprocessContract(levels=wanted or parse_levels(DEFAULT_LEVELS))
            if self.detect is None:  # photos: find the face in each
                self.detect = True
        # The crops shown are the ones training will cut: the model's detector unless told.
        contract = with_detector(contract, self.detector)
        self.contract = contract
        self.levels = contract.levels
        if len(self.levels) > MAX_LEVELS:
            raise InputError(f"{len(self.levels)} levels: labelling by key supports at most "
                             f"{MAX_LEVELS} (keys 1..9 and 0); use fewer levels")
        exclude = None
        if os.path.realpath(self.labels_csv.parent) == os.path.realpath(self.root):
            exclude = {self.labels_csv.name}
        listing = list_photos(self.root, exclude=exclude)
        self.outside = listing.outside
        for key in listing.outside:
            log.warning("%s is a link to a file outside %s: not shown", key, self.root)
        self.store = LabelStore(self.labels_csv, self.root, listing.keys, self.levels)
        self.analyser = PhotoAnalyser(self.root, contract, detect=self.detect,
                                      runtime=self.runtime)
        self.order = list(listing.keys)
        if self.order_name != "name":
            self._rank(progress)

    def _rank(self, progress: bool) -> None:
        """Most uncertain first (the most informative to label); faceless and unreadable last."""
        from tqdm import tqdm

        workers = max(1, min(4, os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:
            infos = list(tqdm(pool.map(self.analyser.info, self.order), total=len(self.order),
                              desc="scoring photos", unit="photo", disable=not progress))

        def key(info: PhotoInfo) -> tuple[int, float, str]:
            if info.entropy is None or info.margin is None:
                return (1, 0.0, info.path)
            rank = -info.entropy if self.order_name == "uncertainty" else info.margin
            return (0, rank, info.path)

        self.order = [info.path for info in sorted(infos, key=key)]

    # -- views -----------------------------------------------------------------------------
    @property
    def hints(self) -> list[str]:
        if self.levels == parse_levels(DEFAULT_LEVELS):
            return list(POSTER_HINTS)
        return ["" for _ in self.levels]

    def state(self) -> dict[str, Any]:
        scores = self.store.scores()
        known = self.analyser.known()
        unreadable = sorted(({"path": i.path, "reason": i.error} for i in known if i.error),
                            key=lambda d: d["path"])
        resume = self.store.resume_key(self.order, ignore={u["path"] for u in unreadable})
        return {
            **self.store.summary(),
            "levels": list(self.levels),
            "hints": self.hints,
            "keys": [str((i + 1) % 10) for i in range(len(self.levels))],
            "photos": [{"path": key, "score": scores.get(key)} for key in self.order],
            "position": self.order.index(resume) if resume is not None else len(self.order) - 1,
            "finished": resume is None,
            "total": len(self.order),
            "checked": len(known),
            "unreadable": unreadable,
            "order": self.order_name,
            "detect": self.detect,
            "model": None if self.runtime is None else {
                "path": str(self.runtime.path), "backend": self.runtime.backend},
            "photos_dir": str(self.root),
            "labels_csv": str(self.labels_csv),
        }

    def close(self) -> None:
        if self.runtime is not None:
            self.runtime.close()
        self._lock.release()

    def __enter__(self) -> LabelSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the web application ------------------------------------------------------------------
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SESSION_KEY = web.AppKey("session", LabelSession)
WRITER_KEY = web.AppKey("writer", ThreadPoolExecutor)
READERS_KEY = web.AppKey("readers", ThreadPoolExecutor)
SCAN_KEY = web.AppKey("scan", bool)


def _json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _same_origin(origin: str, host: str) -> bool:
    """``Origin`` names this server: http, a loopback name, and the port we answer on."""
    scheme, _, netloc = origin.strip().lower().partition("://")
    if scheme != "http" or _host_name(netloc) not in _LOOPBACK_NAMES:
        return False
    return _port(netloc) == _port(host.lower())


def _port(netloc: str) -> str:
    """The explicit port of ``host[:port]`` ("80" when there is none: plain http)."""
    tail = netloc.rsplit("]", 1)[-1] if netloc.startswith("[") else netloc
    return tail.rsplit(":", 1)[1] if ":" in tail else "80"


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Loopback Host only; the token for the API; JSON from our own origin for changes."""
    if _host_name(request.host or "").lower() not in _LOOPBACK_NAMES:
        return _json_error(403, "this labelling server answers only on 127.0.0.1")
    if request.path.startswith("/api/"):
        session = request.app[SESSION_KEY]
        given = request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE) or ""
        if not hmac.compare_digest(given.encode(), session.token.encode()):
            return _json_error(403, "missing or wrong access token: open the address that "
                                    "`edge-smw label` printed")
        if request.method == "POST":
            origin = request.headers.get("Origin")
            if origin and not _same_origin(origin, request.host or ""):
                return _json_error(403, "changes are accepted only from the labelling page")
            if request.content_type != "application/json":
                return _json_error(415, "send changes as application/json")
    response = await handler(request)
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
    return response


@web.middleware
async def _api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """API failures become a JSON status naming the problem; the server keeps serving."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException:
        raise  # 404 for an unknown route, 405...: aiohttp's own answers
    except StaleRevisionError as exc:
        return _json_error(409, str(exc), revision=exc.current)
    except (PathRejected, UnknownPhotoError) as exc:
        return _json_error(404, str(exc))
    except ImageReadError as exc:
        return _json_error(422, f"{exc.path}: {exc.reason}")
    except EdgeSmwError as exc:  # bad input, or the CSV could not be written
        return _json_error(400, str(exc))
    except Exception as exc:  # e.g. a backend failing on one photo: say so, keep serving
        log.error("%s %s failed: %s: %s", request.method, request.path_qs,
                  type(exc).__name__, exc)
        return _json_error(500, f"{type(exc).__name__}: {exc}")


def create_app(session: LabelSession, *, scan: bool = True) -> web.Application:
    """The aiohttp application for ``session``.

    ``scan``: check every photo in the background (unreadable ones, faces, suggestions) so
    the page can list problems before the user reaches them.
    """
    app = web.Application(middlewares=[_guard, _api_errors], client_max_size=64 * 1024)
    app[SESSION_KEY] = session
    # One writer thread: changes are applied and saved strictly one after another.
    app[WRITER_KEY] = ThreadPoolExecutor(1, thread_name_prefix="label-writer")
    app[READERS_KEY] = ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)),
                                          thread_name_prefix="label-reader")
    app[SCAN_KEY] = scan
    app.router.add_get("/", index)
    app.router.add_get("/api/state", state)
    app.router.add_get("/api/photo", photo)
    app.router.add_get("/api/image", image)
    app.router.add_post("/api/label", label)
    app.router.add_post("/api/skip", skip)
    app.router.add_post("/api/undo", undo)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    app.cleanup_ctx.append(_background_scan)
    return app


# -- handlers ----------------------------------------------------------------------------------
async def _run_in(pool: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any,
                  **kwargs: Any) -> Any:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(pool, lambda: fn(*args, **kwargs))


def _photo_key(request: web.Request, key: str | None = None) -> str:
    session = request.app[SESSION_KEY]
    key = key if key is not None else request.query.get("path", "")
    if not isinstance(key, str) or key not in session.store:
        raise PathRejected(f"{key!r} is not one of the photos being labelled")
    return key


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        raise InputError("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InputError("the request body must be a JSON object")
    revision = data.get("revision")
    if revision is not None and not isinstance(revision, str):
        raise InputError("'revision' must be a string")
    return data


def _change_response(request: web.Request, change: Any) -> web.Response:
    summary = request.app[SESSION_KEY].store.summary()
    return web.json_response({**summary, "change": change.to_dict() if change else None})


async def index(request: web.Request) -> web.StreamResponse:
    session = request.app[SESSION_KEY]
    token = request.query.get("token")
    if token is not None:
        if not hmac.compare_digest(token.encode(), session.token.encode()):
            return _json_error(403, "wrong access token: open the address that "
                                    "`edge-smw label` printed")
        response = web.Response(status=302, headers={"Location": "/"})
        response.set_cookie(TOKEN_COOKIE, session.token, httponly=True, samesite="Strict",
                            path="/")
        return response
    cookie = request.cookies.get(TOKEN_COOKIE, "")
    if not hmac.compare_digest(cookie.encode(), session.token.encode()):
        return web.Response(status=403, content_type="text/plain",
                            text="Open the address that `edge-smw label` printed (it "
                                 "carries this session's access token).\n")
    return web.FileResponse(STATIC / "index.html")


async def state(request: web.Request) -> web.Response:
    session = request.app[SESSION_KEY]
    return web.json_response(await _run_in(request.app[READERS_KEY], session.state))


async def photo(request: web.Request) -> web.Response:
    session = request.app[SESSION_KEY]
    key = _photo_key(request)
    info = await _run_in(request.app[READERS_KEY], session.analyser.info, key)
    return web.json_response({**info.to_dict(), "score": session.store.score(key)})


async def image(request: web.Request) -> web.Response:
    session = request.app[SESSION_KEY]
    key = _photo_key(request)
    kind = request.query.get("kind", "photo")
    try:
        data = await _run_in(request.app[READERS_KEY], session.analyser.render, key, kind)
    except LookupError as exc:
        return _json_error(404, str(exc))
    return web.Response(body=data, content_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=300"})


async def label(request: web.Request) -> web.Response:
    session = request.app[SESSION_KEY]
    data = await _body(request)
    score = data.get("score")
    if not isinstance(score, str) or score == SKIPPED:
        raise InputError(f"'score' must be one of the levels {list(session.levels)}")
    key = _photo_key(request, data.get("path"))
    change = await _run_in(request.app[WRITER_KEY], session.store.set, key, score,
                           revision=data.get("revision"))
    return _change_response(request, change)


async def skip(request: web.Request) -> web.Response:
    session = request.app[SESSION_KEY]
    data = await _body(request)
    key = _photo_key(request, data.get("path"))
    change = await _run_in(request.app[WRITER_KEY], session.store.set, key, SKIPPED,
                           revision=data.get("revision"))
    return _change_response(request, change)


async def undo(request: web.Request) -> web.Response:
    session = request.app[SESSION_KEY]
    data = await _body(request)
    change = await _run_in(request.app[WRITER_KEY], session.store.undo,
                           revision=data.get("revision"))
    return _change_response(request, change)


async def _background_scan(app: web.Application) -> AsyncIterator[None]:
    """The background check while serving; on cleanup, stop it and the worker pools."""
    task = None
    if app[SCAN_KEY]:
        task = asyncio.create_task(_scan(app[SESSION_KEY], app[READERS_KEY]))
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    app[WRITER_KEY].shutdown(wait=True)
    app[READERS_KEY].shutdown(wait=True, cancel_futures=True)


async def _scan(session: LabelSession, pool: ThreadPoolExecutor) -> None:
    """Check every photo once, from where the user resumes, one at a time (low priority)."""
    loop = asyncio.get_running_loop()
    start = session.store.resume_key(session.order)
    first = session.order.index(start) if start is not None else 0
    for key in session.order[first:] + session.order[:first]:
        try:
            await loop.run_in_executor(pool, session.analyser.info, key)
        except Exception as exc:  # e.g. a model failure: shown again when the photo is opened
            log.warning("checking %s failed: %s", key, exc)


# -- running it ------------------------------------------------------------------------------
async def start_server(session: LabelSession, port: int = 0, *,
                       scan: bool = True) -> tuple[web.AppRunner, str]:
    """Start serving on 127.0.0.1:``port`` (0: any free port); returns the runner and the
    address to open (with the access token)."""
    runner = web.AppRunner(create_app(session, scan=scan), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise InputError(f"cannot listen on {HOST}:{port} ({exc.strerror or exc}); pass "
                         "another --port, or --port 0 for any free one") from exc
    bound = runner.addresses[0][1]
    return runner, f"http://{HOST}:{bound}/?token={session.token}"


def serve(session: LabelSession, port: int = 0, *, open_browser: bool = True,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until Ctrl-C or SIGTERM; every label is already saved when it returns."""

    async def main() -> None:
        runner, url = await start_server(session, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        try:
            if on_ready is not None:
                on_ready(url)
            if open_browser and not webbrowser.open(url):
                print("edge-smw label: no browser could be opened; open the address above "
                      "yourself", flush=True)
            await stop.wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
