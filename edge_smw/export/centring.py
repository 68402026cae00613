"""Centred activations: a ReLU output uses the whole symmetric 8-bit grid.

Why: the tensorrt flavour's activations are symmetric (zero point 0, what TensorRT takes). A
ReLU / ReLU6 output is never negative, so its quantizer uses codes 0..127 of -128..127: 7 bits
where the cpu flavour's uint8 with a zero point has 8 (benchmarks/RESULTS.md: the cpu flavour
with 8-bit weights reaches 99.3% test agreement, the tensorrt flavour plateaus near 98.5%).

How: each such tensor ``y`` becomes ``y' = y - c``, ``c`` the middle of its calibrated range,
so that it is symmetric about zero. The Conv before the activation loses ``c`` from its bias
and the activation's bounds move by ``-c`` (``clip(x, a, b) - c = clip(x - c, a - c, b - c)``;
a Relu becomes a Clip at ``-c``); every Conv reading ``y`` gains ``c * sum(W)`` per output
channel in its bias, and one with zero padding reads an explicit ``Pad`` of value ``-c`` (the
zero border of ``y``) instead of padding itself. The float function is unchanged up to float
rounding. When the int8 model's weights are chosen later (learned rounding), the readers'
biases follow them (``Centring.follow_weights``): a reader then computes ``W_q (y' + c)``, so
its weight error is the uncentred one, ``(W_q - W) y``, not that plus ``(W_q - W) c`` on every
input (ReLU outputs are mostly 0, where ``y'`` is ``-c``). On the unpadded path no node is
added (TensorRT fuses Conv + Clip as before); a padded reader gains a constant ``Pad``, which
the quantizer puts between Q/DQ pairs.

Only where that is exact: a Relu, or a Clip whose lower bound is a constant >= 0, that is the
only reader of a Conv's output, and whose output only Convs (with constant weights, no
``auto_pad``) read.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edge_smw.export.padding import explicit_pad
from edge_smw.export.quantize import ConvTensors, edit_convs
from edge_smw.export.rounding import constant_arrays, node_attributes

SUFFIX = "__edge_smw_centred"


@dataclass(frozen=True)
class CentredTensor:
    """One activation output moved by ``-shift``; ``readers``: the Convs reading it,
    ``padded``: those given a Pad."""

    tensor: str
    shift: float
    readers: tuple[str, ...]
    padded: tuple[str, ...]


@dataclass(frozen=True)
class Centring:
    """What ``centre_activations`` moved: the tensors whose ranges change with it."""

    tensors: tuple[CentredTensor, ...]
    changed: tuple[str, ...]  # the Conv outputs, activation outputs and Pad outputs moved
    pads: tuple[str, ...]  # the Pad nodes added

    def describe(self) -> dict[str, Any]:
        shifts = [t.shift for t in self.tensors]
        return {"tensors": len(self.tensors),
                "padded_readers": sum(len(t.padded) for t in self.tensors),
                "shift_min": round(min(shifts), 4) if shifts else None,
                "shift_max": round(max(shifts), 4) if shifts else None}

    def follow_weights(self, model: onnx.ModelProto, source: onnx.ModelProto
                       ) -> onnx.ModelProto:
        """A copy of ``model`` (the centred ``source`` with some Conv weights replaced: learned
        rounding's, on the int8 grid) whose readers' biases absorb ``shift * sum(W)`` of the
        weights they now have instead of the source's, so the shift is exact for the weights
        the int8 model runs with. A Conv whose weights were not replaced is unchanged."""
        shifts = {reader: t.shift for t in self.tensors for reader in t.readers}
        before = {node.name: node.input[1] for node in source.graph.node if node.name in shifts}
        weights = {i.name: numpy_helper.to_array(i) for i in source.graph.initializer
                   if i.name in before.values()}

        def follow(conv: ConvTensors) -> None:
            old = weights[before[conv.node.name]].astype(np.float64)
            change = (conv.weight().astype(np.float64) - old).reshape(len(old), -1).sum(1)
            if np.any(change):
                conv.add_to_bias(shifts[conv.node.name] * change)

        return edit_convs(model, shifts, follow)


@dataclass(frozen=True)
class _Candidate:
    conv: onnx.NodeProto  # the Conv whose output the activation reads
    activation: onnx.NodeProto
    readers: tuple[onnx.NodeProto, ...]  # Convs
    low: float  # the activation's lower bound (>= 0)
    high: float | None  # its upper bound, None for none


def _bounds(node: onnx.NodeProto, constants: dict[str, np.ndarray]
            ) -> tuple[float | None, float | None] | None:
    """(low, high) of a Relu / Clip with constant bounds, None where they are not constant."""
    if node.op_type == "Relu":
        return 0.0, None
    attrs = node_attributes(node)
    bounds: list[float | None] = [attrs.get("min"), attrs.get("max")]
    for k in (1, 2):
        if len(node.input) > k and node.input[k]:
            if node.input[k] not in constants:
                return None
            bounds[k - 1] = float(np.asarray(constants[node.input[k]]).ravel()[0])
    return bounds[0], bounds[1]


def candidates(model: onnx.ModelProto) -> list[_Candidate]:
    """The activations ``centre_activations`` can move exactly, in graph order."""
    constants = constant_arrays(model)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    producers = {out: node for node in model.graph.node for out in node.output}
    outputs = {o.name for o in model.graph.output}
    found = []
    for node in model.graph.node:
        if node.op_type not in ("Relu", "Clip"):
            continue
        bounds = _bounds(node, constants)
        conv = producers.get(node.input[0])
        if (bounds is None or bounds[0] is None or bounds[0] < 0 or conv is None
                or conv.op_type != "Conv" or len(readers.get(conv.output[0], [])) != 1
                or conv.output[0] in outputs or node.output[0] in outputs):
            continue
        users = readers.get(node.output[0], [])
        if not users or any(
                u.op_type != "Conv" or u.input[0] != node.output[0]
                or u.input[1] not in constants or node.output[0] in u.input[1:]
                or node_attributes(u).get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
                for u in users):
            continue
        found.append(_Candidate(conv, node, tuple(users), bounds[0], bounds[1]))
    return found


def centre_activations(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]]
                       ) -> tuple[onnx.ModelProto, Centring]:
    """A copy of the float ``model`` with every candidate activation centred on the middle of
    its range (``ranges``: calibrated (low, high) per tensor; an activation without one, or
    with an empty range, is left as it is)."""
    out = copy.deepcopy(model)
    graph = out.graph
    init = {i.name: i for i in graph.initializer}
    constants = constant_arrays(out)
    moved: list[CentredTensor] = []
    movable = candidates(out)
    replaced = {name for found in movable
                for node in (found.conv, found.activation, *found.readers)
                for name in node.input[1:] if name}
    changed: list[str] = []
    pads: list[onnx.NodeProto] = []
    for found in movable:
        tensor = found.activation.output[0]
        if tensor not in ranges:
            continue
        top = float(ranges[tensor][1])
        if found.high is not None:
            top = min(top, found.high)
        if top <= found.low:
            continue
        shift = (found.low + top) / 2.0
        ConvTensors(out, found.conv, init).add_to_bias(
            np.full(_out_channels(found.conv, constants), -shift))
        _move_bounds(graph, found.activation, found.low - shift,
                     None if found.high is None else found.high - shift)
        padded = []
        for reader in found.readers:
            weight = constants[reader.input[1]].astype(np.float64)
            ConvTensors(out, reader, init).add_to_bias(
                shift * weight.reshape(weight.shape[0], -1).sum(1))
            pad = explicit_pad(graph, reader, tensor, f"{reader.name}{SUFFIX}_padded",
                               value=-shift)
            if pad is not None:
                reader.input[0] = pad.output[0]
                graph.node.insert(list(graph.node).index(reader), pad)
                pads.append(pad)
                padded.append(reader.name)
                changed.append(pad.output[0])
        moved.append(CentredTensor(tensor, shift, tuple(r.name for r in found.readers),
                                   tuple(padded)))
        changed += [found.conv.output[0], tensor]
    _drop_unread(graph, replaced)
    return out, Centring(tuple(moved), tuple(changed), tuple(p.name for p in pads))


def _drop_unread(graph: onnx.GraphProto, names: set[str]) -> None:
    """Remove the initializers in ``names`` that no node reads any more (the biases and Clip
    bounds given new ones), so that no runtime warns about them."""
    read = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name not in names or i.name in read]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _out_channels(conv: onnx.NodeProto, constants: dict[str, np.ndarray]) -> int:
    return int(constants[conv.input[1]].shape[0])


def _move_bounds(graph: onnx.GraphProto, activation: onnx.NodeProto, low: float,
                 high: float | None) -> None:
    """The activation becomes ``Clip(x, low, high)`` with bounds of its own."""
    names = [f"{activation.name}{SUFFIX}_min", f"{activation.name}{SUFFIX}_max"]
    graph.initializer.append(numpy_helper.from_array(np.array(low, np.float32), names[0]))
    inputs = [activation.input[0], names[0]]
    if high is not None:
        graph.initializer.append(numpy_helper.from_array(np.array(high, np.float32), names[1]))
        inputs.append(names[1])
    activation.op_type = "Clip"
    del activation.attribute[:]
    del activation.input[:]
    activation.input.extend(inputs)
