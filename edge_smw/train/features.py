"""The feature pass: frozen backbone features for every crop, computed once and cached.

Training a linear head on a frozen backbone is dominated by this pass, so it runs the
backbone through onnxruntime (about 5x torch eager on two CPU cores) while a background
thread decodes and crops the next batch, and caches each crop's features by
(file hash, backbone weights, contract geometry, detection, flip).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from edge_smw.artifacts.sessions import SessionSettings, load_session
from edge_smw.atomic import atomic_path
from edge_smw.cache import cache_root, file_sha256
from edge_smw.contract import PreprocessContract
from edge_smw.data.crops import SkipReport, load_crop
from edge_smw.data.datasets import LabelledImage
from edge_smw.errors import DataError, InputError
from edge_smw.train.backbones import BackboneSpec, build_feature_maps, weights_fingerprint
from edge_smw.train.model import PooledFeatures


def export_pooled_backbone(module: torch.nn.Module, input_size: int, target: Path) -> Path:
    """Write backbone + average pool as ONNX (dynamic batch), atomically."""
    example = torch.zeros(2, 3, input_size, input_size)
    with atomic_path(target) as tmp:
        torch.onnx.export(
            PooledFeatures(module).eval(), (example,), str(tmp), dynamo=False, opset_version=17,
            input_names=["input"], output_names=["features"],
            dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}},
        )
    return target


class FeaturePass:
    """Pooled backbone features of network inputs, through onnxruntime."""

    def __init__(
        self, spec: BackboneSpec, *, weights: str | Path | None = None, threads: int | None = None
    ) -> None:
        self.spec = spec
        self.module = build_feature_maps(spec, weights)
        self.fingerprint = weights_fingerprint(self.module)
        self.onnx_path = cache_root() / "backbones" / f"{spec.name}-{self.fingerprint}.onnx"
        if not self.onnx_path.is_file():
            export_pooled_backbone(self.module, spec.input_size, self.onnx_path)
        self._session = load_session(self.onnx_path, SessionSettings(threads=threads))

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        return self._session.run(None, {"input": inputs})[0]


@dataclass
class FeatureSet:
    features: np.ndarray  # (N, D) float32
    levels: np.ndarray  # (N,) int64
    paths: list[str]
    skipped: SkipReport


def cache_key(feature_pass: FeaturePass, contract: PreprocessContract, detect: bool) -> str:
    geo = contract.geometry_sha256[:12]
    mode = "det" if detect else "whole"
    return f"{feature_pass.spec.name}-{feature_pass.fingerprint}-{geo}-{mode}"


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
) -> FeatureSet:
    """Features for ``items`` (flipped crops too when ``flip``), from cache where possible."""
    folder = cache_folder(feature_pass, contract, detect)
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
        cached = [load_cached(folder, digest, v) for v in variants]
        if all(c is not None for c in cached):
            for v, c in zip(variants, cached, strict=True):
                results[(digest, v)] = c
        else:
            todo.append((i, digest))
    done = 0
    started = time.perf_counter()
    bar = tqdm(total=len(todo), desc=desc, unit="crop", disable=not progress or not todo)
    for batch in _prefetch(todo, items, contract, detect, report, batch_size):
        digests, pixels = zip(*batch, strict=True)
        pixels = np.stack(pixels)
        for v in variants:
            view = pixels[:, :, ::-1] if v else pixels
            feats = feature_pass(contract.normalize(view))
            for digest, feat in zip(digests, feats, strict=True):
                results[(digest, v)] = feat
                save_cached(folder, digest, v, feat)
        done += len(batch)
        bar.update(len(batch))
        bar.set_postfix(crops_per_s=f"{done * len(variants) / (time.perf_counter() - started):.0f}")
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
    return FeatureSet(np.stack(rows).astype(np.float32), np.asarray(levels), paths, report)


def _prefetch(
    todo: list[tuple[int, str]],
    items: Sequence[LabelledImage],
    contract: PreprocessContract,
    detect: bool,
    report: SkipReport,
    batch_size: int,
) -> Iterator[list[tuple[str, np.ndarray]]]:
    """Decode and crop the next batch in a background thread while the current one runs."""
    lock = threading.Lock()

    def prepare(chunk: list[tuple[int, str]]) -> list[tuple[str, np.ndarray]]:
        local = SkipReport()
        out = []
        for i, digest in chunk:
            crop = load_crop(items[i].path, contract, detect=detect, report=local)
            if crop is not None:
                out.append((digest, crop))
        with lock:
            report.unreadable.extend(local.unreadable)
            report.no_face.extend(local.no_face)
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
    """Where one backbone + contract geometry + detection setting keeps its features; the Ray
    engine fills it (``edge_smw.engines.ray.warm_feature_cache``) before training reads it."""
    return cache_root() / "features" / cache_key(feature_pass, contract, detect)


def load_cached(folder: Path, digest: str, flipped: bool) -> np.ndarray | None:
    path = _cache_file(folder, digest, flipped)
    try:
        return np.load(path)
    except (OSError, ValueError):
        return None


def save_cached(folder: Path, digest: str, flipped: bool, feat: np.ndarray) -> None:
    path = _cache_file(folder, digest, flipped)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.save(handle, feat.astype(np.float32))
    except (OSError, InputError):
        pass  # a read-only cache only costs speed
