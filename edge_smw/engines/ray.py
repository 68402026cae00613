"""Score photo libraries and compute training features on Ray Data.

    photos (folder, glob, CSV/Parquet list, s3://, gs://)   driver: list, check the store
    -> prepare: read + sha256 + decode (EXIF) + detect + crop + model pixels   CPU tasks
    -> FaceScorer: ``Runtime.score_batch``, one Runtime per actor          actor pool (GPUs)
    -> the driver appends Parquet parts as batches arrive (``ResultStore``), then rank's CSV

Every step is the library's own (``images``, ``faces.face_crops``, the model's
``PreprocessContract``, ``Runtime``), so a photo scores exactly as in-process. Ray does the
scheduling, the back-pressure and the progress bars, and with Ray Data's defaults a worker
process that dies is replaced and its batch run again (tasks and actor calls are retried on
system failures; actors are restarted). A photo that cannot be read is a row in the skipped
table, never a failed job.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_smw.engines import RayOptions, require_ray

ray = require_ray()  # before pyarrow: without the [ray] extra, one line says what to install

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from edge_smw.artifacts.folders import is_onnx, resolve_model_path  # noqa: E402
from edge_smw.artifacts.formats import GPU_BACKENDS, ONNXRUNTIME_BACKENDS  # noqa: E402
from edge_smw.artifacts.sessions import SessionSettings, load_session  # noqa: E402
from edge_smw.atomic import write_json  # noqa: E402
from edge_smw.cache import file_sha256  # noqa: E402
from edge_smw.contract import PreprocessContract  # noqa: E402
from edge_smw.engines.inputs import Photo, list_photos, read_source  # noqa: E402
from edge_smw.engines.store import (  # noqa: E402
    FACES_SCHEMA,
    SKIPPED_SCHEMA,
    STATUS_NO_FACE,
    STATUS_UNREADABLE,
    ResultStore,
    StoreSettings,
)
from edge_smw.errors import BackendUnavailableError, ImageReadError, InputError  # noqa: E402
from edge_smw.faces import face_crops  # noqa: E402
from edge_smw.images import decode_image_bytes  # noqa: E402
from edge_smw.metadata import ModelInfo, sidecar_path  # noqa: E402
from edge_smw.rank import THUMB_SIDE, AlbumRanking, make_thumbnail, write_csv  # noqa: E402

log = logging.getLogger("edge_smw.engines.ray")

STATUS_OK = "ok"
STATUS_RECORDED = "recorded"  # scored by an earlier run: path and file sha256 unchanged
STAGES = ("read", "decode", "detect", "preprocess", "infer")
# Heap a decoding task may need (an 80-megapixel photo decodes to about 240 MB, twice while
# converting). Asking for it keeps Ray from packing more decoders on a node than its memory
# holds, and from fusing decoding into the model actors, which would leave every CPU but the
# actors' idle.
DECODE_MEMORY = 512 * 1024 * 1024
SUMMARY = "summary.json"
CSV_NAME = "ranking.csv"


# -- Ray session ------------------------------------------------------------------------------
@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Join the Ray already started in this process, or start/join one and stop it after."""
    if ray.is_initialized():
        yield ray
        return
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise BackendUnavailableError(f"cannot start or reach {where}: "
                                      f"{str(exc).splitlines()[0]}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _configure_data_context(progress: bool) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    if not progress:
        logging.getLogger("ray.data").setLevel(logging.WARNING)


def _actor_layout(options: RayOptions, backend: str) -> tuple[Any, int, float, float]:
    """(Ray's compute strategy, most actors, CPUs per actor, GPUs per actor).

    ``--actors N`` is a fixed pool. Without it the pool autoscales from 1 up to one actor per
    GPU (GPU backends) or per two CPUs: Ray adds replicas while batches wait for the model,
    so photos that are costly to decode (large JPEGs) leave their CPUs to the decoders.
    """
    resources = ray.cluster_resources()
    cluster_gpus = float(resources.get("GPU", 0))
    gpus = options.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if backend in GPU_BACKENDS or (backend == "auto" and cluster_gpus) else 0.0
    if gpus and gpus > cluster_gpus:
        raise BackendUnavailableError(
            f"backend {backend} asks for {gpus:g} GPU per actor but the Ray cluster has "
            f"{cluster_gpus:g}; use a CPU backend or --gpus-per-actor 0")
    cluster_cpus = float(resources.get("CPU", 0))
    actors = options.actors
    if actors is None:
        if gpus:
            most = max(1, int(cluster_gpus // gpus))
        else:
            most = max(1, int(cluster_cpus // (2 * options.cpus_per_actor)))
        strategy = ray.data.ActorPoolStrategy(min_size=1, max_size=most)
    else:
        most = actors
        strategy = ray.data.ActorPoolStrategy(size=actors)
    # a warning, not an error: an autoscaling cluster may add nodes later
    if (actors or 1) * options.cpus_per_actor > cluster_cpus - 1:
        log.warning("%d actor(s) x %g CPU leave the %g CPUs of the Ray cluster no whole CPU "
                    "for decoding tasks: the job waits for more nodes; lower --actors or "
                    "--cpus-per-actor (fractions such as 0.5 are allowed)", actors or 1,
                    options.cpus_per_actor, cluster_cpus)
    return strategy, most, options.cpus_per_actor, gpus


# -- model ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShippedModel:
    """A model file (and an engine's sidecar) in Ray's object store, so every node gets it
    from the driver: a cluster needs no shared disk."""

    name: str
    data: Any  # ObjectRef[bytes]
    sidecar: Any | None  # ObjectRef[bytes]

    @classmethod
    def put(cls, path: Path) -> ShippedModel:
        sidecar = sidecar_path(path)
        return cls(path.name, ray.put(path.read_bytes()),
                   ray.put(sidecar.read_bytes()) if sidecar.is_file() else None)

    def materialise(self, folder: Path) -> Path:
        target = folder / self.name
        target.write_bytes(ray.get(self.data))
        if self.sidecar is not None:
            sidecar_path(target).write_bytes(ray.get(self.sidecar))
        return target


# -- stage 1: CPU tasks -----------------------------------------------------------------------
def prepare_photos(batch: pa.Table, *, contract_json: str, detect: bool,
                   max_faces: int) -> pa.Table:
    """Read, hash, decode (EXIF upright), detect and crop each photo into model pixels.

    One output row per photo: its status (ok, no face, unreadable, recorded), the face
    boxes, and the faces' model pixels as one bytes value (N x size x size x 3, uint8).
    """
    contract = PreprocessContract.from_json(contract_json)
    out: dict[str, list] = {name: [] for name in _PREPARED.names}
    for path, source, recorded in zip(batch.column("path").to_pylist(),
                                      batch.column("source").to_pylist(),
                                      batch.column("recorded_sha256").to_pylist(), strict=True):
        times = dict.fromkeys(STAGES, 0.0)
        digest, status, reason, boxes, pixels = None, STATUS_OK, None, [], b""
        t0 = time.perf_counter()
        try:
            data = read_source(Photo(path, source))
            digest = hashlib.sha256(data).hexdigest()
            t1 = time.perf_counter()
            times["read"] = t1 - t0
            if recorded is not None and recorded == digest:
                status = STATUS_RECORDED
            else:
                image = decode_image_bytes(data, name=path)
                t2 = time.perf_counter()
                times["decode"] = t2 - t1
                found, crops = face_crops(image, contract, detect=detect, max_faces=max_faces)
                t3 = time.perf_counter()
                times["detect"] = t3 - t2
                boxes = [list(d.box) for d in found]
                pixels = b"".join(contract.to_model_pixels(c).tobytes() for c in crops)
                times["preprocess"] = time.perf_counter() - t3
                if not boxes:
                    status, reason = STATUS_NO_FACE, "no face found"
        except ImageReadError as exc:
            status, reason = STATUS_UNREADABLE, exc.reason
            if not times["read"]:
                times["read"] = time.perf_counter() - t0
        for name, value in (("path", path), ("file_sha256", digest), ("status", status),
                            ("reason", reason), ("boxes", boxes), ("pixels", pixels)):
            out[name].append(value)
        for stage in STAGES:
            out[f"{stage}_s"].append(times[stage])
    return pa.table(out, schema=_PREPARED)


_TIMES = [(f"{stage}_s", pa.float64()) for stage in STAGES]
_PREPARED = pa.schema([
    ("path", pa.string()), ("file_sha256", pa.string()), ("status", pa.string()),
    ("reason", pa.string()), ("boxes", pa.list_(pa.list_(pa.int32()))),
    ("pixels", pa.large_binary()), *_TIMES,
])
_SCORED = pa.schema([
    ("path", pa.string()), ("file_sha256", pa.string()), ("status", pa.string()),
    ("reason", pa.string()), ("boxes", pa.list_(pa.list_(pa.int32()))),
    ("probabilities", pa.list_(pa.list_(pa.float64()))),
    ("level_index", pa.list_(pa.int32())), ("expected_score", pa.list_(pa.float64())),
    ("backend", pa.string()), *_TIMES,
])


# -- stage 2: actors --------------------------------------------------------------------------
class FaceScorer:
    """One ``edge_smw.Runtime`` per actor; each call scores every face of a batch of photos
    in one ``score_batch`` call."""

    def __init__(self, model: ShippedModel, *, backend: str, threads: int) -> None:
        from edge_smw.runtime import Runtime

        # The copy is removed as soon as the Runtime has opened it (every backend reads the
        # whole model then): Ray ends actors without running finalizers, so a folder kept
        # for the actor's life would be left behind in /tmp by every run.
        with tempfile.TemporaryDirectory(prefix="edge-smw-model-") as folder:
            path = model.materialise(Path(folder))
            # idle onnxruntime threads must not spin: decode tasks share the node's cores
            quiet = ({"allow_spinning": False}
                     if is_onnx(path) and backend in ("auto", *ONNXRUNTIME_BACKENDS) else {})
            self.runtime = Runtime(path, backend=backend, threads=threads, detect_faces=False,
                                   backend_options=quiet)
        self.size = self.runtime.contract.input_size
        # prepare_photos sends model pixels (contract.to_model_pixels), already in the
        # model's colour order: naming that order makes score_batch's own conversion exact.
        self.color = self.runtime.contract.color_order.lower()

    def __call__(self, batch: pa.Table) -> pa.Table:
        blobs = batch.column("pixels").to_pylist()
        face_bytes = self.size * self.size * 3
        counts = [len(blob) // face_bytes for blob in blobs]
        t0 = time.perf_counter()
        faces = []
        if sum(counts):
            crops = np.frombuffer(b"".join(blobs), np.uint8).reshape(-1, self.size,
                                                                     self.size, 3)
            faces = self.runtime.score_batch(crops, color=self.color)
        seconds = time.perf_counter() - t0
        total = max(1, sum(counts))
        probabilities, levels, expected = [], [], []
        start = 0
        for count in counts:
            mine = faces[start : start + count]
            start += count
            probabilities.append([face.probabilities.tolist() for face in mine])
            levels.append([face.level for face in mine])
            expected.append([face.expected_score for face in mine])
        columns = {name: batch.column(name) for name in _SCORED.names if name in batch.schema.names}
        columns.update(probabilities=probabilities, level_index=levels, expected_score=expected,
                       backend=[self.runtime.backend] * batch.num_rows,
                       infer_s=[seconds * c / total for c in counts])
        return pa.table({name: columns[name] for name in _SCORED.names}, schema=_SCORED)


# -- the job ----------------------------------------------------------------------------------
@dataclass
class RunSummary:
    """What a run did: counts, wall time, and where the time went (summed over workers)."""

    photos: int = 0  # listed
    scored: int = 0  # read and scored (or found bad) in this run
    recorded: int = 0  # skipped: already in the store, file unchanged
    faces: int = 0
    no_face: int = 0
    unreadable: int = 0
    seconds: float = 0.0  # pipeline wall time (Ray start not included)
    startup_seconds: float = 0.0  # starting or joining Ray
    first_result_seconds: float = 0.0  # until the first batch came back (actors starting)
    first_result_photos: int = 0
    driver_seconds: float = 0.0  # the driver turning results into Parquet parts
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    actors: int = 0  # the pool's size (its largest, when it autoscales)
    cpus_per_actor: float = 0.0
    gpus_per_actor: float = 0.0
    batch_size: int = 0
    backends: list[str] = field(default_factory=list)
    cluster: dict[str, float] = field(default_factory=dict)
    ray_stats: str = ""

    @property
    def photos_per_s(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_photos_per_s(self) -> float:
        """After the first batch: the rate a long job settles at, its start-up paid."""
        seconds = self.seconds - self.first_result_seconds
        photos = self.scored + self.recorded - self.first_result_photos
        return photos / seconds if seconds > 0 and photos > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "ray_stats"}
        data["photos_per_s"] = round(self.photos_per_s, 2)
        data["steady_photos_per_s"] = round(self.steady_photos_per_s, 2)
        data["stage_seconds"] = {k: round(v, 3) for k, v in self.stage_seconds.items()}
        data["ray_stats"] = self.ray_stats
        return data

    def lines(self) -> list[str]:
        per = {k: (1000 * v / self.scored if self.scored else 0.0)
               for k, v in self.stage_seconds.items()}
        return [
            f"{self.photos} photo(s): {self.scored} scored in {self.seconds:.1f} s "
            f"({self.photos_per_s:.1f} photos/s; {self.steady_photos_per_s:.1f} after the "
            f"first batch), {self.recorded} already recorded; "
            f"{self.faces} face(s), {self.no_face} without a face, {self.unreadable} unreadable",
            "per photo, summed over workers: " + ", ".join(
                f"{k} {v:.1f} ms" for k, v in per.items())
            + f"; driver {1000 * self.driver_seconds / max(1, self.scored):.2f} ms",
            f"up to {self.actors} actor(s) x {self.cpus_per_actor:g} CPU"
            + (f" + {self.gpus_per_actor:g} GPU" if self.gpus_per_actor else "")
            + f", batches of {self.batch_size}, backend {', '.join(self.backends) or '-'}; "
            f"cluster {self.cluster}",
        ]


def _input_blocks(photos: Sequence[Photo], recorded: dict[str, str | None],
                  size: int) -> list[pa.Table]:
    return [pa.table({
        "path": [p.path for p in chunk],
        "source": [p.source for p in chunk],
        "recorded_sha256": [recorded.get(p.path) for p in chunk],
    }, schema=pa.schema([("path", pa.string()), ("source", pa.string()),
                         ("recorded_sha256", pa.string())]))
        for chunk in (photos[i : i + size] for i in range(0, len(photos), size))]


class _PartWriter:
    """Turns scored photo rows into store rows, a part file every ``part_photos`` photos."""

    def __init__(self, store: ResultStore, levels: Sequence[str], part_photos: int,
                 summary: RunSummary) -> None:
        self.store, self.levels, self.limit, self.summary = store, tuple(levels), part_photos, \
            summary
        self.model = store.settings.model_sha256
        self._faces: list[dict[str, Any]] = []
        self._skipped: list[dict[str, Any]] = []
        self._photos = 0

    def add(self, batch: pa.Table) -> None:
        started = time.perf_counter()
        self._add(batch)
        self.summary.driver_seconds += time.perf_counter() - started

    def _add(self, batch: pa.Table) -> None:
        s = self.summary
        for row in batch.to_pylist():
            for stage in STAGES:
                s.stage_seconds[stage] += row[f"{stage}_s"] or 0.0
            if row["backend"] and row["backend"] not in s.backends:
                s.backends.append(row["backend"])
            status = row["status"]
            if status == STATUS_RECORDED:
                s.recorded += 1
                continue
            s.scored += 1
            self._photos += 1
            if status != STATUS_OK:
                s.unreadable += status == STATUS_UNREADABLE
                s.no_face += status == STATUS_NO_FACE
                self._skipped.append({"path": row["path"], "file_sha256": row["file_sha256"],
                                      "status": status, "reason": row["reason"],
                                      "model_sha256": self.model})
                continue
            for i, (box, probs, level, score) in enumerate(zip(
                    row["boxes"], row["probabilities"], row["level_index"],
                    row["expected_score"], strict=True)):
                s.faces += 1
                self._faces.append({
                    "path": row["path"], "file_sha256": row["file_sha256"], "face": i,
                    "box": box, "level": self.levels[level], "level_index": level,
                    "expected_score": score, "probabilities": probs,
                    "model_sha256": self.model})
        if self._photos >= self.limit:
            self.flush()

    def flush(self) -> None:
        if not self._photos:
            return
        started = time.perf_counter()
        self.store.append(pa.Table.from_pylist(self._faces, schema=FACES_SCHEMA),
                          pa.Table.from_pylist(self._skipped, schema=SKIPPED_SCHEMA))
        self._faces, self._skipped, self._photos = [], [], 0
        self.summary.driver_seconds += time.perf_counter() - started


def score_library(model: str | Path, inputs: Sequence[str | Path], out: str | Path, *,
                  backend: str = "auto", detect: bool | None = None, max_faces: int = 5,
                  options: RayOptions | None = None, exclude: str | Path | None = None,
                  thumbnails: int = 0, scorer: type[FaceScorer] | None = None,
                  ) -> tuple[RunSummary, AlbumRanking]:
    """Score every photo under ``inputs`` on Ray and record the results in ``out``.

    ``out`` gets the Parquet store (``faces/``, ``skipped/``, ``run.json``), ``ranking.csv``
    (the CSV ``edge-smw rank`` writes, over every listed photo, this run's and earlier
    runs') and ``summary.json``. Photos recorded by an earlier run into the same ``out``
    with the same file content are not scored again. ``detect``: find faces, or score photos
    whole as face crops; None: as the model was trained. ``thumbnails``: the best N photos get
    a thumbnail (for ``rank.write_report``). ``scorer``: the actor class (a ``FaceScorer``
    subclass may add work per batch). Returns the summary and the ranking.
    """
    options = options or RayOptions()
    if max_faces < 1:
        raise InputError(f"--max-faces must be >= 1, got {max_faces}")
    out = Path(out)
    model_path = resolve_model_path(model)
    info = ModelInfo.from_file(model_path)
    detect = info.detect if detect is None else bool(detect)  # as Runtime decides it
    photos = list_photos(inputs, exclude=exclude)
    settings = StoreSettings(file_sha256(model_path), info.levels, detect, max_faces)
    store = ResultStore(out, settings)
    recorded = store.recorded()
    summary = RunSummary(photos=len(photos), batch_size=options.batch_size)
    started = time.perf_counter()
    with ray_session(options.address):
        summary.startup_seconds = time.perf_counter() - started
        _configure_data_context(options.progress)
        strategy, actors, cpus, gpus = _actor_layout(options, backend)
        summary.actors, summary.cpus_per_actor, summary.gpus_per_actor = actors, cpus, gpus
        summary.cluster = {k: float(v) for k, v in ray.cluster_resources().items()
                           if k in ("CPU", "GPU")}
        began = time.perf_counter()
        shipped = ShippedModel.put(model_path)
        ds = ray.data.from_arrow(_input_blocks(photos, recorded, options.batch_size))
        ds = ds.map_batches(
            prepare_photos, batch_format="pyarrow", batch_size=options.batch_size,
            fn_kwargs={"contract_json": info.contract.to_json(), "detect": detect,
                       "max_faces": max_faces},
            num_cpus=1, memory=DECODE_MEMORY)
        ds = ds.map_batches(
            scorer or FaceScorer, batch_format="pyarrow", batch_size=options.batch_size,
            fn_constructor_args=(shipped,),
            fn_constructor_kwargs={"backend": backend, "threads": max(1, math.floor(cpus))},
            compute=strategy, num_cpus=cpus, num_gpus=gpus or None)
        writer = _PartWriter(store, info.levels, options.part_photos, summary)
        try:
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                if not summary.first_result_seconds:
                    summary.first_result_seconds = time.perf_counter() - began
                    summary.first_result_photos = batch.num_rows
                writer.add(batch)
        finally:
            writer.flush()  # what was scored is kept, even on Ctrl-C or a failed batch
        summary.seconds = time.perf_counter() - began
        with contextlib.suppress(Exception):  # statistics are a courtesy, never a failure
            summary.ray_stats = ds.stats()
    ranking = store.ranking([p.path for p in photos])
    if thumbnails:
        _add_thumbnails(ranking, thumbnails, {p.path: p.source for p in photos})
    if ranking.ranked or not (out / CSV_NAME).exists():  # nothing ranked: keep the last one
        write_csv(ranking, out / CSV_NAME)
    write_json(out / SUMMARY, summary.to_dict())
    return summary, ranking


def _add_thumbnails(ranking: AlbumRanking, top: int, sources: dict[str, str]) -> None:
    """Thumbnails for the ``top`` ranked photos, read again on the driver from wherever they
    are, so ``rank.write_report`` draws the contact sheets without local files."""
    for photo in ranking.ranked[:top]:
        path = str(photo.path)
        try:
            image = decode_image_bytes(read_source(Photo(path, sources[path])), name=path)
        except ImageReadError as exc:  # changed or removed since it was scored
            log.warning("no thumbnail for %s: %s", path, exc.reason)
            image, best = np.full((THUMB_SIDE, THUMB_SIDE, 3), 200, np.uint8), None
        else:
            best = photo.best
        photo.thumb = make_thumbnail(image, best)


# -- training features ------------------------------------------------------------------------
def prepare_crops(batch: pa.Table, *, contract_json: str, detect: bool) -> pa.Table:
    """Each labelled photo's crop in model pixels, by the training rule (``load_crop``:
    the largest face, or the whole image), or no pixels when it has none."""
    from edge_smw.data.crops import SkipReport, load_crop

    contract = PreprocessContract.from_json(contract_json)
    pixels, seconds = [], []
    for path in batch.column("source").to_pylist():
        t0 = time.perf_counter()
        crop = load_crop(path, contract, detect=detect, report=SkipReport(), cache=False)
        pixels.append(b"" if crop is None else crop.tobytes())
        seconds.append(time.perf_counter() - t0)
    return pa.table({"digest": batch.column("digest"), "flip": batch.column("flip"),
                     "pixels": pa.array(pixels, pa.large_binary()), "prepare_s": seconds})


class FeatureExtractor:
    """One onnxruntime session of the frozen backbone per actor (the training feature pass's
    own ONNX file, shipped from the driver)."""

    def __init__(self, backbone: ShippedModel, *, contract_json: str, threads: int) -> None:
        self.contract = PreprocessContract.from_json(contract_json)
        self.session = load_session(ray.get(backbone.data),
                                    SessionSettings(threads=threads, spinning=False))

    def _features(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input": self.contract.normalize(pixels)})[0]

    def __call__(self, batch: pa.Table) -> pa.Table:
        size = self.contract.input_size
        blobs = batch.column("pixels").to_pylist()
        flips = batch.column("flip").to_pylist()
        usable = [i for i, blob in enumerate(blobs) if blob]
        features: list[Any] = [None] * len(blobs)
        flipped: list[Any] = [None] * len(blobs)
        t0 = time.perf_counter()
        if usable:
            pixels = np.frombuffer(b"".join(blobs[i] for i in usable), np.uint8).reshape(
                -1, size, size, 3)
            for i, feat in zip(usable, self._features(pixels), strict=True):
                features[i] = feat.tolist()
            mirror = [k for k, i in enumerate(usable) if flips[i]]
            if mirror:  # the same mirror as compute_features: NHWC, width reversed
                feats = self._features(pixels[mirror][:, :, ::-1])
                for k, feat in zip(mirror, feats, strict=True):
                    flipped[usable[k]] = feat.tolist()
        seconds = time.perf_counter() - t0
        return pa.table({
            "digest": batch.column("digest"),
            "features": pa.array(features, pa.list_(pa.float32())),
            "features_flip": pa.array(flipped, pa.list_(pa.float32())),
            "prepare_s": batch.column("prepare_s"),
            "infer_s": [seconds / len(blobs)] * len(blobs),
        })


@dataclass
class FeatureSummary:
    photos: int = 0  # photos whose features were missing from the cache
    computed: int = 0  # of those, with a usable crop (the rest: unreadable / no face)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=lambda: {"prepare": 0.0,
                                                                     "infer": 0.0})


def warm_feature_cache(items: Sequence[Any], contract: PreprocessContract, feature_pass: Any,
                       *, detect: bool, flip_items: Sequence[bool] | None = None,
                       options: RayOptions | None = None) -> FeatureSummary:
    """Compute on Ray the backbone features the training cache lacks, and store them there.

    ``items`` are ``LabelledImage`` (their files must be readable at the same path on every
    node: a shared disk); ``flip_items[i]`` asks for item i's mirrored crop too. The cache is
    written by the driver only; ``compute_features`` then finds every feature there, so the
    head training that follows is the in-process one, unchanged.
    """
    from edge_smw.train.features import cache_folder, load_cached, save_cached

    options = options or RayOptions()
    flips = list(flip_items) if flip_items is not None else [False] * len(items)
    folder = cache_folder(feature_pass, contract, detect)
    todo: dict[str, tuple[str, bool]] = {}
    for item, flip in zip(items, flips, strict=True):
        try:
            digest = file_sha256(item.path)
        except OSError:
            continue  # compute_features reports it
        variants = (False, True) if flip else (False,)
        if any(load_cached(folder, digest, v) is None for v in variants):
            previous = todo.get(digest, ("", False))
            todo[digest] = (str(Path(item.path).resolve()), flip or previous[1])
    summary = FeatureSummary(photos=len(todo))
    if not todo:
        return summary
    digests = list(todo)
    with ray_session(options.address):
        _configure_data_context(options.progress)
        strategy, _, cpus, _ = _actor_layout(options, "onnxruntime-cpu")
        began = time.perf_counter()
        backbone = ShippedModel.put(Path(feature_pass.onnx_path))
        size = options.batch_size
        blocks = [pa.table({"digest": chunk, "source": [todo[d][0] for d in chunk],
                            "flip": [todo[d][1] for d in chunk]})
                  for chunk in (digests[i : i + size] for i in range(0, len(digests), size))]
        ds = ray.data.from_arrow(blocks)
        ds = ds.map_batches(prepare_crops, batch_format="pyarrow", batch_size=size,
                            fn_kwargs={"contract_json": contract.to_json(), "detect": detect},
                            num_cpus=1, memory=DECODE_MEMORY)
        ds = ds.map_batches(
            FeatureExtractor, batch_format="pyarrow", batch_size=size,
            fn_constructor_args=(backbone,),
            fn_constructor_kwargs={"contract_json": contract.to_json(),
                                   "threads": max(1, math.floor(cpus))},
            compute=strategy, num_cpus=cpus)
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for row in batch.to_pylist():
                summary.stage_seconds["prepare"] += row["prepare_s"]
                summary.stage_seconds["infer"] += row["infer_s"]
                if row["features"] is None:
                    continue
                summary.computed += 1
                save_cached(folder, row["digest"], False, np.asarray(row["features"],
                                                                     np.float32))
                if row["features_flip"] is not None:
                    save_cached(folder, row["digest"], True,
                                np.asarray(row["features_flip"], np.float32))
        summary.seconds = time.perf_counter() - began
    return summary
