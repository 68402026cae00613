"""What an export folder holds, which backend each model is meant for, and the torch model
it came from.

Models are recognised by their own edge-smw metadata (ONNX ``metadata_props`` or an engine's
sidecar), never by file name, so a folder with extra files or renamed models still works.
The torch model is found through ``export.json`` or ``--checkpoint`` and must be the one the
models were exported from (same checkpoint sha256): comparing an export with another
checkpoint would make every parity figure meaningless.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_smw.artifacts.folders import EXPORT_JSON, ExportDir, checkpoint_file, is_engine
from edge_smw.artifacts.formats import (
    BACKENDS,
    ENGINE_BACKENDS,
    ONNX_BACKENDS,
    ArtifactFormat,
    model_format,
)
from edge_smw.bench.results import BenchedModel, SkippedFile
from edge_smw.contract import PreprocessContract
from edge_smw.errors import BackendUnavailableError, InputError, ModelError
from edge_smw.metadata import ModelInfo

log = logging.getLogger("edge_smw.bench")

TORCH_BACKEND = "torch-eager"
ALL_BACKENDS = (TORCH_BACKEND, *BACKENDS)


@dataclass
class ModelEntry:
    """One exported model file and what its metadata says about it."""

    name: str
    path: Path
    kind: str  # "onnx" or "engine"
    info: ModelInfo

    @property
    def precision(self) -> str:
        return self.info.precision

    @property
    def flavour(self) -> str | None:
        return self.info.flavour

    @property
    def size_mb(self) -> float:
        return self.path.stat().st_size / 2**20

    @property
    def format(self) -> ArtifactFormat:
        """This model's row of the formats table, from its own metadata (not its name)."""
        return model_format(self.kind, self.precision, self.flavour)

    @property
    def label(self) -> str:
        """The "format" column of the table, like Ultralytics' benchmark."""
        return self.format.label

    def backends(self) -> tuple[str, ...]:
        return ENGINE_BACKENDS if self.kind == "engine" else ONNX_BACKENDS

    def intended(self, backend: str) -> bool:
        """Is ``backend`` what this model was built for? (Speed gates only judge those.)"""
        return self.format.intended(backend)

    def backend_options(self, backend: str, *, spinning: bool = True) -> dict[str, Any]:
        """Runtime ``backend_options``; ``spinning=False`` makes onnxruntime's threads sleep
        even inside a call (the end-to-end section's variant; ``SessionSettings.spinning``)."""
        options: dict[str, Any] = {}
        if backend == "onnxruntime-tensorrt":
            options.update(trt_fp16=self.precision == "fp16", trt_int8=self.precision == "int8")
        if backend.startswith("onnxruntime-") and not spinning:
            options["allow_spinning"] = False
        return options

    def describe(self) -> BenchedModel:
        return BenchedModel(
            model=self.name, path=str(self.path), kind=self.kind, precision=self.precision,
            flavour=self.flavour, size_mb=round(self.size_mb, 3), label=self.label,
            checkpoint_sha256=self.info.checkpoint_sha256,
            calibration_sha256=self.info.calibration_sha256,
            contract_sha256=self.info.contract.sha256)


def discover_models(export_dir: str | Path) -> tuple[list[ModelEntry], list[SkippedFile]]:
    """(models, skipped files with reasons) in ``export_dir``; fp32 first, then by name."""
    folder = Path(export_dir)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give the export folder written by "
                         "`edge-smw export RUN_DIR --out DIR`")
    models: list[ModelEntry] = []
    skipped: list[SkippedFile] = []
    for path in ExportDir(folder).model_files():
        try:
            info = ModelInfo.from_file(path)
        except ModelError as exc:
            skipped.append(SkippedFile(file=path.name, reason=str(exc)))
            continue
        models.append(ModelEntry(path.name, path, "engine" if is_engine(path) else "onnx", info))
    if not models:
        raise ModelError(f"{folder} holds no edge-smw model (.onnx with edge-smw metadata or "
                         ".engine with its sidecar); export one with `edge-smw export RUN_DIR "
                         f"--out {folder}`"
                         + (f"; skipped: {[s.to_dict() for s in skipped]}" if skipped
                            else ""))
    order = {"fp32": 0, "int8": 1, "fp16": 2}
    models.sort(key=lambda m: (m.kind != "onnx", order.get(m.precision, 9), m.name))
    contracts = {m.info.contract.sha256 for m in models}
    if len(contracts) > 1:
        raise ModelError(f"the models in {folder} have different preprocessing contracts "
                         f"({', '.join(m.name for m in models)}): they are not one export; "
                         "bench one export folder at a time")
    sources = {m.info.checkpoint_sha256 for m in models if m.info.checkpoint_sha256}
    if len(sources) > 1:
        by = ", ".join(f"{m.name}: {(m.info.checkpoint_sha256 or '?')[:12]}" for m in models)
        raise ModelError(f"the models in {folder} were exported from different checkpoints "
                         f"({by}): some are stale; re-export the folder from one run")
    return models, skipped


def reference_model(models: list[ModelEntry]) -> ModelEntry:
    """The fp32 ONNX model: FLOP counting, plain-onnxruntime comparison."""
    for m in models:
        if m.kind == "onnx" and m.precision == "fp32":
            return m
    return models[0]


def _checkpoint_candidates(data: Any, key: str = "") -> Iterator[str]:
    """String values under keys that name a checkpoint or run, anywhere in export.json."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _checkpoint_candidates(v, str(k).lower())
    elif isinstance(data, list):
        for v in data:
            yield from _checkpoint_candidates(v, key)
    elif isinstance(data, str) and any(w in key for w in ("checkpoint", "run", "source")):
        if not key.endswith(("sha256", "hash", "digest")):
            yield data


def find_checkpoint(export_dir: Path, explicit: str | Path | None,
                    models: list[ModelEntry]) -> Path:
    """The checkpoint file the export was made from; raises with what to pass otherwise."""
    from edge_smw.cache import file_sha256

    wanted = {m.info.checkpoint_sha256 for m in models if m.info.checkpoint_sha256}
    if explicit is not None:
        path = checkpoint_file(explicit)
        if not path.is_file():
            raise InputError(f"--checkpoint {explicit}: no checkpoint there; give the run "
                             "folder made by `edge-smw train` or its checkpoint.pt")
        digest = file_sha256(path)
        if wanted and digest not in wanted:
            raise ModelError(f"--checkpoint {path} (sha256 {digest[:12]}) is not the checkpoint "
                             f"these models were exported from ({sorted(w[:12] for w in wanted)})"
                             "; pass the run the export was made from")
        return path
    data = ExportDir(export_dir).read_export_json()
    tried = []
    for text in _checkpoint_candidates(data or {}):
        for base in (Path.cwd(), export_dir):
            path = checkpoint_file(Path(text) if Path(text).is_absolute() else base / text)
            if path.suffix != ".pt" or not path.is_file():
                continue
            if not wanted or file_sha256(path) in wanted:
                return path
            tried.append(str(path))
    where = f"{export_dir / EXPORT_JSON}" if data is not None else f"no {EXPORT_JSON}"
    extra = f" (found {tried}, but their sha256 differs from the models')" if tried else ""
    raise ModelError(f"cannot find the torch checkpoint these models came from ({where}{extra}); "
                     "pass --checkpoint RUN_DIR, or compare against saved outputs with "
                     "--golden check FILE (no torch needed)")


def require_torch() -> None:
    """The torch reference (reference outputs, eager baseline, attacks) needs torch."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise BackendUnavailableError("the torch reference needs torch, which is not installed "
                                      "here: pip install 'edge-smw[train]'")


class TorchReference:
    """The checkpoint's torch model: the reference outputs, the eager baseline, the attacker."""

    def __init__(self, checkpoint_path: Path, threads: int | None = None) -> None:
        try:
            import torch
        except ModuleNotFoundError:
            raise BackendUnavailableError("the torch reference needs torch: pip install "
                                          "edge-smw[train]") from None
        from edge_smw.train.checkpoint import load_checkpoint

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.checkpoint = load_checkpoint(checkpoint_path)
        self.path = checkpoint_path
        self.model = self.checkpoint.build_model().eval()
        self.contract: PreprocessContract = self.checkpoint.contract
        self.threads = torch.get_num_threads()

    @property
    def levels(self) -> tuple[str, ...]:
        return self.contract.levels

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        """Network input NCHW float32 -> probabilities (what the eager baseline times)."""
        torch = self.torch
        with torch.inference_mode():
            return self.model(torch.from_numpy(inputs)).softmax(1).numpy()

    def probabilities(self, pixels: np.ndarray, batch: int = 32) -> np.ndarray:
        """uint8 NHWC model pixels -> float64 probabilities, in batches."""
        parts = [self.forward(self.contract.normalize(pixels[i : i + batch]))
                 for i in range(0, len(pixels), batch)]
        return np.concatenate(parts).astype(np.float64)

    def logits(self, pixels: np.ndarray, batch: int = 32) -> np.ndarray:
        torch = self.torch
        parts = []
        with torch.inference_mode():
            for i in range(0, len(pixels), batch):
                x = torch.from_numpy(self.contract.normalize(pixels[i : i + batch]))
                parts.append(self.model(x).numpy())
        return np.concatenate(parts).astype(np.float64)

    def pixel_model(self) -> Any:
        from edge_smw.train.model import PixelModel

        return PixelModel(self.contract, self.model).eval()
