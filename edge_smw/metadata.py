"""What an exported model carries about itself, and how it is stored.

ONNX models keep it in ``metadata_props``; TensorRT engines, whose plan file must stay
untouched so trtexec can load it, keep it in a sidecar ``<engine>.json``. The runtime reads
everything it needs from here; nothing is configured twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_smw.contract import PreprocessContract
from edge_smw.errors import ModelError

FORMAT_VERSION = 1
KEY_FORMAT = "edge_smw.format"
KEY_CONTRACT = "edge_smw.contract"
KEY_INFO = "edge_smw.info"

INPUT_NAME = "input"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_LOGITS = "logits"
OUTPUT_FEATURE_MAP = "feature_map"


@dataclass
class ModelInfo:
    """Everything the runtime and bench need to know about an exported model."""

    contract: PreprocessContract
    backbone: str
    precision: str = "fp32"
    flavour: str | None = None
    checkpoint_sha256: str | None = None
    calibration_sha256: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    toolkit_version: str = ""
    has_feature_map: bool = False
    head_weight: list[list[float]] | None = None  # for gradient-free CAM on the device
    head_bias: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def levels(self) -> tuple[str, ...]:
        return self.contract.levels

    @property
    def detect(self) -> bool:
        """Was the model trained on detected faces (True) or on whole images / face crops?
        Models exported before this was recorded were trained with detection on."""
        return bool(self.extra.get("detect", True))

    def info_dict(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "precision": self.precision,
            "flavour": self.flavour,
            "checkpoint_sha256": self.checkpoint_sha256,
            "calibration_sha256": self.calibration_sha256,
            "metrics": self.metrics,
            "toolkit_version": self.toolkit_version,
            "has_feature_map": self.has_feature_map,
            "head_weight": self.head_weight,
            "head_bias": self.head_bias,
            "extra": self.extra,
        }

    def to_props(self) -> dict[str, str]:
        return {
            KEY_FORMAT: str(FORMAT_VERSION),
            KEY_CONTRACT: self.contract.to_json(),
            KEY_INFO: json.dumps(self.info_dict(), sort_keys=True),
        }

    @classmethod
    def from_props(cls, props: dict[str, str], source: object = "model") -> ModelInfo:
        if KEY_CONTRACT not in props or KEY_INFO not in props:
            raise ModelError(
                f"{source} carries no edge-smw metadata (no '{KEY_CONTRACT}'): it is not an "
                "edge-smw model; export one with `edge-smw export RUN_DIR`"
            )
        try:
            version = int(props.get(KEY_FORMAT, "1"))
        except ValueError as exc:
            raise ModelError(f"{source}: bad '{KEY_FORMAT}' metadata") from exc
        if version > FORMAT_VERSION:
            raise ModelError(
                f"{source} was exported by a newer edge-smw (metadata format {version}, "
                f"this one reads {FORMAT_VERSION}); upgrade edge-smw"
            )
        contract = PreprocessContract.from_json(props[KEY_CONTRACT])
        try:
            info = json.loads(props[KEY_INFO])
        except json.JSONDecodeError as exc:
            raise ModelError(f"{source}: '{KEY_INFO}' metadata is not valid JSON") from exc
        known = {k: info[k] for k in cls.__dataclass_fields__ if k in info and k != "contract"}
        return cls(contract=contract, **known)

    @classmethod
    def from_file(cls, path: str | Path) -> ModelInfo:
        """The one way to read an exported model's metadata: an ONNX file's own
        ``metadata_props``, or an engine's sidecar."""
        from edge_smw.artifacts.folders import is_engine
        from edge_smw.artifacts.sessions import read_metadata

        path = Path(path)
        if is_engine(path):
            return cls.from_sidecar(sidecar_path(path))
        if not path.is_file():
            raise ModelError(f"model {path} not found")
        try:
            props = read_metadata(path)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own load error types
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelError(f"{path} cannot be loaded by onnxruntime ({reason}); it is "
                             "truncated, corrupt or not an ONNX model: re-export it with "
                             "`edge-smw export`") from None
        return cls.from_props(props, source=path)

    # -- sidecar for engines --------------------------------------------------------------
    def to_sidecar(self) -> dict[str, Any]:
        return {"edge_smw_metadata": self.to_props()}

    @classmethod
    def from_sidecar(cls, path: str | Path) -> ModelInfo:
        return cls.from_props(read_sidecar(path), source=Path(path))


def read_sidecar(path: str | Path) -> dict[str, str]:
    """An engine sidecar's metadata properties (the same keys an ONNX file carries)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        props = data["edge_smw_metadata"]
        if not isinstance(props, dict):
            raise TypeError("'edge_smw_metadata' is not an object")
    except FileNotFoundError as exc:
        raise ModelError(
            f"{path} not found: an engine needs its metadata sidecar beside it; re-export "
            "with `edge-smw export --engine`"
        ) from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: not a valid edge-smw engine sidecar ({exc})") from exc
    return {str(k): str(v) for k, v in props.items()}


def sidecar_path(engine_path: str | Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")
