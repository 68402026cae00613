"""FP16 ONNX for GPUs: half-precision backbone, float32 inputs and outputs kept.

Built with onnxruntime's own converter (``onnxruntime.transformers.float16``). The float tail
(pooling, linear head, softmax) stays float32 for the same reason as in INT8: the head
weighs some near-constant features heavily, and it costs nothing to keep it exact. On a CPU
the fp16 model runs (onnxruntime casts where it has no fp16 kernel) but is not faster; its
use is TensorRT / CUDA.
"""

from __future__ import annotations

import copy

import onnx

from edge_smw.export.quantize import float_tail


def convert_fp16(fp32: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of ``fp32`` with float32 I/O and a float32 tail."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = copy.deepcopy(fp32)
    converted = convert_float_to_float16(model, keep_io_types=True,
                                         node_block_list=float_tail(fp32))
    del converted.graph.value_info[:]
    _topological_sort(converted.graph)
    return converted


def _topological_sort(graph: onnx.GraphProto) -> None:
    """The converter appends its input/output Casts at the end; ONNX wants producers first."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("fp16 graph has a cycle or a dangling input")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)
