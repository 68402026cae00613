"""A Conv's zero padding moved into an explicit ``Pad`` in front of it.

Why: a transform that shifts a Conv's input by a constant (the exact input grid, centred
activations) changes what the Conv's own zero border means; an explicit ``Pad`` of the
shifted zero keeps the border exact, and the Conv then pads nothing.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def conv_pads(conv: onnx.NodeProto) -> list[int]:
    """The Conv's ``pads`` attribute ([] where it has none)."""
    return next((list(a.ints) for a in conv.attribute if a.name == "pads"), [])


def explicit_pad(graph: onnx.GraphProto, conv: onnx.NodeProto, source: str, name: str,
                 value: float | None = None) -> onnx.NodeProto | None:
    """A ``Pad`` node (not yet inserted) that pads ``source`` as ``conv`` pads its input, with
    ``value`` (zero when None), its output named ``name``; ``conv``'s own padding is set to
    zero. None when ``conv`` pads nothing (nothing changes)."""
    pads = conv_pads(conv)
    if not any(pads):
        return None
    half = len(pads) // 2
    # ONNX Conv pads: spatial begins then spatial ends; Pad's: every axis, NCHW
    widths = [0, 0, *pads[:half], 0, 0, *pads[half:]]
    graph.initializer.append(numpy_helper.from_array(np.array(widths, np.int64),
                                                     f"{name}_pads"))
    inputs = [source, f"{name}_pads"]
    if value is not None:
        graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32),
                                                         f"{name}_value"))
        inputs.append(f"{name}_value")
    for attribute in conv.attribute:
        if attribute.name == "pads":
            del attribute.ints[:]
            attribute.ints.extend([0] * len(pads))
    return onnx.helper.make_node("Pad", inputs, [name], name=f"{name}_pad", mode="constant")


def fold_into_conv(conv: onnx.NodeProto, widths: np.ndarray) -> None:
    """The inverse of ``explicit_pad``: a ``Pad``'s spatial ``widths`` (every axis, NCHW,
    batch and channel widths zero) added to ``conv``'s own padding."""
    half = len(widths) // 2
    spatial = [int(w) for w in (*widths[2:half], *widths[half + 2:])]
    pads = conv_pads(conv) or [0] * len(spatial)
    attribute = next((a for a in conv.attribute if a.name == "pads"), None)
    if attribute is None:
        conv.attribute.append(onnx.helper.make_attribute("pads", [0] * len(spatial)))
        attribute = conv.attribute[-1]
    del attribute.ints[:]
    attribute.ints.extend(p + w for p, w in zip(pads, spatial, strict=True))
