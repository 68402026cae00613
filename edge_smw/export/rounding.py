"""Learned weight rounding: each Conv's int8 weights chosen for its output, not one by one.

Why: measured on the fine-tuned smilesmiled model, rounding the weights to nearest (7-bit, per
channel) with float activations already flips 96 of 1,490 validation decisions, 89 of them
from the depthwise kernels (9 weights per channel: their rounding errors do not cancel).
Bias correction removes the mean of that error, not its spread.

How: layer by layer on calibration crops, no labels. For a Conv with weight rows ``w`` (one
per output channel) and input patches ``x`` (taken from the float model), the output error of
rounded weights ``q`` is ``(q - w)^T H (q - w)`` with ``H = E[x x^T]``. The columns are rounded
one after another and each rounding error is spread onto the columns not yet rounded through
``H``'s inverse Cholesky factor: the OBQ / GPTQ solution of the same layer-wise reconstruction
objective AdaRound optimises by gradient descent, in seconds instead of minutes per layer
(an AdaRound prototype took 915 s for 3 of 49 layers on 2 cores). Depthwise Convs get one
9x9 ``H`` per channel, other Convs one ``H`` shared by all rows.

The grid is the quantizer's own: each row's scale and integer range are read from the
round-to-nearest model the same recipe built, and each row keeps its largest-magnitude weight
unchanged, so the quantizer recomputes exactly that scale from the new weights and the new
weights are already on it (``check_on_grid``). The result is float weights; the QDQ graph is
the plain one the quantizer writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from edge_smw.contract import PreprocessContract
from edge_smw.export.crops import CropSet
from edge_smw.export.quantize import edit_convs, tensor_batches

DAMPING = 0.01  # of H's mean diagonal: keeps the inverse finite where inputs are correlated


@dataclass
class WeightGrid:
    """One Conv's int8 grid: per-row scale and the largest integer magnitude allowed."""

    scale: np.ndarray  # (out_channels,)
    limit: np.ndarray  # (out_channels,) int

    @property
    def learnable(self) -> np.ndarray:
        """Rows whose weights may be chosen (bool): rows whose scale the quantizer raised above
        largest-weight / limit (near-zero channels get a floor) have a smaller integer range,
        their largest weight does not set the scale, so they keep the quantizer's rounding."""
        return self.limit == self.limit.max()


def held_weights(rows: torch.Tensor) -> torch.Tensor:
    """Each row's largest-magnitude weight (bool, shaped as ``rows``): it sets the scale the
    quantizer recomputes and is on the grid already (``limit * scale``), so it stays exactly
    as it is whatever else is chosen."""
    flat = rows.reshape(len(rows), -1)
    held = torch.zeros_like(flat, dtype=torch.bool)
    held[torch.arange(len(flat)), flat.abs().argmax(dim=1)] = True
    return held.reshape(rows.shape)


@dataclass
class WeightRounding:
    """New float weights (on the int8 grid) per Conv node, with how much error they save."""

    weights: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]  # node -> which output channels were learned (bool)
    errors: dict[str, tuple[float, float]]  # node -> (nearest, learned) output error
    crops: int

    def describe(self) -> dict[str, Any]:
        ratios = [learned / nearest for nearest, learned in self.errors.values() if nearest > 0]
        worst = max(self.errors, key=lambda k: self.errors[k][0], default=None)
        return {"convs": len(self.weights), "crops": self.crops,
                "output_error_vs_nearest_median": float(np.median(ratios)) if ratios else None,
                "output_error_vs_nearest_max": float(np.max(ratios)) if ratios else None,
                "noisiest_conv": worst}

    def apply(self, model: onnx.ModelProto, skip: Sequence[str] = ()) -> onnx.ModelProto:
        """A copy of ``model`` with the learned weights (``skip``: Convs that stay float keep
        their own)."""
        return edit_convs(model, self.weights,
                          lambda conv: conv.set_weight(self.weights[conv.node.name]), skip)


def _int8_weights(node: onnx.NodeProto, init: dict[str, np.ndarray],
                  producers: dict[str, onnx.NodeProto]) -> tuple[np.ndarray, np.ndarray] | None:
    """A Conv's int8 weights and per-row scale in a QDQ model, stored (``DequantizeLinear`` of
    an int8 initializer: cpu flavour) or made when it runs (``DequantizeLinear`` of a
    ``QuantizeLinear`` of the float weights: tensorrt flavour); None: float, per-tensor or
    asymmetric weights."""
    dq = producers.get(node.input[1]) if node.op_type == "Conv" else None
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[1] not in init:
        return None
    if len(dq.input) > 2 and dq.input[2] in init and np.any(init[dq.input[2]] != 0):
        return None
    scale = init[dq.input[1]].astype(np.float64).reshape(-1)
    if dq.input[0] in init:
        q = init[dq.input[0]].astype(np.int64)
    else:
        quant = producers.get(dq.input[0])
        if quant is None or quant.op_type != "QuantizeLinear" or quant.input[0] not in init:
            return None
        weights = init[quant.input[0]].astype(np.float64)
        shape = (-1,) + (1,) * (weights.ndim - 1)
        q = np.clip(np.round(weights / scale.reshape(shape)), -128, 127).astype(np.int64)
    if scale.size != len(q):
        return None  # per-tensor weights: one row's change moves every row's scale
    return q, scale


def weight_grids(qdq: onnx.ModelProto) -> dict[str, WeightGrid]:
    """The grid of every int8 Conv of a QDQ model: its weights' scale and integer range."""
    init = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    producers = {out: node for node in qdq.graph.node for out in node.output}
    grids = {}
    for node in qdq.graph.node:
        found = _int8_weights(node, init, producers)
        if found is not None:
            q, scale = found
            grids[node.name] = WeightGrid(scale, np.abs(q.reshape(len(q), -1)).max(axis=1))
    return grids


def learn_rounding(model: onnx.ModelProto, grids: dict[str, WeightGrid], crops: CropSet,
                   contract: PreprocessContract, *, limit: int = 128,
                   batch_size: int = 8) -> WeightRounding:
    """Round every Conv in ``grids`` (dense or depthwise) for its output on ``crops``, its
    inputs taken from the float model.

    Aiming instead at the float output from the int8 model's inputs (``W E[x x'^T]
    E[x' x'^T]^-1``, to absorb the activations' error too) was measured and is not done: its
    targets are ill-conditioned and 248-512 of 1,490 decisions flipped, against 21 here.
    """
    convs = {n.name: n for n in model.graph.node
             if n.op_type == "Conv" and n.name in grids and _kind(model, n) is not None}
    if not convs:
        return WeightRounding({}, {}, {}, 0)
    hessians, n = _input_moments(model, convs, crops, contract, limit, batch_size)
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weights, rows, errors = {}, {}, {}
    for name, node in convs.items():
        w = init[node.input[1]]
        grid = grids[name]
        learn = grid.learnable
        new, nearest, learned = _round_conv(w.astype(np.float64), hessians[name], grid)
        new = np.where(learn.reshape((-1,) + (1,) * (w.ndim - 1)), new.reshape(w.shape), w)
        weights[name] = new.astype(np.float32)
        rows[name] = learn
        errors[name] = (nearest, learned)
    return WeightRounding(weights, rows, errors, n)


class GridWeights(Protocol):
    """Float weights chosen on the int8 grid, per Conv, and the rows that were chosen (learned
    rounding's, quantization-aware tuning's)."""

    weights: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]


def check_on_grid(rounding: GridWeights, qdq: onnx.ModelProto) -> list[str]:
    """Convs whose int8 weights in ``qdq`` (built from the chosen ones) are not exactly the
    chosen weights, in the rows that were chosen: [] when the quantizer kept every
    choice."""
    init = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    producers = {out: node for node in qdq.graph.node for out in node.output}
    off = []
    for node in qdq.graph.node:
        found = _int8_weights(node, init, producers) if node.name in rounding.weights else None
        if found is None:
            continue
        q, scale = found
        value = q * scale.reshape((-1,) + (1,) * (q.ndim - 1))
        learned = rounding.rows[node.name]
        if not np.allclose(value[learned], rounding.weights[node.name][learned], rtol=1e-5,
                           atol=1e-7):
            off.append(node.name)
    return off


# -- internals -----------------------------------------------------------------------------------
def node_attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes by name, as Python values."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def constant_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every constant tensor of the graph by name: its initializers and the outputs of its
    ``Constant`` nodes (initializers by another name)."""
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and "value" in node_attributes(node):
            values[node.output[0]] = numpy_helper.to_array(node_attributes(node)["value"])
    return values


def _kind(model: onnx.ModelProto, node: onnx.NodeProto) -> str | None:
    """"dense" (group 1), "depthwise" (one input channel per output channel), else None."""
    attrs = node_attributes(node)
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    group = int(attrs.get("group", 1))
    shape = next(i.dims for i in model.graph.initializer if i.name == node.input[1])
    if group == 1:
        return "dense"
    return "depthwise" if shape[1] == 1 and shape[0] == group else None


def _patches(x: torch.Tensor, node: onnx.NodeProto, kernel: Sequence[int]) -> torch.Tensor:
    """(batch, channels * kh * kw, positions): the inputs each output position sees."""
    attrs = node_attributes(node)
    if list(kernel) == [1, 1] and list(attrs.get("strides", [1, 1])) == [1, 1] \
            and not any(attrs.get("pads", [0])):
        return x.reshape(x.shape[0], x.shape[1], -1)  # 1x1: the input itself
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if any(pads):
        x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
    return F.unfold(x, tuple(kernel), dilation=tuple(attrs.get("dilations", [1, 1])),
                    stride=tuple(attrs.get("strides", [1, 1])))


def _input_moments(model: onnx.ModelProto, convs: dict[str, onnx.NodeProto], crops: CropSet,
                   contract: PreprocessContract, limit: int, batch_size: int
                   ) -> tuple[dict[str, torch.Tensor], int]:
    """H = E[x x^T] of every Conv's input patches (per channel for depthwise) on the float
    model, accumulated batch by batch (float32 products per batch, float64 sums)."""
    inputs = sorted({node.input[0] for node in convs.values()})
    kernels = {i.name: list(i.dims[2:]) for i in model.graph.initializer}
    kinds = {name: _kind(model, node) for name, node in convs.items()}
    sums: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {}
    n = min(limit, len(crops))
    for values in tensor_batches(model, inputs, crops, contract, limit=n, batch_size=batch_size):
        for name, node in convs.items():
            x = values[node.input[0]]
            cols = _patches(torch.from_numpy(x), node, kernels[node.input[1]])
            if kinds[name] == "depthwise":  # one group per channel
                cols = cols.reshape(cols.shape[0], x.shape[1], -1, cols.shape[-1])
            else:  # one group holding every input
                cols = cols[:, None]
            h = torch.einsum("bcil,bcjl->cij", cols, cols).double()
            sums[name] = sums[name] + h if name in sums else h
            count[name] = count.get(name, 0) + cols.shape[0] * cols.shape[-1]
    return {k: v / count[k] for k, v in sums.items()}, n


def _round_conv(w: np.ndarray, hessian: torch.Tensor, grid: WeightGrid
                ) -> tuple[np.ndarray, float, float]:
    """GPTQ over one Conv's rows; returns the rounded rows, and the output error of rounding
    to nearest and of the learned rounding (both ``sum (q - w)^T H (q - w)``)."""
    rows = torch.from_numpy(w.reshape(len(w), -1).copy())
    scale = torch.from_numpy(grid.scale)
    limit = torch.from_numpy(grid.limit.astype(np.float64))
    h = hessian.clone()
    diag = torch.diagonal(h, dim1=-2, dim2=-1)
    dead = diag == 0  # inputs that are always zero: no error to weigh
    diag += DAMPING * diag.mean(dim=-1, keepdim=True) + dead.double()
    factor = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)),
                                   upper=True)

    def nearest(values: torch.Tensor, row_scale: torch.Tensor, row_limit: torch.Tensor
                ) -> torch.Tensor:
        return torch.clamp(torch.round(values / row_scale), -row_limit, row_limit) * row_scale

    keep = held_weights(rows)
    work = rows.clone()
    for i in range(rows.shape[1]):
        column = work[:, i]
        q = torch.where(keep[:, i], rows[:, i], nearest(column, scale, limit))
        err = (column - q) / factor[:, i, i]
        work[:, i + 1:] -= err[:, None] * factor[:, i, i + 1:]
        work[:, i] = q

    def output_error(q: torch.Tensor) -> float:
        d = q - rows
        if len(hessian) == 1:
            return float(((d @ hessian[0]) * d).sum())
        return float(torch.einsum("ri,rij,rj->", d, hessian, d))

    plain = torch.where(keep, rows, nearest(rows, scale[:, None], limit[:, None]))
    learned, rounded = output_error(work), output_error(plain)
    if learned >= rounded:  # never worse than rounding to nearest on the calibration crops
        return plain.numpy(), rounded, rounded
    return work.numpy(), rounded, learned
