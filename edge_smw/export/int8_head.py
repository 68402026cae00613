"""A head trained for the precision it runs in (``--int8-aware-head``).

The backbone is frozen, so only the linear head was ever trained, and it was trained on
float features. Here it is retrained, with the checkpoint's own recipe (loss, learning rate,
momentum, epochs, seed), on the features the *quantized* backbone computes for the training
split: it learns the int8 features' quirks (shifted means, lost resolution) instead of
being surprised by them. The head itself stays float in the model (see ``float_tail``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edge_smw.contract import PreprocessContract
from edge_smw.data.crops import SkipReport, iter_crop_batches
from edge_smw.data.datasets import LabelledImage
from edge_smw.errors import DataError, ModelError
from edge_smw.metadata import INPUT_NAME, OUTPUT_LOGITS
from edge_smw.train.checkpoint import Checkpoint
from edge_smw.train.heads import HeadConfig, train_head

POOLED = "edge_smw_pooled_features"


def _head_node(model: onnx.ModelProto) -> onnx.NodeProto:
    for node in model.graph.node:
        if OUTPUT_LOGITS in node.output:
            if node.op_type != "Gemm":
                raise ModelError(f"the '{OUTPUT_LOGITS}' output comes from {node.op_type}, not "
                                 "a linear head (Gemm): cannot retrain it")
            return node
    raise ModelError(f"the model has no '{OUTPUT_LOGITS}' output: not an edge-smw export")


def with_pooled_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy that also outputs the pooled features feeding the head (as ``POOLED``)."""
    model = copy.deepcopy(model)
    head = _head_node(model)
    features = head.input[0]
    model.graph.node.append(onnx.helper.make_node("Identity", [features], [POOLED],
                                                  name=f"{POOLED}_out"))
    model.graph.output.append(onnx.helper.make_tensor_value_info(
        POOLED, onnx.TensorProto.FLOAT, ["batch", None]))
    return model


def quantized_features(model: onnx.ModelProto, items: Sequence[LabelledImage],
                       contract: PreprocessContract, *, detect: bool, flip: bool = False,
                       batch_size: int = 32, progress: bool = True
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features of ``items`` as the given (quantized) model computes them."""
    import tempfile
    from pathlib import Path

    from tqdm.auto import tqdm

    from edge_smw.artifacts.sessions import SessionSettings, load_session

    with tempfile.TemporaryDirectory(prefix="edge-smw-head-") as scratch:
        path = Path(scratch) / "features.onnx"
        onnx.save_model(with_pooled_output(model), str(path))
        session = load_session(path, SessionSettings())
    report = SkipReport()
    feats, levels = [], []
    bar = tqdm(total=len(items), desc="int8 features (train split)", unit="crop",
               disable=not progress, leave=False)
    for seen, kept, stacked in iter_crop_batches(items, contract, detect=detect, report=report,
                                                 batch_size=batch_size):
        bar.update(seen)
        if stacked is None:
            continue
        chunk_levels = [item.level for item in kept]
        views = [stacked, stacked[:, :, ::-1]] if flip else [stacked]
        for view in views:
            out = session.run([POOLED], {INPUT_NAME: contract.normalize(view)})[0]
            feats.append(out.astype(np.float32))
            levels.extend(chunk_levels)
    bar.close()
    if not feats:
        raise DataError(f"no usable training crops for the int8-aware head ({report.summary()})")
    return np.concatenate(feats), np.asarray(levels, dtype=np.int64)


def head_config(checkpoint: Checkpoint) -> tuple[HeadConfig, int, bool]:
    """The checkpoint's own head recipe: (config, seed, flip)."""
    cfg = checkpoint.config
    try:
        config = HeadConfig(lr=float(cfg["lr"]), momentum=float(cfg["momentum"]),
                            loss=str(cfg.get("loss", "ce")), epochs=int(cfg.get("epochs", 40)),
                            batch_size=int(cfg.get("batch_size", 64)),
                            class_weight=str(cfg.get("class_weight", "none")))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"checkpoint {checkpoint.path} has no usable head recipe in its config "
                         f"({exc}); retrain it with `edge-smw train`") from None
    return config, int(cfg.get("seed", 0)), bool(cfg.get("flip", False))


def retrain_head(model: onnx.ModelProto, checkpoint: Checkpoint,
                 items: Sequence[LabelledImage], *, progress: bool = True
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(weight K x D, bias K, info) of a head trained on ``model``'s own features."""
    config, seed, flip = head_config(checkpoint)
    feats, levels = quantized_features(model, items, checkpoint.contract,
                                       detect=checkpoint.detect, flip=flip, progress=progress)
    layer = train_head(feats, levels, checkpoint.contract.num_levels, config, seed=seed)
    weight = layer.weight.detach().numpy().astype(np.float32)
    bias = layer.bias.detach().numpy().astype(np.float32)
    train_acc = float(((feats @ weight.T + bias).argmax(1) == levels).mean())
    info = {"train_crops": int(len(levels)), "flip": flip, "loss": config.loss,
            "lr": config.lr, "momentum": config.momentum, "epochs": config.epochs,
            "seed": seed, "train_accuracy": train_acc}
    return weight, bias, info


def set_head(model: onnx.ModelProto, weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """A copy of ``model`` whose linear head has the given weight (K x D) and bias (K)."""
    model = copy.deepcopy(model)
    head = _head_node(model)
    trans_b = next((a.i for a in head.attribute if a.name == "transB"), 0)
    init = {i.name: i for i in model.graph.initializer}
    if head.input[1] not in init or len(head.input) < 3 or head.input[2] not in init:
        raise ModelError("the linear head's weights are not constants: cannot replace them")
    old = numpy_helper.to_array(init[head.input[1]])
    new_weight = weight if trans_b else weight.T
    if old.shape != new_weight.shape:
        raise ModelError(f"new head weight {new_weight.shape} does not fit {old.shape}")
    init[head.input[1]].CopyFrom(numpy_helper.from_array(new_weight.astype(np.float32),
                                                         head.input[1]))
    init[head.input[2]].CopyFrom(numpy_helper.from_array(bias.astype(np.float32).reshape(
        numpy_helper.to_array(init[head.input[2]]).shape), head.input[2]))
    return model
