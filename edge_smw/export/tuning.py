"""Quantization-aware tuning: the int8 model's Conv weights and biases trained to the float
model's logits, on unlabelled face crops, through the int8 model's own rounding.

Why: after learned rounding and bias correction the remaining flips come from the quantized
activations, spread over every layer (benchmarks/RESULTS.md): no single tensor can be put back
in float to remove them, and no layer-by-layer method sees them. Training the whole int8
network end to end, with the fp32 model as teacher, lets each layer's weights absorb the
rounding of the activations before it.

How: the QDQ graph the quantizer wrote is run in torch as the ONNX operators define it
(``QdqGraph``): every ``QuantizeLinear`` rounds half to even and saturates at its scale and
zero point, with a straight-through gradient; the activation scales stay the calibrated ones,
or (``learn_ranges``, ``--tune-ranges``) are learned too, as LSQ learns its step sizes: the
quantizer then rebuilds the graph with them (``TensorQuantOverrides``).
Each int8 Conv's weights are float parameters rounded onto the quantizer's own grid (per-row
scale and integer limit, read from the graph; each row's largest weight is held, so the
quantizer recomputes the same scale: the same contract as learned rounding), and its bias a
float parameter. The loss is the mean squared difference of logits against the float model's,
with Adam and a learning rate that decays to zero over the passes. The result is float weights
on the grid and float biases for the float source model: the quantizer rebuilds the plain QDQ
graph from them (``Tuning.apply``), so the exported graph is the ordinary one and mixed
precision can still put blocks back in float.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from edge_smw.contract import PreprocessContract
from edge_smw.export.crops import CropSet
from edge_smw.export.quantize import ConvTensors, edit_convs, probe_session, tensor_batches
from edge_smw.export.rounding import (
    WeightGrid,
    constant_arrays,
    held_weights,
    node_attributes,
    weight_grids,
)
from edge_smw.export.sensitivity import node_units
from edge_smw.metadata import INPUT_NAME, OUTPUT_LOGITS

# Adam's step on float weights: 3e-5 diverged on the default model (46 -> 86 validation flips,
# qat prototype), 1e-5 helped (46 -> 27); the decay to zero keeps the last passes from undoing
# the first.
LEARNING_RATE = 1e-5
# Adam's step on each learned activation scale's logarithm (--tune-ranges): a scale moves by
# at most about this fraction per batch, tens of percent over a run.
SCALE_LEARNING_RATE = 1e-3
BATCH_SIZE = 16


class Unsupported(Exception):
    """The graph has an operator the torch interpreter does not run: tuning is skipped."""


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round half to even (as ``QuantizeLinear`` does), gradient passed straight through."""
    return x + (torch.round(x) - x).detach()


def _axis_shape(scale: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    if scale.dim() == 0 or scale.numel() == 1:
        return scale.reshape(())
    shape = [1] * x.dim()
    shape[axis % x.dim()] = -1
    return scale.reshape(shape)


_INT_RANGES = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127),
               np.dtype(np.uint16): (0, 65535), np.dtype(np.int16): (-32768, 32767),
               np.dtype(np.int32): (-2**31, 2**31 - 1)}


class TunedConv:
    """One Conv whose weights (and bias, where it has one) are trained."""

    def __init__(self, node: str, grid: WeightGrid, weight: torch.Tensor,
                 bias: torch.Tensor | None) -> None:
        self.node = node
        self.grid = grid
        self.weight = torch.nn.Parameter(weight)  # float, shaped as the Conv's weight
        self.bias = None if bias is None else torch.nn.Parameter(bias)
        shape = (-1,) + (1,) * (weight.dim() - 1)
        self.scale = torch.as_tensor(grid.scale, dtype=torch.float32).reshape(shape)
        self.limit = torch.as_tensor(grid.limit, dtype=torch.float32).reshape(shape)
        self.learn = torch.as_tensor(grid.learnable)  # rows that are trained
        # held weights set each row's scale; rows the quantizer floored stay as they are
        self.frozen = held_weights(weight) | ~self.learn.reshape(shape)

    def quantized_weight(self) -> torch.Tensor:
        """The weight on the grid: rounded (straight through) and saturated at each row's
        integer limit; held weights and frozen rows exactly as they were."""
        q = torch.clamp(_ste_round(self.weight / self.scale), -self.limit, self.limit)
        return torch.where(self.frozen, self.weight.detach(), q * self.scale)


class QdqGraph(torch.nn.Module):
    """An ONNX graph (QDQ or float) run in torch, op by op, by the operators' definitions:
    what onnxruntime's plain Q/DQ kernels compute; its fused integer kernels agree up to the
    few activations that sit on a rounding tie (tests/test_quant.py measures both)."""

    def __init__(self, model: onnx.ModelProto, grids: dict[str, WeightGrid] | None = None,
                 *, learn_scales: bool = False, drop: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        # QDrop: in training, each activation element skips its quantizer with this
        # probability (the network learns to work with and without each rounding)
        self.drop = drop
        self.generator = torch.Generator().manual_seed(seed)
        self.scale_logs: dict[str, torch.nn.Parameter] = {}
        self.nodes = list(model.graph.node)
        unknown = sorted({n.op_type for n in self.nodes} - set(_OPS))
        if unknown:
            raise Unsupported(f"operator(s) {', '.join(unknown)} not run by the tuning "
                              "interpreter")
        self.producers = {out: n for n in self.nodes for out in n.output}
        self.arrays = constant_arrays(model)
        self.consts = {name: torch.from_numpy(np.array(a, dtype=np.float32))
                       for name, a in self.arrays.items()}
        self.tuned: dict[str, TunedConv] = {}
        params = torch.nn.ParameterList()
        for node in self.nodes:
            grid = (grids or {}).get(node.name)
            if node.op_type != "Conv" or grid is None:
                continue
            conv = self._tuned_conv(node, grid)
            self.tuned[node.name] = conv
            params.append(conv.weight)
            if conv.bias is not None:
                params.append(conv.bias)
        self.params = params
        self.schedule = self._schedule([o.name for o in model.graph.output])
        # where each tensor is read last: forward lets it go there
        self.last_use = {name: k for k, node in enumerate(self.schedule)
                         for name in self._reads(node)}
        # learned activation scales: a factor exp(p) on each per-tensor scale an activation's
        # QuantizeLinear (and its DequantizeLinear) reads; the input's exact grid stays
        if learn_scales:
            fixed = {n.input[1] for n in self.schedule
                     if n.op_type == "QuantizeLinear" and n.input[0] == INPUT_NAME}
            for node in self.activation_quantizers():
                if node.input[1] not in fixed and self.arrays[node.input[1]].size == 1:
                    self.scale_logs.setdefault(node.input[1],
                                               torch.nn.Parameter(torch.zeros(())))
        self.scale_params = torch.nn.ParameterList(self.scale_logs.values())

    def activation_quantizers(self) -> list[onnx.NodeProto]:
        """The QuantizeLinear nodes forward runs whose scale is a constant: the activations'
        and the constant border values a centred model's Pads read (their scale is learned as
        an activation's is); tuned Convs' weights are not run through theirs. QDrop drops
        only the activations among them (``_quantize``)."""
        return [n for n in self.schedule
                if n.op_type == "QuantizeLinear" and n.input[1] in self.arrays]

    def activation_overrides(self) -> dict[str, list[dict[str, Any]]]:
        """onnxruntime ``TensorQuantOverrides`` for every activation whose scale was learned:
        the learned scale, the calibrated zero point (the quantizer rebuilds the graph with
        them, as the interpreter ran it)."""
        overrides = {}
        for node in self.activation_quantizers():
            if node.input[1] not in self.scale_logs:
                continue
            scale = self._value(node.input[1], {}).detach().numpy().astype(np.float32)
            overrides[node.input[0]] = [{"scale": scale.reshape(()),
                                         "zero_point": self.zero_point(node).reshape(())}]
        return overrides

    def _reads(self, node: onnx.NodeProto) -> list[str]:
        """The tensors a node reads when forward runs it: a tuned Conv reads only its input
        (its weight and bias are parameters)."""
        return [node.input[0]] if node.name in self.tuned else [i for i in node.input if i]

    def _schedule(self, outputs: Sequence[str]) -> list[onnx.NodeProto]:
        """The nodes forward runs, in order: all but those that only make tuned Convs'
        weights and biases (their Q/DQ nodes), and Constants (already in ``consts``)."""
        readers: dict[str, int] = dict.fromkeys(outputs, 1)
        for node in self.nodes:
            for name in self._reads(node):
                readers[name] = readers.get(name, 0) + 1
        dead = set()
        for node in reversed(self.nodes):
            if node.op_type == "Constant" or not any(readers.get(o, 0) for o in node.output):
                dead.add(id(node))
                for name in self._reads(node):
                    readers[name] -= 1
        return [n for n in self.nodes if id(n) not in dead]

    def _value(self, name: str, env: dict[str, torch.Tensor]) -> torch.Tensor:
        if name in env:
            return env[name]
        if name in self.scale_logs:
            return self.consts[name] * torch.exp(self.scale_logs[name])
        return self.consts[name]

    def _tuned_conv(self, node: onnx.NodeProto, grid: WeightGrid) -> TunedConv:
        weight = self._constant_value(node.input[1])
        bias = None
        if len(node.input) > 2 and node.input[2]:
            bias = self._constant_value(node.input[2])
        return TunedConv(node.name, grid, weight, bias)

    def _constant_value(self, name: str) -> torch.Tensor:
        """A tensor computed from initializers only (a weight behind its Q/DQ nodes)."""
        wanted = []
        stack = [name]
        while stack:
            tensor = stack.pop()
            node = self.producers.get(tensor)
            if node is None or node.op_type == "Constant":
                continue
            wanted.append(node)
            stack.extend(i for i in node.input if i)
        env: dict[str, torch.Tensor] = {}
        order = {id(n): k for k, n in enumerate(self.nodes)}
        for node in sorted(wanted, key=lambda n: order[id(n)]):
            self._run(node, env, tuned=False)
        return (env[name] if name in env else self.consts[name]).detach().clone()

    def forward(self, x: torch.Tensor, outputs: Sequence[str]) -> list[torch.Tensor]:
        """The named tensors (graph outputs or any tensor a node reads) for input ``x``."""
        env: dict[str, torch.Tensor] = {INPUT_NAME: x}
        keep = set(outputs)
        for k, node in enumerate(self.schedule):
            self._run(node, env, tuned=True)
            for name in self._reads(node):  # a tensor no later node reads is let go
                if self.last_use.get(name) == k and name not in keep:
                    env.pop(name, None)
        return [env[name] for name in outputs]

    def _run(self, node: onnx.NodeProto, env: dict[str, torch.Tensor], *, tuned: bool
             ) -> None:
        if node.op_type == "Constant":
            return
        conv = self.tuned.get(node.name) if tuned else None
        if conv is not None:
            inputs = [self._value(node.input[0], env), conv.quantized_weight(),
                      conv.bias if conv.bias is not None else None]
        else:
            inputs = [self._value(i, env) if i else None for i in node.input]
        result = _OPS[node.op_type](self, node, inputs)
        results = result if isinstance(result, tuple) else (result,)
        for name, value in zip(node.output, results, strict=False):
            env[name] = value

    def zero_point(self, node: onnx.NodeProto) -> np.ndarray:
        """A Q/DQ node's constant zero point (uint8 0 without one, as ONNX defines)."""
        if len(node.input) > 2 and node.input[2] in self.arrays:
            return np.asarray(self.arrays[node.input[2]])
        return np.array(0, np.uint8)

    def zero_point_range(self, node: onnx.NodeProto) -> tuple[int, int]:
        """The integer range of a Q/DQ node, from its zero point's type."""
        dtype = self.zero_point(node).dtype
        if dtype not in _INT_RANGES:
            raise Unsupported(f"{node.op_type} {node.name!r} of type {dtype}")
        return _INT_RANGES[dtype]


# -- operators (the ones EfficientNet/MobileNet-style QDQ graphs use) ---------------------------
Op = Callable[[QdqGraph, onnx.NodeProto, list], Any]


def _quantize(graph: QdqGraph, node: onnx.NodeProto, inputs: list) -> torch.Tensor:
    x, scale = inputs[0], inputs[1]
    axis = int(node_attributes(node).get("axis", 1))
    zero = inputs[2] if len(inputs) > 2 and inputs[2] is not None else torch.tensor(0.0)
    low, high = graph.zero_point_range(node)
    # rounded before the zero point is added, as onnxruntime does (ties go to even: adding
    # an odd zero point first would move them)
    steps, zero = x / _axis_shape(scale, x, axis), _axis_shape(zero, x, axis)
    q = torch.clamp(_ste_round(steps) + zero, low, high)
    if graph.training and graph.drop and node.input[0] != INPUT_NAME \
            and node.input[0] not in graph.arrays:  # an activation, not a weight
        # dropped: not rounded but still saturated (the graph's ReLUs may live only in a
        # quantizer's range: onnxruntime's quantizer folds them there)
        dropped = torch.rand(x.shape, generator=graph.generator) < graph.drop
        q = torch.where(dropped, torch.clamp(steps + zero, low, high), q)
    return q


def _dequantize(graph: QdqGraph, node: onnx.NodeProto, inputs: list) -> torch.Tensor:
    q, scale = inputs[0], inputs[1]
    axis = int(node_attributes(node).get("axis", 1))
    zero = inputs[2] if len(inputs) > 2 and inputs[2] is not None else torch.tensor(0.0)
    return (q - _axis_shape(zero, q, axis)) * _axis_shape(scale, q, axis)


def _conv(graph: QdqGraph, node: onnx.NodeProto, inputs: list) -> torch.Tensor:
    attrs = node_attributes(node)
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise Unsupported(f"Conv {node.name!r} with auto_pad")
    x, weight = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    pads = list(attrs.get("pads", [0] * 2 * (weight.dim() - 2)))
    half = len(pads) // 2
    if pads[:half] != pads[half:]:
        x = F.pad(x, [p for k in reversed(range(half)) for p in (pads[k], pads[k + half])])
        padding: Any = 0
    else:
        padding = tuple(pads[:half])
    return F.conv2d(x, weight, bias, stride=tuple(attrs.get("strides", [1, 1])),
                    padding=padding, dilation=tuple(attrs.get("dilations", [1, 1])),
                    groups=int(attrs.get("group", 1)))


def _end_padding(size: int, kernel: int, stride: int, begin: int, end: int, ceil: bool) -> int:
    """End padding that makes a floor-mode torch pool give onnxruntime's window count: with
    ``ceil_mode`` a last partial window is kept unless it would start in the end padding."""
    span = size + begin + end - kernel
    count = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (count - 1) * stride >= size + begin:
        count -= 1
    return end + max(0, (count - 1) * stride + kernel - (size + begin + end))


def _pool(graph: QdqGraph, node: onnx.NodeProto, inputs: list) -> torch.Tensor:
    """AveragePool / MaxPool over the two spatial axes (pads and ceil_mode as onnxruntime)."""
    attrs = node_attributes(node)
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or len(
            attrs["kernel_shape"]) != 2 or any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise Unsupported(f"{node.op_type} {node.name!r} with auto_pad, dilations or not 2-d")
    x = inputs[0]
    kernel, strides = tuple(attrs["kernel_shape"]), tuple(attrs.get("strides", [1, 1]))
    top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
    ceil = bool(attrs.get("ceil_mode", 0))
    bottom_all = _end_padding(x.shape[2], kernel[0], strides[0], top, bottom, ceil)
    right_all = _end_padding(x.shape[3], kernel[1], strides[1], left, right, ceil)
    pad = [left, right_all, top, bottom_all]
    if node.op_type == "MaxPool":
        return F.max_pool2d(F.pad(x, pad, value=-math.inf), kernel, strides)
    if attrs.get("count_include_pad", 0):  # the pads count, a ceil_mode overhang would not
        if (bottom_all, right_all) != (bottom, right):
            raise Unsupported(f"AveragePool {node.name!r} with ceil_mode and count_include_pad")
        return F.avg_pool2d(F.pad(x, pad), kernel, strides)
    ones = F.pad(torch.ones_like(x[:1, :1]), pad)
    return (F.avg_pool2d(F.pad(x, pad), kernel, strides, divisor_override=1)
            / F.avg_pool2d(ones, kernel, strides, divisor_override=1))


def _clip(graph: QdqGraph, node: onnx.NodeProto, inputs: list) -> torch.Tensor:
    low = inputs[1] if len(inputs) > 1 and inputs[1] is not None else None
    high = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    attrs = node_attributes(node)  # opset < 11 keeps them as attributes
    low = low if low is not None else attrs.get("min")
    high = high if high is not None else attrs.get("max")
    return torch.clamp(inputs[0], None if low is None else float(low),
                       None if high is None else float(high))


def _gemm(graph: QdqGraph, node: onnx.NodeProto, inputs: list) -> torch.Tensor:
    attrs = node_attributes(node)
    a = inputs[0].transpose(-1, -2) if attrs.get("transA", 0) else inputs[0]
    b = inputs[1].transpose(-1, -2) if attrs.get("transB", 0) else inputs[1]
    out = attrs.get("alpha", 1.0) * (a @ b)
    if len(inputs) > 2 and inputs[2] is not None:
        out = out + attrs.get("beta", 1.0) * inputs[2]
    return out


def _axes(node: onnx.NodeProto, inputs: list, position: int) -> list[int] | None:
    attrs = node_attributes(node)
    if "axes" in attrs:
        return list(attrs["axes"])
    if len(inputs) > position and inputs[position] is not None:
        return [int(a) for a in inputs[position].tolist()]
    return None


def _reduce_mean(graph: QdqGraph, node: onnx.NodeProto, inputs: list) -> torch.Tensor:
    axes = _axes(node, inputs, 1)
    keep = bool(node_attributes(node).get("keepdims", 1))
    x = inputs[0]
    return x.mean(dim=tuple(axes) if axes else tuple(range(x.dim())), keepdim=keep)


def _reshape(graph: QdqGraph, node: onnx.NodeProto, inputs: list) -> torch.Tensor:
    x = inputs[0]
    shape = [int(s) for s in inputs[1].tolist()]
    shape = [x.shape[k] if s == 0 else s for k, s in enumerate(shape)]
    return x.reshape(shape)


def _squeeze(graph: QdqGraph, node: onnx.NodeProto, inputs: list) -> torch.Tensor:
    axes = _axes(node, inputs, 1)
    x = inputs[0]
    if axes is None:
        return x.squeeze()
    for axis in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(axis)
    return x


def _unsqueeze(graph: QdqGraph, node: onnx.NodeProto, inputs: list) -> torch.Tensor:
    x = inputs[0]
    axes = _axes(node, inputs, 1) or []
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return x


def _pad(graph: QdqGraph, node: onnx.NodeProto, inputs: list) -> torch.Tensor:
    x = inputs[0]
    attrs = node_attributes(node)
    pads = ([int(p) for p in inputs[1].tolist()] if len(inputs) > 1 and inputs[1] is not None
            else list(attrs.get("pads", [])))
    axes = _axes(node, inputs, 3) if len(inputs) > 3 else None
    axes = [a % x.dim() for a in axes] if axes else list(range(x.dim()))
    half = len(pads) // 2
    begin, end = dict(zip(axes, pads[:half], strict=True)), dict(zip(axes, pads[half:],
                                                                      strict=True))
    widths = [w for axis in reversed(range(x.dim())) for w in (begin.get(axis, 0),
                                                               end.get(axis, 0))]
    while len(widths) > 2 and widths[-2:] == [0, 0]:  # unpadded leading axes
        widths = widths[:-2]
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "constant":
        value = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
        if not isinstance(value, torch.Tensor) or not value.requires_grad:
            return F.pad(x, widths, value=0.0 if value is None else float(value))
        # a learned value (a centred zero through a tuned scale): F.pad takes only a number,
        # so the border is selected with a mask and keeps its gradient
        border = F.pad(torch.zeros_like(x, dtype=torch.bool), widths, value=True)
        return torch.where(border, value.reshape(()).to(x.dtype), F.pad(x, widths))
    if mode not in ("reflect", "edge"):
        raise Unsupported(f"Pad {node.name!r} in mode {mode}")
    return F.pad(x, widths, mode="reflect" if mode == "reflect" else "replicate")


_OPS: dict[str, Op] = {
    "Pad": _pad,
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _dequantize,
    "Conv": _conv,
    "Clip": _clip,
    "Relu": lambda g, n, i: F.relu(i[0]),
    "Sigmoid": lambda g, n, i: torch.sigmoid(i[0]),
    "HardSigmoid": lambda g, n, i: torch.clamp(
        node_attributes(n).get("alpha", 0.2) * i[0] + node_attributes(n).get("beta", 0.5),
        0, 1),
    "Add": lambda g, n, i: i[0] + i[1],
    "Sub": lambda g, n, i: i[0] - i[1],
    "Mul": lambda g, n, i: i[0] * i[1],
    "Div": lambda g, n, i: i[0] / i[1],
    "AveragePool": _pool,
    "MaxPool": _pool,
    "GlobalAveragePool": lambda g, n, i: i[0].mean(dim=tuple(range(2, i[0].dim())),
                                                   keepdim=True),
    "ReduceMean": _reduce_mean,
    "Flatten": lambda g, n, i: i[0].reshape(
        int(np.prod(i[0].shape[:node_attributes(n).get("axis", 1)])), -1),
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Gemm": _gemm,
    "MatMul": lambda g, n, i: i[0] @ i[1],
    "Softmax": lambda g, n, i: torch.softmax(i[0], dim=node_attributes(n).get("axis", -1)),
    "Identity": lambda g, n, i: i[0],
    "Transpose": lambda g, n, i: i[0].permute(*node_attributes(n).get(
        "perm", list(reversed(range(i[0].dim()))))),
    "Concat": lambda g, n, i: torch.cat([t for t in i if t is not None],
                                        dim=node_attributes(n)["axis"]),
    "Constant": lambda g, n, i: None,
}


# -- the tuning ----------------------------------------------------------------------------------
@dataclass
class Tuning:
    """Tuned float weights (on the int8 grid) and biases per Conv, and how the loss went."""

    weights: dict[str, np.ndarray]
    biases: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]  # node -> rows that were trained (bool)
    losses: list[float]  # mean logit MSE before the first pass, then over each pass
    crops: int
    epochs: int
    learning_rate: float
    # learned activation scales (--tune-ranges), as onnxruntime TensorQuantOverrides
    overrides: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    scale_factors: list[float] = field(default_factory=list)  # learned / calibrated
    drop: float = 0.0  # QDrop probability (--tune-drop)
    block_outputs: int = 0  # unit outputs matched to the float model (--tune-blocks)
    block_weight: float = 0.0

    def describe(self) -> dict[str, Any]:
        described = {"convs": len(self.weights), "crops": self.crops, "epochs": self.epochs,
                     "learning_rate": self.learning_rate,
                     "logit_mse_per_pass": [round(v, 6) for v in self.losses]}
        if self.drop:
            described["qdrop_probability"] = self.drop
        if self.block_outputs:
            described["block_outputs"] = {"matched": self.block_outputs,
                                          "weight": self.block_weight}
        if self.scale_factors:
            factors = np.array(self.scale_factors)
            described["activation_scales"] = {
                "learned": len(factors), "learning_rate": SCALE_LEARNING_RATE,
                "factor_min": round(float(factors.min()), 4),
                "factor_median": round(float(np.median(factors)), 4),
                "factor_max": round(float(factors.max()), 4)}
        return described

    def apply(self, model: onnx.ModelProto, skip: Sequence[str] = ()) -> onnx.ModelProto:
        """A copy of the float ``model`` with the tuned weights and biases (rows that were
        not trained keep the model's own; ``skip``: Convs mixed precision keeps float keep
        theirs, measured better than keeping the tuned ones: benchmarks/RESULTS.md)."""
        def put(conv: ConvTensors) -> None:
            name = conv.node.name
            rows = self.rows[name].reshape((-1,) + (1,) * (self.weights[name].ndim - 1))
            conv.set_weight(np.where(rows, self.weights[name], conv.weight()))
            if name in self.biases:
                conv.set_bias(self.biases[name])

        return edit_convs(model, self.weights, put, skip)


def unit_outputs(model: onnx.ModelProto) -> list[str]:
    """The tensors each unit (stem, block, head: ``node_units``) hands to the next: what
    block-wise reconstruction (BRECQ) matches between the int8 and the float model."""
    unit_of = {name: unit for unit, names in node_units(model).items() for name in names}
    made_in = {out: unit_of[n.name] for n in model.graph.node if n.name in unit_of
               for out in n.output}
    outputs = [tensor for node in model.graph.node for tensor in node.input
               if tensor in made_in and unit_of.get(node.name) != made_in[tensor]]
    return list(dict.fromkeys(outputs))


def tune(fp32: onnx.ModelProto, qdq: onnx.ModelProto, crops: CropSet,
         contract: PreprocessContract, *, epochs: int, batch_size: int = BATCH_SIZE,
         learning_rate: float = LEARNING_RATE, learn_ranges: bool = False, seed: int = 0,
         drop: float = 0.0, source: onnx.ModelProto | None = None, block_weight: float = 0.0,
         progress: bool = True) -> Tuning:
    """Train ``qdq``'s int8 Convs to ``fp32``'s logits on ``crops`` (no labels needed);
    ``learn_ranges``: each activation's quantization scale too (as LSQ does: the gradient of
    the rounding with respect to its step, straight through), kept in the rebuilt graph.
    ``drop``: QDrop's probability of an activation element skipping its quantizer in
    training. ``block_weight``: also match each unit's output to ``source`` (the float model
    ``qdq`` was quantized from, which names its tensors alike), each as a squared error
    relative to the float tensor's mean square, the sum weighted so that it starts at
    ``block_weight`` times the logits' error: more targets per crop than the logits alone."""
    from tqdm.auto import tqdm

    teacher = np.concatenate([v[OUTPUT_LOGITS] for v in tensor_batches(
        fp32, [OUTPUT_LOGITS], crops, contract, limit=len(crops), batch_size=64)])
    target = torch.from_numpy(teacher.astype(np.float32))

    graph = QdqGraph(qdq, weight_grids(qdq), learn_scales=learn_ranges, drop=drop, seed=seed)
    params = list(graph.params)
    if not params:
        raise Unsupported("no int8 Conv with per-channel weights to tune")
    blocks: list[str] = []
    if block_weight:
        if source is None:
            raise ValueError("block_weight needs the float source model")
        known = {o for n in graph.schedule for o in n.output}
        blocks = [t for t in unit_outputs(source) if t in known]
        if not blocks:
            raise Unsupported("no unit output shared by the int8 and float models")
    groups = [{"params": params, "lr": learning_rate}]
    if graph.scale_logs:
        groups.append({"params": list(graph.scale_logs.values()), "lr": SCALE_LEARNING_RATE})
    optimizer = torch.optim.Adam(groups)
    steps = epochs * math.ceil(len(crops) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1 - k / steps)
    generator = torch.Generator().manual_seed(seed)

    with contextlib.ExitStack() as stack:
        # the float block outputs are recomputed per batch, not kept: on the default model
        # they are 1.0M floats per crop, 2 GiB for 512 crops
        floats = stack.enter_context(probe_session(source, blocks)) if blocks else None

        def errors(inputs: np.ndarray, rows: torch.Tensor | slice
                   ) -> tuple[torch.Tensor, torch.Tensor]:
            """Squared logit error summed over a batch, and the units' relative errors summed
            over units (inputs normalised per batch: the crops stay uint8 pixels, a quarter
            of the memory of float inputs)."""
            outs = graph(torch.from_numpy(inputs), [OUTPUT_LOGITS, *blocks])
            logits = F.mse_loss(outs[0], target[rows], reduction="sum")
            relative = torch.zeros(())
            if floats is not None:
                for got, want in zip(outs[1:], floats.run(blocks, {INPUT_NAME: inputs}),
                                     strict=True):
                    want_t = torch.from_numpy(want)
                    relative = relative + F.mse_loss(got, want_t) / want_t.pow(2).mean()
            return logits, relative

        graph.eval()  # no QDrop while measuring
        with torch.no_grad():
            before, before_blocks = 0.0, 0.0
            for k in range(0, len(crops), 64):
                logits, relative = errors(crops.inputs(contract, k, k + 64), slice(k, k + 64))
                before += float(logits)
                before_blocks += float(relative) * min(64, len(crops) - k)
        graph.train()
        losses = [before / target.numel()]
        balance = (block_weight * losses[0] / (before_blocks / len(crops))
                   if blocks and before_blocks else 0.0)
        bar = tqdm(total=steps, desc="quantization-aware tuning", unit="batch",
                   disable=not progress, leave=False)
        for _ in range(epochs):
            order = torch.randperm(len(crops), generator=generator)
            total = 0.0
            for k in range(0, len(order), batch_size):
                batch = order[k:k + batch_size]
                logits, relative = errors(contract.normalize(crops.pixels[batch.numpy()]),
                                          batch)
                optimizer.zero_grad()
                (logits / target[batch].numel() + balance * relative).backward()
                optimizer.step()
                schedule.step()
                total += float(logits.detach())
                bar.update(1)
            # the pass's own batches (no second forward pass over every crop to record it)
            losses.append(total / target.numel())
        bar.close()
    weights, biases, rows = {}, {}, {}
    with torch.no_grad():
        for name, conv in graph.tuned.items():
            weights[name] = conv.quantized_weight().numpy().astype(np.float32)
            rows[name] = conv.learn.numpy()
            if conv.bias is not None:
                biases[name] = conv.bias.detach().numpy().astype(np.float32)
        factors = [float(torch.exp(p)) for p in graph.scale_logs.values()]
    return Tuning(weights, biases, rows, losses, len(crops), epochs, learning_rate,
                  graph.activation_overrides(), factors, drop, len(blocks), block_weight)
