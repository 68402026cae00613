"""Checkpoint -> one self-describing ONNX file (fp32).

Backbone + head (any head kind: always ``Gemm`` on a ``ReduceMean``, see
``edge_smw.train.model``), opset 17, dynamic batch, no external data, full ``onnx.checker``
check, simplified with onnxslim, outputs ``probabilities`` and ``logits`` (and, on request,
the head map as ``feature_map`` for gradient-free CAM on the device). The preprocessing
contract and the model's facts go into ``metadata_props``: the runtime needs nothing else.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from edge_smw import __version__
from edge_smw.atomic import atomic_path
from edge_smw.errors import InputError
from edge_smw.metadata import (
    INPUT_NAME,
    OUTPUT_FEATURE_MAP,
    OUTPUT_LOGITS,
    OUTPUT_PROBABILITIES,
    ModelInfo,
)
from edge_smw.train.checkpoint import Checkpoint
from edge_smw.train.model import ScoreModel

OPSET = 17


class _ExportModule(nn.Module):
    def __init__(self, model: ScoreModel, feature_map: bool) -> None:
        super().__init__()
        self.model = model
        self.feature_map = feature_map

    def forward(self, x: torch.Tensor):  # noqa: ANN201 - tuple arity depends on flag
        logits, maps = self.model.forward_with_maps(x)
        if self.feature_map:
            return logits.softmax(dim=1), logits, maps
        return logits.softmax(dim=1), logits


def model_info(checkpoint: Checkpoint, *, precision: str = "fp32", feature_map: bool = False,
               **extra: object) -> ModelInfo:
    """The metadata every export of ``checkpoint`` carries."""
    return ModelInfo(
        contract=checkpoint.contract,
        backbone=checkpoint.backbone,
        precision=precision,
        checkpoint_sha256=checkpoint.sha256,
        metrics=checkpoint.metrics,
        toolkit_version=__version__,
        has_feature_map=feature_map,
        head_weight=checkpoint.head_weight.tolist() if feature_map else None,
        head_bias=checkpoint.head_bias.tolist() if feature_map else None,
        extra={"detect": checkpoint.detect, "head": checkpoint.head_kind,
               "finetune_last": checkpoint.finetune_last, **extra},
    )


def set_metadata(model: onnx.ModelProto, info: ModelInfo) -> None:
    props = info.to_props()
    keep = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)


def save_model(model: onnx.ModelProto, path: str | Path) -> Path:
    """Full check, then an atomic single-file save (no external data)."""
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp), save_as_external_data=False)
    return path


def export_fp32(
    checkpoint: Checkpoint, path: str | Path, *, feature_map: bool = False,
    model: ScoreModel | None = None, simplify: bool = True,
) -> Path:
    """Write the fp32 ONNX model for ``checkpoint`` to ``path``."""
    import onnxslim

    if feature_map and not checkpoint.kind.cam:
        raise InputError(f"--feature-map serves CAM on the device, which needs a head on "
                         f"globally pooled features; this model's '{checkpoint.head_kind}' head "
                         "pools regions: export without --feature-map")
    model = model or checkpoint.build_model()
    size = checkpoint.contract.input_size
    example = torch.zeros(2, 3, size, size)
    outputs = [OUTPUT_PROBABILITIES, OUTPUT_LOGITS] + ([OUTPUT_FEATURE_MAP] if feature_map else [])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as scratch, \
            warnings.catch_warnings():
        # the head reads spatial sizes as Python ints: they are static by design (fixed input
        # size, only the batch is dynamic), which is what the tracer warns about
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        raw = Path(scratch) / "raw.onnx"
        torch.onnx.export(
            _ExportModule(model, feature_map).eval(), (example,), str(raw), dynamo=False,
            opset_version=OPSET, input_names=[INPUT_NAME], output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]},
        )
        proto = onnx.load(str(raw))
    if simplify:
        proto = onnxslim.slim(proto)
    set_metadata(proto, model_info(checkpoint, feature_map=feature_map))
    return save_model(proto, path)
