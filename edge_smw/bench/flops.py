"""Multiply-accumulates of an ONNX graph, counted from its Conv / Gemm / MatMul shapes.

Counted from the exported graph rather than quoted from a paper, so the figure is the one
for the model that actually runs (with its input size and head). Only the operators that
carry nearly all the arithmetic are counted; element-wise ops, pooling and activations are
left out and the report says so. Works on fp32, fp16 and QDQ/QOperator int8 graphs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_smw.bench.results import MacCount
from edge_smw.errors import BackendUnavailableError, ModelError

COUNTED = ("Conv", "ConvInteger", "QLinearConv", "Gemm", "MatMul", "MatMulInteger",
           "QLinearMatMul")
# Which input holds the weight, and which the data, for each counted operator.
_CONV_WEIGHT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
_MATMUL_INPUTS = {"Gemm": (0, 1), "MatMul": (0, 1), "MatMulInteger": (0, 1),
                  "QLinearMatMul": (0, 3)}


def count_macs(path: str | Path, batch: int = 1) -> MacCount:
    """Per-image MACs of the ONNX at ``path``, in total and by operator."""
    try:
        import onnx
        from onnx import shape_inference
    except ModuleNotFoundError:
        raise BackendUnavailableError("counting FLOPs needs the onnx package: pip install onnx "
                                      "(or edge-smw[train])") from None
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelError(f"{path} is not a readable ONNX model ({exc})") from None
    graph = model.graph
    initializers = {init.name: list(init.dims) for init in graph.initializer}
    for inp in graph.input:
        if inp.name in initializers:
            continue
        dims = inp.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = batch
    for value in list(graph.value_info) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_param"):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = batch
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - inference is best effort
        raise ModelError(f"{path}: ONNX shape inference failed ({exc})") from None
    shapes: dict[str, list[int]] = dict(initializers)
    for value in (list(inferred.graph.value_info) + list(inferred.graph.input)
                  + list(inferred.graph.output)):
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    # Constant nodes can hold weights too (some exporters fold them that way).
    for node in inferred.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = list(attr.t.dims)
    # QDQ graphs feed Conv through DequantizeLinear: look through it for the weight shape.
    for node in inferred.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in shapes:
            shapes.setdefault(node.output[0], shapes[node.input[0]])

    by_op: dict[str, int] = {}
    unknown: list[str] = []
    nodes = 0
    for node in inferred.graph.node:
        if node.op_type not in COUNTED:
            continue
        nodes += 1
        macs = _node_macs(node, shapes)
        if macs is None:
            unknown.append(node.name or node.op_type)
            continue
        by_op[node.op_type] = by_op.get(node.op_type, 0) + macs
    total = sum(by_op.values())
    return MacCount(macs=total // batch, gmacs=total / batch / 1e9,
                    gflops=2 * total / batch / 1e9,
                    by_op={k: v // batch for k, v in by_op.items()}, counted_nodes=nodes,
                    uncounted_nodes=unknown, counted_ops=list(COUNTED))


def _prod(values: list[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _node_macs(node: Any, shapes: dict[str, list[int]]) -> int | None:
    if node.op_type in _CONV_WEIGHT:
        weight = shapes.get(node.input[_CONV_WEIGHT[node.op_type]])
        out = shapes.get(node.output[0])
        if weight is None or out is None or len(weight) < 3:
            return None
        # weight: [C_out, C_in / group, k...]; output: [N, C_out, spatial...]
        return _prod(out) * _prod(weight[1:])
    a_idx, b_idx = _MATMUL_INPUTS[node.op_type]
    a = shapes.get(node.input[a_idx])
    b = shapes.get(node.input[b_idx])
    out = shapes.get(node.output[0])
    if a is None or b is None or out is None:
        return None
    if node.op_type == "Gemm":
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        k = a[0] if trans_a else a[-1]
    else:
        k = a[-1]
    return _prod(out) * int(k)
