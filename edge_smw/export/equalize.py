"""Range equalization across the linear bottlenecks: one activation scale fits every channel.

Why: INT8 activations have one scale per tensor (QLinearConv, TensorRT), so a tensor whose
channels span very different ranges spends its 256 steps on the widest channel and leaves the
narrow ones a few steps each: the known 8-bit failure of MobileNet-family networks, where
the block's *linear* output (the projection Conv, no activation) and the residual stream it
adds into are the tensors concerned. Measured on the smilesmiled model (EfficientNet-Lite0),
the widest channel of each stream is only 2.3-6.2x the narrowest (1.5-1.9x the median), and
the step gave no gain there (benchmarks/RESULTS.md): it is offered (``--equalize``), measured
and kept only when it helps, off by default.

How: there is no nonlinearity between a projection Conv and the Convs that read its output
(directly or through the residual Adds), so each channel ``c`` of that *stream* can be
multiplied by ``s_c`` at every producer (weight row and bias) and divided out at every
consumer (weight column): the float function is unchanged, the per-channel ranges become
``r_c * s_c``. ``s_c = (R / r_c) ** strength`` with ``R`` the stream's widest channel:
strength 1 makes every channel as wide as the widest (the consumers' weight columns of narrow
channels shrink by the same factor, so their weight rounding error grows); 0.5 meets halfway,
as cross-layer equalization does for weights. A stream qualifies only when every reader is a
residual Add of the same stream or a plain (group=1) Conv, and no Add has a constant input.

This is the activation half of cross-layer equalization (Nagel et al., 2019, "Data-Free
Quantization"); the weight half does not apply here: weights are quantized per channel
already.

Clipped streams (``kind="clipped"``, ``--equalize-clipped``): ReLU6 is not
scale-equivariant, but a ``Clip(0, 6)`` after a channel scaled by ``s_c`` clips that channel
at ``6 / s_c``, so the one scalar Clip (which the quantizers fuse) becomes a per-channel
ceiling. Each channel's ceiling is at least ``CLIP_MARGIN`` times its largest value on the
crops measured (exactly that at full strength; at most 6): the float function is unchanged
wherever a value stays under it, and the channel then spans the tensor's whole 8-bit range
instead of the part of ``[0, 6]`` it uses (the median channel 0.27-0.98 of it, tensor by
tensor, on the fine-tuned smilesmiled model). A ReLU6 output is read by a depthwise Conv
(one weight row per channel, each with its own weight scale: dividing the row costs nothing,
so full strength) or by a projection Conv (its columns shrink under one scale per row:
``strength``, as for linear streams). The two kinds touch different tensors and are measured
as two steps of the export (the clipped streams after the linear ones, kept or not): a Conv
that reads a linear stream (its columns) and writes a clipped one (its rows) takes both
scales in either order.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edge_smw.contract import PreprocessContract
from edge_smw.export.crops import CropSet
from edge_smw.export.quantize import tensor_batches
from edge_smw.export.rounding import node_attributes

STRENGTH = 0.5
MAX_SCALE = 64.0  # a channel that is (almost) never active gains no more than this
LINEAR, CLIPPED = "linear", "clipped"  # the kinds of stream ``equalize`` rescales
# A clipped channel's ceiling over its largest value on the crops measured. On the fine-tuned
# smilesmiled model (600 validation crops, float model only) the decision margins moved by
# sd 0.14 log-odds with ceilings at the largest value of 128 crops, 0.04 at 1.25x that of
# 1,024: a channel's largest value grows with the crops seen (benchmarks/RESULTS.md).
CLIP_MARGIN = 1.25


@dataclass(frozen=True)
class Stream:
    """Tensors joined by residual Adds, the Convs that write them and the Convs that read
    them."""

    tensors: tuple[str, ...]
    producers: tuple[str, ...]
    consumers: tuple[str, ...]  # plain Convs: their weight columns are the channels
    depthwise: tuple[str, ...] = ()  # depthwise Convs: their weight rows are the channels
    ceiling: float | None = None  # a clipped stream: its Clip's upper bound (kept as it is)


@dataclass
class Equalization:
    """Per-stream channel scales of one kind of stream, measured on crops."""

    kind: str  # LINEAR or CLIPPED
    streams: list[Stream]
    scales: list[np.ndarray]  # one (channels,) array per stream
    spread_before: list[float]  # widest / median channel range per stream
    spread_after: list[float]
    strength: float
    crops: int

    def apply(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A copy of ``model`` with every stream rescaled: same float function."""
        out = copy.deepcopy(model)
        init = {i.name: i for i in out.graph.initializer}
        nodes = {n.name: n for n in out.graph.node}
        for stream, scale in zip(self.streams, self.scales, strict=True):
            for name in stream.producers:
                node = nodes[name]
                _scale(init[node.input[1]], scale.reshape(-1, 1, 1, 1))
                if len(node.input) > 2 and node.input[2]:
                    _scale(init[node.input[2]], scale)
            for name in stream.consumers:
                _scale(init[nodes[name].input[1]], 1.0 / scale.reshape(1, -1, 1, 1))
            for name in stream.depthwise:
                _scale(init[nodes[name].input[1]], 1.0 / scale.reshape(-1, 1, 1, 1))
        return out

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "streams": len(self.streams),
                "strength": self.strength, "crops": self.crops,
                "tensors": sum(len(s.tensors) for s in self.streams),
                "largest_scale": float(max((s.max() for s in self.scales), default=1.0)),
                "range_spread_before_median": _median(self.spread_before),
                "range_spread_after_median": _median(self.spread_after)}


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def _scale(tensor: onnx.TensorProto, factor: np.ndarray) -> None:
    value = numpy_helper.to_array(tensor).astype(np.float64) * factor
    tensor.CopyFrom(numpy_helper.from_array(value.astype(np.float32), tensor.name))


@dataclass(frozen=True)
class _Wiring:
    """Who writes and who reads each tensor of a graph."""

    init: dict[str, onnx.TensorProto]
    uses: dict[str, int]  # how many node inputs name the tensor
    producer: dict[str, onnx.NodeProto]
    readers: dict[str, list[onnx.NodeProto]]
    outputs: set[str]

    @classmethod
    def of(cls, model: onnx.ModelProto) -> _Wiring:
        uses: dict[str, int] = {}
        readers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.input:
                uses[name] = uses.get(name, 0) + 1
                readers.setdefault(name, []).append(node)
        return cls({i.name: i for i in model.graph.initializer}, uses,
                   {out: n for n in model.graph.node for out in n.output}, readers,
                   {o.name for o in model.graph.output})

    def owned(self, name: str) -> bool:
        """A constant only one node reads: editing it changes nothing else."""
        return name in self.init and self.uses[name] == 1


def linear_streams(model: onnx.ModelProto) -> list[Stream]:
    """Every stream that can be rescaled without changing what the model computes."""
    wiring = _Wiring.of(model)
    producer, readers, outputs = wiring.producer, wiring.readers, wiring.outputs

    def linear(name: str) -> bool:
        node = producer.get(name)
        return node is not None and node.op_type in ("Conv", "Add")

    # Join tensors through Adds whose inputs are all linear (union-find by root name).
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    for node in model.graph.node:
        if node.op_type == "Add" and all(linear(i) for i in node.input):
            for name in node.input:
                parent[root(name)] = root(node.output[0])
    groups: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type == "Conv" or (node.op_type == "Add" and node.output[0] in parent):
            groups.setdefault(root(node.output[0]), []).append(node.output[0])

    streams = []
    for tensors in groups.values():
        members = set(tensors)
        producers, consumers, ok = [], [], True
        for name in tensors:
            node = producer[name]
            if node.op_type == "Conv":
                ok &= wiring.owned(node.input[1])
                ok &= len(node.input) < 3 or not node.input[2] or wiring.owned(node.input[2])
                producers.append(node.name)
            else:
                ok &= all(i in members for i in node.input)
            ok &= name not in outputs
            for reader in readers.get(name, []):
                if reader.op_type == "Add" and reader.output[0] in members:
                    continue
                plain_conv = (reader.op_type == "Conv" and reader.input[0] == name
                              and int(node_attributes(reader).get("group", 1)) == 1
                              and wiring.owned(reader.input[1]))
                ok &= plain_conv
                if plain_conv:
                    consumers.append(reader.name)
        if ok and consumers:
            streams.append(Stream(tuple(tensors), tuple(producers), tuple(dict.fromkeys(
                consumers))))
    return streams


def clipped_streams(model: onnx.ModelProto) -> list[Stream]:
    """Every ``Conv -> Clip(0, ceiling)`` whose output only Convs read (plain, or depthwise
    with one weight row per channel), each its own stream."""
    wiring = _Wiring.of(model)
    init, uses, producer = wiring.init, wiring.uses, wiring.producer
    readers, outputs = wiring.readers, wiring.outputs

    def scalar(name: str) -> float | None:
        value = numpy_helper.to_array(init[name]) if name in init else None
        return float(value) if value is not None and value.size == 1 else None

    streams = []
    for clip in model.graph.node:
        if clip.op_type != "Clip" or len(clip.input) < 3:
            continue
        high = scalar(clip.input[2])
        conv = producer.get(clip.input[0])
        if (scalar(clip.input[1]) != 0.0 or high is None or high <= 0 or conv is None
                or conv.op_type != "Conv" or uses[clip.input[0]] != 1
                or not wiring.owned(conv.input[1]) or clip.output[0] in outputs
                or (len(conv.input) > 2 and conv.input[2] and not wiring.owned(conv.input[2]))):
            continue
        channels = numpy_helper.to_array(init[conv.input[1]]).shape[0]
        plain, depthwise, ok = [], [], True
        for reader in readers.get(clip.output[0], []):
            ok &= (reader.op_type == "Conv" and reader.input[0] == clip.output[0]
                   and wiring.owned(reader.input[1]))
            if not ok:
                break
            group = int(node_attributes(reader).get("group", 1))
            if group == 1:
                plain.append(reader.name)
            elif group == channels and numpy_helper.to_array(
                    init[reader.input[1]]).shape[:2] == (channels, 1):
                depthwise.append(reader.name)
            else:
                ok = False
        if ok and (plain or depthwise):
            streams.append(Stream((conv.output[0], clip.output[0]), (conv.name,),
                                  tuple(plain), tuple(depthwise), high))
    return streams


def find_streams(model: onnx.ModelProto, kind: str) -> list[Stream]:
    """The streams of one kind (``LINEAR``, ``CLIPPED``) in ``model``."""
    finders = {LINEAR: linear_streams, CLIPPED: clipped_streams}
    if kind not in finders:
        raise ValueError(f"stream kind {kind!r}: choose {LINEAR!r} or {CLIPPED!r}")
    return finders[kind](model)


def equalize(model: onnx.ModelProto, crops: CropSet, contract: PreprocessContract, *,
             kind: str = LINEAR, strength: float = STRENGTH, limit: int = 128,
             batch_size: int = 16) -> Equalization:
    """Measure each stream's per-channel range on the crops and choose its scales; ``kind``:
    the linear streams (``linear_streams``) or the ReLU6 outputs (``clipped_streams``)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"equalization strength {strength}: choose a value in (0, 1]")
    streams = find_streams(model, kind)
    names = [t for s in streams for t in s.tensors]
    peak = {t: None for t in names}
    for values in tensor_batches(model, names, crops, contract, limit=limit,
                                 batch_size=batch_size):
        for name in names:
            channel = np.abs(values[name]).max(axis=(0, 2, 3))
            peak[name] = channel if peak[name] is None else np.maximum(peak[name], channel)
    scales, before, after = [], [], []
    for stream in streams:
        if stream.ceiling is None:
            ranges = np.max([peak[t] for t in stream.tensors], axis=0).astype(np.float64)
            widest = float(ranges.max())
        else:  # what the Clip lets through, with a margin (its input may be wider)
            widest = stream.ceiling
            ranges = np.minimum(peak[stream.tensors[-1]].astype(np.float64) * CLIP_MARGIN, widest)
        # plain consumers pay for a scale, depthwise ones do not (see the module's notes)
        power = strength if stream.consumers else 1.0
        floor = widest / MAX_SCALE ** (1.0 / power)
        scale = (widest / np.maximum(ranges, floor)) ** power
        scales.append(scale)
        before.append(widest / max(float(np.median(ranges)), 1e-12))
        new = ranges * scale
        after.append(float(new.max()) / max(float(np.median(new)), 1e-12))
    return Equalization(kind, streams, scales, before, after, strength, min(limit, len(crops)))
