"""Checkpoints: head weights + everything needed to rebuild and trust the model.

Saved with torch.save as plain tensors, strings and numbers, loaded with
``weights_only=True`` (no pickle code runs), written atomically.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_smw import __version__
from edge_smw.artifacts.folders import (
    CHECKPOINT_NAME,
    EXPORT_JSON,
    ExportDir,
    checkpoint_file,
    is_exported_model,
)
from edge_smw.atomic import atomic_path
from edge_smw.cache import file_sha256
from edge_smw.contract import PreprocessContract
from edge_smw.errors import ModelError
from edge_smw.train.backbones import build_feature_maps, get_backbone, weights_fingerprint
from edge_smw.train.model import (
    DEFAULT_HEAD,
    HEAD_KINDS,
    HeadKind,
    ScoreModel,
    get_head_kind,
)

FORMAT = "edge-smw-checkpoint"
FORMAT_VERSION = 2  # 2: head kind and fine-tuned backbone units (1 is written when unused)


@dataclass
class Checkpoint:
    head_weight: np.ndarray
    head_bias: np.ndarray
    backbone: str
    backbone_fingerprint: str
    contract: PreprocessContract
    detect: bool
    split_sha256: str | None = None
    backbone_weights: str | None = None
    head_kind: str = DEFAULT_HEAD
    finetune_last: int = 0  # backbone units trained with the head (their weights below)
    tuned_state: dict[str, np.ndarray] = field(default_factory=dict)  # names inside the body
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    sha256: str | None = None

    @property
    def levels(self) -> tuple[str, ...]:
        return self.contract.levels

    def head(self) -> nn.Linear:
        layer = nn.Linear(self.head_weight.shape[1], self.head_weight.shape[0])
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(self.head_weight))
            layer.bias.copy_(torch.from_numpy(self.head_bias))
        return layer.eval()

    @property
    def kind(self) -> HeadKind:
        return get_head_kind(self.head_kind)

    def build_model(self) -> ScoreModel:
        """The full torch model; refuses backbone weights other than those it was trained on."""
        spec = get_backbone(self.backbone)
        maps = build_feature_maps(spec, self.backbone_weights)
        found = weights_fingerprint(maps)
        if found != self.backbone_fingerprint:
            raise ModelError(
                f"the {self.backbone} weights here ({found}) differ from those this checkpoint "
                f"was trained on ({self.backbone_fingerprint}); pass the same --backbone-weights"
            )
        if self.tuned_state:
            load_tuned_state(maps, self.tuned_state, self.path or "checkpoint")
        return ScoreModel(maps, self.head(), self.kind).eval()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        plain = self.head_kind == DEFAULT_HEAD and not self.tuned_state
        payload = {
            "format": FORMAT,
            "format_version": 1 if plain else FORMAT_VERSION,
            "head_weight": torch.from_numpy(np.ascontiguousarray(self.head_weight, np.float32)),
            "head_bias": torch.from_numpy(np.ascontiguousarray(self.head_bias, np.float32)),
            "backbone": self.backbone,
            "backbone_fingerprint": self.backbone_fingerprint,
            "backbone_weights": self.backbone_weights or "",
            "contract": self.contract.to_json(),
            "detect": bool(self.detect),
            "split_sha256": self.split_sha256 or "",
            "metrics": json.dumps(self.metrics),
            "config": json.dumps(self.config),
            "versions": json.dumps(self.versions or current_versions()),
        }
        if not plain:
            payload.update({
                "head_kind": self.head_kind, "finetune_last": int(self.finetune_last),
                "tuned_state": {k: torch.as_tensor(np.asarray(v)).contiguous()
                                for k, v in self.tuned_state.items()},
            })
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        return path


def load_tuned_state(maps: nn.Module, state: dict[str, np.ndarray], source: object) -> None:
    """Put fine-tuned unit weights (names inside the backbone body) into ``maps``."""
    own = maps.body.state_dict()
    tensors = {}
    for name, value in state.items():
        if name not in own or tuple(own[name].shape) != tuple(np.shape(value)):
            raise ModelError(f"{source}: fine-tuned weight {name} {tuple(np.shape(value))} does "
                             "not fit this backbone; the checkpoint is corrupt or from another "
                             "backbone")
        tensors[name] = torch.as_tensor(np.asarray(value))
    maps.body.load_state_dict(tensors, strict=False)


def current_versions() -> dict[str, str]:
    import timm

    return {"edge_smw": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version()}


def resolve_checkpoint(path: str | Path) -> Path:
    given = Path(path)
    path = checkpoint_file(given)
    if given.is_dir() and not path.is_file():
        exported = ExportDir(given).model_files()
        if exported:
            # Commands that score take an export folder before they get here; this one needs
            # the torch model.
            raise ModelError(
                f"{given} is an export folder ({', '.join(p.name for p in exported)}), not a "
                "training run: this command needs the run folder made by `edge-smw train` (or "
                f"its {CHECKPOINT_NAME}), the one {EXPORT_JSON}'s source names"
            )
        # Commands that also take an export folder route it away before they get here.
        raise ModelError(
            f"{given} holds neither a training checkpoint ({CHECKPOINT_NAME}) nor an exported "
            "model (.onnx, .engine): give a run folder made by `edge-smw train` or its "
            f"{CHECKPOINT_NAME}"
        )
    if given.is_file() and is_exported_model(given):  # another kind of model, not corrupt
        raise ModelError(
            f"{given} is an exported model, not a training checkpoint: this command needs the "
            f"torch model, i.e. the run folder made by `edge-smw train` (or its "
            f"{CHECKPOINT_NAME}) that it was exported from"
        )
    if not path.is_file():
        raise ModelError(
            f"no checkpoint at {path}; give a run folder made by `edge-smw train` or its "
            f"{CHECKPOINT_NAME}"
        )
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = resolve_checkpoint(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"{path} is not a readable edge-smw checkpoint ({exc.__class__.__name__}); it may be "
            "truncated or corrupt: train again with `edge-smw train`"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{path} is not an edge-smw checkpoint")
    version = payload.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelError(
            f"{path} was written by a newer edge-smw (checkpoint format {version}, this one "
            f"reads {FORMAT_VERSION}); upgrade edge-smw"
        )
    head_kind = str(payload.get("head_kind", DEFAULT_HEAD))
    if head_kind not in HEAD_KINDS:
        raise ModelError(f"{path} has a head of kind {head_kind!r}, which this edge-smw does not "
                         f"know ({list(HEAD_KINDS)}); upgrade edge-smw")
    try:
        return Checkpoint(
            head_weight=payload["head_weight"].numpy(),
            head_bias=payload["head_bias"].numpy(),
            backbone=payload["backbone"],
            backbone_fingerprint=payload["backbone_fingerprint"],
            backbone_weights=payload["backbone_weights"] or None,
            contract=PreprocessContract.from_json(payload["contract"]),
            detect=bool(payload["detect"]),
            split_sha256=payload["split_sha256"] or None,
            metrics=json.loads(payload["metrics"]),
            config=json.loads(payload["config"]),
            versions=json.loads(payload["versions"]),
            head_kind=head_kind,
            finetune_last=int(payload.get("finetune_last", 0)),
            tuned_state={k: v.numpy() for k, v in payload.get("tuned_state", {}).items()},
            path=path,
            sha256=file_sha256(path),
        )
    except (KeyError, AttributeError, ValueError) as exc:
        raise ModelError(f"{path}: checkpoint is missing or has a bad field ({exc})") from None
