"""The stem's input channels padded to onnxruntime's int8 kernel width: an exact rewrite.

Why: onnxruntime's fastest int8 convolution on x86 (MLAS's symmetric "ConvSym" kernels, for
per-channel int8 weights with zero zero points, as the cpu flavour writes them) takes a Conv
only when its input channels are a multiple of 4. An RGB stem has 3, so it falls back to
im2col and a generic int8 GEMM, measured slower than the fp32 stem it replaces. One more
input channel of zeros, read by zero weights, changes no product (0 * x), and the stem takes
the fast kernel. OpenVINO runs the 3-channel stem a little faster than the padded one
(benchmarks/RESULTS.md), hence a setting, ``pad_stem``, and the Runtime's note for it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edge_smw.export.quantize import drop_value_info

# onnxruntime MLAS ConvSym on x86: KernelInputChannelAlignment
CHANNEL_MULTIPLE = 4
STEP = "stem channels padded for onnxruntime's int8 kernels"


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _readers(graph: onnx.GraphProto, tensor: str) -> list[onnx.NodeProto]:
    return [node for node in graph.node if tensor in node.input]


@dataclass(frozen=True)
class _Stem:
    """The first Conv of a QDQ graph and the nodes a padding changes."""

    conv: onnx.NodeProto
    weight: str  # its int8 weight initializer
    quantize: onnx.NodeProto  # the QuantizeLinear of its input
    input_dq: onnx.NodeProto  # the DequantizeLinear between them
    channels: int


def _stem(model: onnx.ModelProto) -> tuple[_Stem | None, str | None]:
    """The int8 stem's parts, or why there is none to pad."""
    graph = model.graph
    producers = _producers(graph)
    init = {i.name: i for i in graph.initializer}
    conv = next((n for n in graph.node if n.op_type == "Conv"), None)
    if conv is None:
        return None, "the model has no Conv"
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    weight_dq, input_dq = producers.get(conv.input[1]), producers.get(conv.input[0])
    if (weight_dq is None or weight_dq.op_type != "DequantizeLinear"
            or weight_dq.input[0] not in init):
        return None, "the first Conv's weights are float (a float island)"
    weight = numpy_helper.to_array(init[weight_dq.input[0]])
    if weight.dtype != np.int8 or weight.ndim != 4 or group != 1:
        return None, "the first Conv is not a plain Conv with int8 weights"
    if len(weight_dq.input) > 2 and weight_dq.input[2]:
        zero = init.get(weight_dq.input[2])
        if zero is None or np.any(numpy_helper.to_array(zero)):
            return None, "the first Conv's weights are not symmetric (zero points not 0)"
    channels = weight.shape[1]
    if channels % CHANNEL_MULTIPLE == 0:
        return None, f"the first Conv already reads {channels} channels"
    quantize = producers.get(input_dq.input[0]) if input_dq is not None else None
    if (input_dq is None or input_dq.op_type != "DequantizeLinear" or quantize is None
            or quantize.op_type != "QuantizeLinear"):
        return None, "the first Conv's input is not quantized in the graph"
    shared = [t for t, node in ((quantize.output[0], input_dq), (input_dq.output[0], conv),
                                (weight_dq.output[0], conv))
              if [r.name for r in _readers(graph, t)] != [node.name]]
    if shared or [r.name for r in _readers(graph, weight_dq.input[0])] != [weight_dq.name]:
        return None, "the stem's input or weights are read by other nodes too"
    return _Stem(conv, weight_dq.input[0], quantize, input_dq, channels), None


def why_not(model: onnx.ModelProto) -> str | None:
    """Why the stem cannot (or need not) be padded, or None when it can."""
    return _stem(model)[1]


def _scalar(init: dict[str, onnx.TensorProto], name: str) -> bool:
    return name in init and numpy_helper.to_array(init[name]).size == 1


def _input_pad(graph: onnx.GraphProto, quantize: onnx.NodeProto) -> onnx.NodeProto | None:
    """The exact input grid's zero-padding ``Pad`` (``input_grid``) in front of ``quantize``,
    when only a scalar shift lies between: widening it costs nothing more."""
    producers = _producers(graph)
    init = {i.name: i for i in graph.initializer}
    node = producers.get(quantize.input[0])
    if len(_readers(graph, quantize.input[0])) != 1:
        return None
    if node is not None and node.op_type == "Add" and _scalar(init, node.input[1]):
        node = producers.get(node.input[0])
    if (node is None or node.op_type != "Pad" or node.input[1] not in init
            or any(a.name == "mode" and a.s not in (b"", b"constant") for a in node.attribute)
            or (len(node.input) > 3 and node.input[3])
            or len(_readers(graph, node.output[0])) != 1):
        return None
    return node


def pad_stem_channels(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """A copy of a QDQ model whose stem reads its input padded with zero channels to a
    multiple of ``CHANNEL_MULTIPLE``, with zero weights for them: the same function.
    Raises ValueError (``why_not``) when there is no such stem."""
    if (reason := why_not(model)) is not None:
        raise ValueError(reason)
    out = copy.deepcopy(model)
    graph = out.graph
    stem, _ = _stem(out)
    assert stem is not None
    init = {i.name: i for i in graph.initializer}
    channels = stem.channels
    extra = -channels % CHANNEL_MULTIPLE
    weight = numpy_helper.to_array(init[stem.weight])
    zeros = np.zeros((weight.shape[0], extra, *weight.shape[2:]), weight.dtype)
    init[stem.weight].CopyFrom(numpy_helper.from_array(
        np.concatenate([weight, zeros], axis=1), stem.weight))
    quantize = stem.quantize
    pad = _input_pad(graph, quantize)
    if pad is not None:  # widen the grid's Pad: axis 1's end (NCHW begins, then ends)
        widths = numpy_helper.to_array(init[pad.input[1]]).copy()
        widths[len(widths) // 2 + 1] += extra
        init[pad.input[1]].CopyFrom(numpy_helper.from_array(widths, pad.input[1]))
    else:  # a Pad of its own on the float input, just before it is quantized
        name = f"{quantize.input[0]}_channels"
        graph.initializer.append(numpy_helper.from_array(
            np.array([0, 0, 0, 0, 0, extra, 0, 0], np.int64), f"{name}_pads"))
        node = onnx.helper.make_node("Pad", [quantize.input[0], f"{name}_pads"], [name],
                                     name=f"{name}_pad", mode="constant")
        graph.node.insert(list(graph.node).index(quantize), node)
        quantize.input[0] = name
    drop_value_info(out)  # the stem's input now has more channels than any annotation says
    return out, {"conv": stem.conv.name, "input_channels": [channels, channels + extra],
                 "widened": pad.name if pad is not None else None}
