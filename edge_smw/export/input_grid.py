"""An exact 8-bit input: put the network input on the pixels' own grid.

The network input is ``pixel * mul + add`` (the contract's affine). For EfficientNet-Lite0
that is ``(p - 127.5) / 127.5``: 256 values exactly half a step off any 8-bit grid whose step
is ``mul``, so the input QuantizeLinear rounds every pixel by half a grey level, up or down by
the parity of the pixel (round half to even). Measured on the smilesmiled model, that input
rounding alone puts as much noise into the logits as the 8-bit weights after bias correction.

The fix moves the input by half a step, ``x' = x - mul / 2``, so that ``x' / mul = p - 128``
is an integer: quantized with scale ``mul`` and zero point 128 (uint8) or 0 (int8), every
pixel is represented exactly. The stem Conv absorbs the shift (its bias gains
``mul / 2 * sum(W)``); its zero padding moves in front of the shift (an explicit ``Pad``), so
the borders are exact too. The float function is unchanged. The shift and the pad run in
float before the first QuantizeLinear, on the input tensor: they are the conversion of the
float input to 8 bits, not a float layer.

Only possible when the contract scales every channel alike (one ``mul``): ImageNet-style
per-channel std (ResNet) cannot share one grid, and the step then reports why it is skipped.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edge_smw.contract import PreprocessContract
from edge_smw.export.padding import explicit_pad
from edge_smw.export.quantize import ConvTensors
from edge_smw.metadata import INPUT_NAME

SHIFTED = "edge_smw_input_on_grid"


@dataclass(frozen=True)
class InputGrid:
    """The shifted input's tensor, its exact scale, and the nodes that stay float."""

    tensor: str
    scale: float
    float_nodes: tuple[str, ...]

    def overrides(self, signed: bool) -> dict[str, list[dict[str, Any]]]:
        """onnxruntime ``TensorQuantOverrides`` for the input: pixel p -> p - 128 (int8) or
        p (uint8), exactly."""
        zero = np.array(0, np.int8) if signed else np.array(128, np.uint8)
        return {self.tensor: [{"scale": np.array(self.scale, np.float32), "zero_point": zero}]}

    def describe(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "scale": self.scale, "float_nodes": list(self.float_nodes)}


def why_not(model: onnx.ModelProto, contract: PreprocessContract) -> str | None:
    """Why the input cannot be put on an exact grid here, or None when it can."""
    mul, _ = contract.affine()
    if not np.allclose(mul, mul.ravel()[0], rtol=1e-6):
        return "the contract scales the colour channels differently: no one 8-bit grid fits"
    users = [n for n in model.graph.node if INPUT_NAME in n.input]
    if len(users) != 1 or users[0].op_type != "Conv" or users[0].input[0] != INPUT_NAME:
        return "the input does not feed exactly one Conv"
    init = {i.name for i in model.graph.initializer}
    if users[0].input[1] not in init:
        return "the first Conv's weights are not constants"
    return None


def put_input_on_grid(model: onnx.ModelProto, contract: PreprocessContract
                      ) -> tuple[onnx.ModelProto, InputGrid]:
    """A copy of the float model whose first Conv reads the shifted input (same function)."""
    reason = why_not(model, contract)
    if reason is not None:
        raise ValueError(reason)
    mul = float(np.asarray(contract.affine()[0]).ravel()[0])
    shift = -mul / 2.0
    out = copy.deepcopy(model)
    graph = out.graph
    conv = next(n for n in graph.node if INPUT_NAME in n.input)
    init = {i.name: i for i in graph.initializer}
    weight = numpy_helper.to_array(init[conv.input[1]]).astype(np.float64)
    # bias: conv(x) = conv(x') - shift * sum(W)  ->  b' = b - shift * sum(W)
    gain = -shift * weight.reshape(weight.shape[0], -1).sum(axis=1)
    ConvTensors(out, conv, init).add_to_bias(gain)
    nodes = []
    source = INPUT_NAME
    pad = explicit_pad(graph, conv, INPUT_NAME, f"{SHIFTED}_padded")
    if pad is not None:
        nodes.append(pad)
        source = pad.output[0]
    graph.initializer.append(numpy_helper.from_array(np.array(shift, np.float32),
                                                     f"{SHIFTED}_shift"))
    nodes.append(onnx.helper.make_node("Add", [source, f"{SHIFTED}_shift"], [SHIFTED],
                                       name=f"{SHIFTED}_add"))
    conv.input[0] = SHIFTED
    position = list(graph.node).index(conv)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    return out, InputGrid(SHIFTED, mul, tuple(n.name for n in nodes))
