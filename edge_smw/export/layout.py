"""onnxruntime's int8 layout: exact rewrites of a QDQ model for its channels-last kernels.

onnxruntime runs a QDQ model's int8 Convs channels-last (NHWC), with its own transposes at
the edges of the int8 part; these rewrites change no output, only what it costs:

* **the stem's input channels padded** to the kernel width. Its fastest int8 convolution on
  x86 (MLAS's symmetric "ConvSym" kernels, for per-channel int8 weights with zero zero points,
  as the cpu flavour writes them) takes a Conv only when its input channels are a multiple of
  4. An RGB stem has 3, so it falls back to im2col and a generic int8 GEMM, measured slower
  than the fp32 stem it replaces. One more input channel, read by zero weights, changes no
  product (0 * x). The channel is padded on the 8-bit input, after its QuantizeLinear, with
  the zero point; and the exact input grid's float zero ``Pad`` (``input_grid``) goes back
  into the Conv's own padding when the padded value quantizes to the zero point, which the
  Conv pads its 8-bit input with anyway: no float copy of the input is left. OpenVINO runs the
  3-channel stem a little faster (benchmarks/RESULTS.md), hence a setting, ``pad_stem``, and
  the Runtime's note for it.
* **the global pool read channels-last**: the float mean over H and W of the last int8 map
  reads it through an explicit NCHW -> NHWC ``Transpose`` (the mean then over axes 1 and 2).
  onnxruntime cancels it against the NHWC -> NCHW transpose it puts after its last int8 node,
  so the map is never transposed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edge_smw.export.padding import fold_into_conv
from edge_smw.export.quantize import drop_value_info

# onnxruntime MLAS ConvSym on x86: KernelInputChannelAlignment
CHANNEL_MULTIPLE = 4
STEP = "layout for onnxruntime's int8 kernels"


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


def _zero_point(graph: onnx.GraphProto, quantize: onnx.NodeProto) -> str:
    """The name of ``quantize``'s zero point; one is added where it has none (uint8 0)."""
    if len(quantize.input) > 2 and quantize.input[2]:
        return quantize.input[2]
    name = f"{quantize.output[0]}_zero_point"
    graph.initializer.append(numpy_helper.from_array(np.array(0, np.uint8), name))
    quantize.input.extend([""] * (2 - len(quantize.input)) + [name])
    return name


def _foldable_input_pad(graph: onnx.GraphProto, quantize: onnx.NodeProto,
                        conv: onnx.NodeProto) -> onnx.NodeProto | None:
    """The float zero-padding ``Pad`` in front of ``quantize`` (the exact input grid's), with at
    most a scalar shift between, that the stem Conv can do itself: it pads only H and W, and
    the padded value (0 + shift) quantizes to the zero point (ONNX QuantizeLinear: x / scale
    rounded half to even), which is what the Conv pads its 8-bit input with."""
    producers = _producers(graph)
    init = {i.name: i for i in graph.initializer}
    node = producers.get(quantize.input[0])
    shift = np.float32(0)
    if len(_readers(graph, quantize.input[0])) != 1:
        return None
    if node is not None and node.op_type == "Add" and _scalar(init, node.input[1]):
        shift = numpy_helper.to_array(init[node.input[1]]).astype(np.float32).reshape(())
        node = producers.get(node.input[0])
    if (node is None or node.op_type != "Pad" or node.input[1] not in init
            or any(a.name == "mode" and a.s not in (b"", b"constant") for a in node.attribute)
            or (len(node.input) > 3 and node.input[3])
            or len(_readers(graph, node.output[0])) != 1
            or any(a.name == "auto_pad" and a.s not in (b"", b"NOTSET") for a in conv.attribute)):
        return None
    if len(node.input) > 2 and node.input[2] and (
            not _scalar(init, node.input[2]) or numpy_helper.to_array(init[node.input[2]]) != 0):
        return None
    widths = numpy_helper.to_array(init[node.input[1]])
    half = len(widths) // 2
    if widths[:2].any() or widths[half:half + 2].any():
        return None
    scale, zero = quantize.input[1], quantize.input[2] if len(quantize.input) > 2 else ""
    if not _scalar(init, scale) or (zero and not _scalar(init, zero)):
        return None
    point = numpy_helper.to_array(init[zero]) if zero else np.array(0, np.uint8)
    step = numpy_helper.to_array(init[scale]).astype(np.float32).reshape(())
    limits = np.iinfo(point.dtype)
    padded = np.clip(np.round(shift / step) + int(point), limits.min, limits.max)
    return node if padded == point else None


def pad_stem_channels(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """A copy of a QDQ model whose stem reads its 8-bit input padded with zero-point channels
    to a multiple of ``CHANNEL_MULTIPLE``, with zero weights for them, and the input grid's
    float Pad folded into the stem Conv where that is exact: the same function.
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
    folded = _foldable_input_pad(graph, quantize, stem.conv)
    if folded is not None:  # the Conv pads its 8-bit input instead: no float copy
        fold_into_conv(stem.conv, numpy_helper.to_array(init[folded.input[1]]))
        for node in _readers(graph, folded.output[0]):
            node.input[:] = [folded.input[0] if t == folded.output[0] else t for t in node.input]
        graph.node.remove(folded)
        if not _readers(graph, folded.input[1]):
            graph.initializer.remove(init[folded.input[1]])
    name = f"{quantize.output[0]}_channels"
    graph.initializer.append(numpy_helper.from_array(
        np.array([0, 0, 0, 0, 0, extra, 0, 0], np.int64), f"{name}_pads"))
    node = onnx.helper.make_node(
        "Pad", [quantize.output[0], f"{name}_pads", _zero_point(graph, quantize)], [name],
        name=f"{name}_pad", mode="constant")
    graph.node.insert(list(graph.node).index(stem.input_dq), node)
    stem.input_dq.input[0] = name
    drop_value_info(out)  # the stem's input now has more channels than any annotation says
    return out, {"conv": stem.conv.name, "input_channels": [channels, channels + extra],
                 "folded_pad": folded.name if folded is not None else None}


def _pool(model: onnx.ModelProto) -> tuple[onnx.NodeProto | None, str | None]:
    """The float mean over H and W (``ReduceMean``, axes 2 and 3, no kept dims) of a
    dequantized 4-D map read by nothing else, or why there is none to read channels-last.
    The rank comes from shape inference: axes -2 and -1 are H and W only of a 4-D map."""
    graph = model.graph
    producers = _producers(graph)
    ranks: dict[str, int] | None = None
    for node in graph.node:
        if node.op_type != "ReduceMean":
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        source = producers.get(node.input[0])
        if not (sorted(attributes.get("axes", [])) in ([2, 3], [-2, -1])
                and attributes.get("keepdims", 1) == 0 and len(node.input) == 1
                and source is not None and source.op_type == "DequantizeLinear"
                and len(_readers(graph, node.input[0])) == 1):
            continue
        if ranks is None:
            inferred = onnx.shape_inference.infer_shapes(model).graph
            ranks = {v.name: len(v.type.tensor_type.shape.dim)
                     for v in (*inferred.value_info, *inferred.input, *inferred.output)
                     if v.type.tensor_type.HasField("shape")}
        if ranks.get(node.input[0]) == 4:
            return node, None
    return None, "no float mean over H and W of a dequantized 4-D map (read by it alone)"


def pool_channels_last(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """A copy whose global mean reads its map through an NCHW -> NHWC ``Transpose`` (the same
    mean, over axes 1 and 2): onnxruntime then cancels its own NHWC -> NCHW transpose of the
    map. Raises ValueError when there is no such mean (``_pool``)."""
    out = copy.deepcopy(model)
    pool, reason = _pool(out)
    if pool is None:
        raise ValueError(reason)
    name = f"{pool.input[0]}_channels_last"
    transpose = onnx.helper.make_node("Transpose", [pool.input[0]], [name], name=name,
                                      perm=[0, 2, 3, 1])
    out.graph.node.insert(list(out.graph.node).index(pool), transpose)
    pool.input[0] = name
    for attribute in pool.attribute:
        if attribute.name == "axes":
            del attribute.ints[:]
            attribute.ints.extend([1, 2])
    return out, {"pool": pool.name}


def for_onnxruntime(model: onnx.ModelProto, *, pad_stem: bool = True
                    ) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Every rewrite that applies (``pad_stem`` off: the stem as it is), and what each did or
    why it did not: ``stem`` and ``pool`` are a detail dict or a "skipped: ..." string."""
    detail: dict[str, Any] = {}
    rewrites = (("stem", pad_stem_channels, why_not(model) if pad_stem else "--no-pad-stem"),
                ("pool", pool_channels_last, _pool(model)[1]))
    for key, rewrite, reason in rewrites:
        if reason is None:
            model, detail[key] = rewrite(model)
        else:
            detail[key] = f"skipped: {reason}"
    return model, detail
