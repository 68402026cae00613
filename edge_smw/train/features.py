"""The feature pass: frozen backbone features for every crop, computed once and cached.

Training a linear head on a frozen backbone is dominated by this pass, so it runs the
backbone through onnxruntime while a background thread decodes and crops the next batch
(``edge-smw bench`` measures it against torch eager: its ``features`` row), and caches each
crop's features by (file hash, backbone weights, contract geometry, detection, flip, and
what is computed: a head kind's features or the activation entering a unit).
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from edge_smw.artifacts.sessions import SessionSettings, load_session
from edge_smw.atomic import atomic_path, check_writable_folder
from edge_smw.cache import CACHE_ADVICE, cache_root, file_sha256
from edge_smw.contract import PreprocessContract
from edge_smw.data.crops import SkipReport, load_crop
from edge_smw.data.datasets import LabelledImage
from edge_smw.errors import DataError, InputError
from edge_smw.train.backbones import (
    BackboneSpec,
    build_feature_maps,
    get_backbone,
    weights_fingerprint,
)
from edge_smw.train.finetune import EntryFeatures
from edge_smw.train.model import DEFAULT_HEAD, HEAD_KINDS, HeadInputs, HeadKind


@dataclass(frozen=True)
class FeatureKind:
    """What the feature pass computes and caches per crop: the features a head kind reads,
    or (``start`` > 0, for fine-tuning) the entry of unit ``start`` (see
    ``finetune.EntryFeatures``), as float16: it halves a large cache, and the rounding
    (about 5e-4 relative) is far below the spread of the features."""

    head: HeadKind
    start: int = 0  # > 0: the activation entering this unit
    start_name: str = ""

    @property
    def suffix(self) -> str:
        """Cache-key suffix: none for the poster's pooled features (the existing caches)."""
        if self.start:
            return f"-{self.head.name}-in.{self.start_name}"
        return "" if self.head.name == DEFAULT_HEAD else f"-{self.head.name}"

    @property
    def dtype(self) -> type:
        return np.float16 if self.start else np.float32


def export_feature_backbone(module: torch.nn.Module, input_size: int, target: Path) -> Path:
    """Write a feature module (network input -> features) as ONNX (dynamic batch), atomically."""
    example = torch.zeros(2, 3, input_size, input_size)
    with atomic_path(target) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # static spatial sizes
        torch.onnx.export(
            module.eval(), (example,), str(tmp), dynamo=False, opset_version=17,
            input_names=["input"], output_names=["features"],
            dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}},
        )
    return target


class FeaturePass:
    """Backbone features of network inputs, through onnxruntime: by default the poster's
    pooled features; ``head`` another head kind's; ``start`` the activation entering that
    unit (``--finetune-last``)."""

    def __init__(
        self, spec: BackboneSpec, *, weights: str | Path | None = None, threads: int | None = None,
        head: HeadKind | None = None, start: int = 0, module: torch.nn.Module | None = None,
    ) -> None:
        """``module``: the backbone already built from ``weights`` (saves loading it twice)."""
        self.spec = spec
        self.module = module if module is not None else build_feature_maps(spec, weights)
        self.fingerprint = weights_fingerprint(self.module)
        head = head or HEAD_KINDS[DEFAULT_HEAD]
        start = self.module.index_of(start) if start else 0
        self.kind = FeatureKind(head, start, self.module.unit_names[start] if start else "")
        self.suffix = self.kind.suffix
        self.onnx_path = (cache_root() / "backbones"
                          / f"{spec.name}-{self.fingerprint}{self.suffix}.onnx")
        self.entry_shape: tuple[int, ...] = ()
        if start:
            with torch.no_grad():
                probe = torch.zeros(1, 3, spec.input_size, spec.input_size)
                self.entry_shape = tuple(self.module.run_units(probe, 0, start).shape[1:])
        # the torch module the ONNX file is made from (and torch eager's baseline in the bench)
        self.network = (EntryFeatures(self.module, head, start) if start
                        else HeadInputs(self.module, head))
        if not self.onnx_path.is_file():
            check_writable_folder(self.onnx_path.parent, CACHE_ADVICE)
            export_feature_backbone(self.network, spec.input_size, self.onnx_path)
        self._session = load_session(self.onnx_path, SessionSettings(threads=threads))

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        return self._session.run(None, {"input": inputs})[0]


@dataclass
class FeatureSet:
    features: np.ndarray  # (N, D) float32, or (N, C, H, W) activations
    levels: np.ndarray  # (N,) int64
    paths: list[str]
    skipped: SkipReport
    timings: dict[str, float] = field(default_factory=dict)


def cache_key(feature_pass: FeaturePass, contract: PreprocessContract, detect: bool) -> str:
    geo = contract.geometry_sha256[:12]
    mode = "det" if detect else "whole"
    return (f"{feature_pass.spec.name}-{feature_pass.fingerprint}-{geo}-{mode}"
            f"{feature_pass.suffix}")


def compute_features(
    items: Sequence[LabelledImage],
    contract: PreprocessContract,
    feature_pass: FeaturePass,
    *,
    detect: bool,
    flip: bool = False,
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "features",
    cache: bool = True,
) -> FeatureSet:
    """Features for ``items`` (flipped crops too when ``flip``), from cache where possible.

    ``timings`` says where the time went: ``lookup`` (hashing files, reading cached
    features), ``decode`` (reading, cropping, resizing: in a background thread, overlapped
    with the network), ``network`` (the backbone), ``wall`` (all of it), how many crops
    (mirrors included) went through the network (``computed``) and how many items were
    wholly ``cached``. ``cache`` False reads and writes neither these features nor the
    detected crops (the bench times the whole pass).
    """
    started = time.perf_counter()
    folder = cache_folder(feature_pass, contract, detect)
    dtype = getattr(getattr(feature_pass, "kind", None), "dtype", np.float32)
    report = SkipReport()
    variants = (False, True) if flip else (False,)
    results: dict[tuple[str, bool], np.ndarray] = {}
    todo: list[tuple[int, str]] = []
    hashes: list[str | None] = []
    for i, item in enumerate(items):
        try:
            digest = file_sha256(item.path)
        except OSError as exc:
            report.unreadable.append((str(item.path), exc.strerror or str(exc)))
            hashes.append(None)
            continue
        hashes.append(digest)
        for v in variants:
            found = load_cached(folder, digest, v) if cache else None
            if found is not None:
                results[(digest, v)] = found
        if any((digest, v) not in results for v in variants):
            todo.append((i, digest))
    lookup = time.perf_counter() - started
    forwards = 0  # crops through the network (a crop and its mirror count twice)
    network = 0.0
    decode = [0.0]
    passed = time.perf_counter()
    bar = tqdm(total=len(todo), desc=desc, unit="crop", disable=not progress or not todo)
    for batch in _prefetch(todo, items, contract, detect, report, batch_size, decode, cache):
        for v in variants:  # only the views not cached yet (a new --flip adds the mirrors)
            rows_v = [(d, p) for d, p in batch if (d, v) not in results]
            if not rows_v:
                continue
            digests, pixels = zip(*rows_v, strict=True)
            pixels = np.stack(pixels)
            view = pixels[:, :, ::-1] if v else pixels
            tick = time.perf_counter()
            feats = feature_pass(contract.normalize(view)).astype(dtype)
            network += time.perf_counter() - tick
            forwards += len(rows_v)
            for digest, feat in zip(digests, feats, strict=True):
                results[(digest, v)] = feat
                if cache:
                    save_cached(folder, digest, v, feat)
        bar.update(len(batch))
        bar.set_postfix(crops_per_s=f"{forwards / (time.perf_counter() - passed):.0f}")
    bar.close()
    rows, levels, paths = [], [], []
    for item, digest in zip(items, hashes, strict=True):
        if digest is None:
            continue
        for v in variants:
            feat = results.get((digest, v))
            if feat is not None:
                rows.append(feat)
                levels.append(item.level)
                paths.append(str(item.path))
    if not rows:
        raise DataError(f"no usable images among {len(items)} ({report.summary()})")
    timings = {"lookup": lookup, "decode": decode[0], "network": network,
               "wall": time.perf_counter() - started, "computed": forwards,
               "cached": len(items) - len(todo)}
    return FeatureSet(np.stack(rows).astype(dtype, copy=False), np.asarray(levels), paths,
                      report, timings)


def _prefetch(
    todo: list[tuple[int, str]],
    items: Sequence[LabelledImage],
    contract: PreprocessContract,
    detect: bool,
    report: SkipReport,
    batch_size: int,
    seconds: list[float],
    cache: bool = True,
) -> Iterator[list[tuple[str, np.ndarray]]]:
    """Decode and crop the next batch in a background thread while the current one runs;
    ``seconds[0]`` accumulates the time spent decoding; ``cache``: read and write detected
    crops in the crop cache (``data.crops.load_crop``)."""
    lock = threading.Lock()

    def prepare(chunk: list[tuple[int, str]]) -> list[tuple[str, np.ndarray]]:
        tick = time.perf_counter()
        local = SkipReport()
        out = []
        for i, digest in chunk:
            crop = load_crop(items[i].path, contract, detect=detect, report=local, cache=cache)
            if crop is not None:
                out.append((digest, crop))
        with lock:
            report.unreadable.extend(local.unreadable)
            report.no_face.extend(local.no_face)
            seconds[0] += time.perf_counter() - tick
        return out

    chunks = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(prepare, chunks[0])
        for nxt in chunks[1:] + [None]:
            batch = pending.result()
            pending = pool.submit(prepare, nxt) if nxt is not None else None
            if batch:
                yield batch


def _cache_file(folder: Path, digest: str, flipped: bool) -> Path:
    return folder / digest[:2] / f"{digest}{'-flip' if flipped else ''}.npy"


def cache_folder(feature_pass: FeaturePass, contract: PreprocessContract, detect: bool) -> Path:
    """Where one backbone + contract geometry + detection setting + feature kind keeps its
    features; the Ray engine fills it (``edge_smw.engines.ray.warm_feature_cache``) before
    training reads it."""
    return cache_root() / "features" / cache_key(feature_pass, contract, detect)


def load_cached(folder: Path, digest: str, flipped: bool) -> np.ndarray | None:
    path = _cache_file(folder, digest, flipped)
    try:
        return np.load(path)
    except (OSError, ValueError):
        return None


def save_cached(folder: Path, digest: str, flipped: bool, feat: np.ndarray) -> None:
    """Store one crop's features in the dtype given (float16 for fine-tuning entries)."""
    path = _cache_file(folder, digest, flipped)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.save(handle, feat)
    except (OSError, InputError):
        pass  # a read-only cache only costs speed


def score_items(checkpoint: Any, items: Sequence[LabelledImage], *, detect: bool,
                progress: bool = True, contract: PreprocessContract | None = None
                ) -> tuple[FeatureSet, np.ndarray]:
    """(features, probabilities) of a checkpoint's model for ``items``, through the same
    cached feature pass as its training: the head kind's features, or, for a fine-tuned
    backbone, the cached entries of its first tuned unit run through the tuned units.
    ``contract``: crop with this one instead of the checkpoint's (another face detector)."""
    from edge_smw.train.finetune import CachedHeadInputs, head_features

    contract = contract or checkpoint.contract
    spec = get_backbone(checkpoint.backbone)
    kind = checkpoint.kind
    if not checkpoint.finetune_last:
        feature_pass = FeaturePass(spec, weights=checkpoint.backbone_weights, head=kind)
        feats = compute_features(items, contract, feature_pass, detect=detect,
                                 progress=progress, desc="features")
        model_head = checkpoint.head()
        features = feats.features
    else:
        model = checkpoint.build_model()
        start = len(model.feature_maps.unit_names) - checkpoint.finetune_last
        feature_pass = FeaturePass(spec, weights=checkpoint.backbone_weights, head=kind,
                                   start=start)
        feats = compute_features(items, contract, feature_pass, detect=detect,
                                 progress=progress, desc="features")
        inputs = CachedHeadInputs(model.feature_maps, kind, start, feature_pass.entry_shape)
        features = head_features(inputs.eval(), feats.features)
        model_head = model.head
    with torch.no_grad():
        probs = model_head(torch.from_numpy(features)).softmax(1).numpy()
    return feats, probs
