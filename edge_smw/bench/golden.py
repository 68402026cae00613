"""Golden outputs: the torch model's answers on fixed inputs, saved once, checked anywhere.

``--golden save FILE`` (on the training machine, with torch) writes the bench's labelled
crops as uint8 model pixels with the torch model's probabilities and logits. ``--golden
check FILE`` (on a Jetson, without torch) runs the export's models on those same pixels and
compares them, so an engine built on the device is judged against torch itself, not against
another export. Pixels rather than normalised tensors: 4x smaller, and the device's own
``contract.normalize`` is then part of what is checked. numpy only: no torch import here.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_smw.atomic import atomic_open
from edge_smw.contract import PreprocessContract
from edge_smw.errors import InputError, ModelError

FORMAT = "edge-smw-golden"
FORMAT_VERSION = 1
# Crops kept in a golden file (stratified by level): enough to see a 1% disagreement, small
# enough (tens of MB at 224 px) to copy to a device.
GOLDEN_MAX = 256


@dataclass
class Golden:
    pixels: np.ndarray  # uint8 (N, H, W, 3) model pixels, contract colour order
    labels: np.ndarray | None  # true levels, where known
    probabilities: np.ndarray  # float64 (N, K), the reference model's
    logits: np.ndarray  # float64 (N, K)
    contract: PreprocessContract
    checkpoint_sha256: str | None
    meta: dict[str, Any]

    @property
    def levels(self) -> tuple[str, ...]:
        return self.contract.levels

    def __len__(self) -> int:
        return len(self.pixels)


def save_golden(path: str | Path, pixels: np.ndarray, labels: np.ndarray | None,
                probabilities: np.ndarray, logits: np.ndarray, contract: PreprocessContract,
                checkpoint_sha256: str | None, **meta: Any) -> Path:
    """Write the golden file atomically (a crash leaves the old file or none)."""
    path = Path(path)
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim != 4 or pixels.shape[-1] != 3 or len(pixels) != len(probabilities):
        raise InputError(f"golden pixels must be (N, H, W, 3) with one row of probabilities "
                         f"each, got {pixels.shape} and {np.shape(probabilities)}")
    header = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "contract": contract.to_dict(), "contract_sha256": contract.sha256,
        "checkpoint_sha256": checkpoint_sha256,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **meta,
    }
    arrays = {
        "pixels": pixels,
        "probabilities": np.asarray(probabilities, dtype=np.float64),
        "logits": np.asarray(logits, dtype=np.float64),
        "header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
    }
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    with atomic_open(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return path


def load_golden(path: str | Path) -> Golden:
    path = Path(path)
    # ``save_golden`` writes a .npz (a zip): anything else (empty, text, a bare .npy) is not
    # one, whatever numpy's own reason for refusing it would say.
    if path.is_file() and not zipfile.is_zipfile(path):
        raise InputError(f"{path} is not a golden file written by `edge-smw bench EXPORT_DIR "
                         "--golden save FILE`; give one, or save one where torch is installed")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise InputError(f"golden file {path} not found; make one with `edge-smw bench "
                         "EXPORT_DIR --golden save FILE` where torch is installed") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path} is not a readable golden file ({exc}); save it again") from None
    try:
        header = json.loads(arrays["header"].tobytes().decode())
        if header.get("format") != FORMAT:
            raise ValueError("not an edge-smw golden file")
        if int(header.get("format_version", 0)) > FORMAT_VERSION:
            raise ModelError(f"{path} was written by a newer edge-smw (golden format "
                             f"{header['format_version']}); upgrade edge-smw")
        contract = PreprocessContract.from_dict(header["contract"])
        golden = Golden(
            pixels=arrays["pixels"], labels=arrays.get("labels"),
            probabilities=arrays["probabilities"], logits=arrays["logits"],
            contract=contract, checkpoint_sha256=header.get("checkpoint_sha256"), meta=header,
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(f"{path} is not an edge-smw golden file ({exc})") from None
    if golden.pixels.dtype != np.uint8 or golden.pixels.ndim != 4 or \
            golden.probabilities.shape != (len(golden.pixels), contract.num_levels):
        raise InputError(f"{path}: golden arrays have inconsistent shapes "
                         f"{golden.pixels.shape} / {golden.probabilities.shape}")
    if contract.sha256 != header.get("contract_sha256"):
        raise InputError(f"{path}: its contract does not match its own checksum; the file was "
                         "edited or is corrupt: save it again")
    return golden


def check_compatible(golden: Golden, source: Path, contract: PreprocessContract,
                     checkpoint_sha256: str | None, model: str) -> None:
    """The golden file must come from the same checkpoint and preprocessing as the model."""
    if contract.sha256 != golden.contract.sha256:
        raise ModelError(f"{model} uses a different preprocessing contract from the golden file "
                         f"{source} ({contract.to_json()} vs {golden.contract.to_json()}): "
                         "save a golden file from this model's checkpoint")
    if checkpoint_sha256 and golden.checkpoint_sha256 and \
            checkpoint_sha256 != golden.checkpoint_sha256:
        raise ModelError(f"{model} was exported from checkpoint {checkpoint_sha256[:12]}, the "
                         f"golden file {source} from {golden.checkpoint_sha256[:12]}: save a "
                         "golden file from the checkpoint this export came from")
