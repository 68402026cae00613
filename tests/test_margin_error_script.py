"""benchmarks/int8_margin_error.py: the one-quantizer-removed graph it reports is what it says
(the script itself needs an export and real crops; its margins are ``edge_smw.stats``')."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_smw.artifacts.sessions import load_session
from tests.scripts import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "int8_margin_error.py"


def _script():
    return load_script(SCRIPT)


def test_removing_a_quantizer_leaves_its_tensor_float() -> None:
    """input -> Q -> DQ -> Relu: without the quantizer the output is Relu(input) exactly,
    with it the output is on the 8-bit grid."""
    script = _script()
    nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"], name="quant"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dequant"),
             helper.make_node("Relu", ["dq"], ["output"], name="relu")]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
         numpy_helper.from_array(np.array(0, np.int8), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.linspace(-1.0, 1.0, 8, dtype=np.float32).reshape(1, 8) + 0.013

    def run(m: onnx.ModelProto) -> np.ndarray:
        return load_session(m.SerializeToString()).run(["output"], {"input": x})[0]

    quantizer = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    removed = script.without_quantizer(model, quantizer)
    assert [n.op_type for n in removed.graph.node] == ["Relu"]
    assert np.array_equal(run(removed), np.maximum(x, 0))
    assert not np.allclose(run(model), np.maximum(x, 0), atol=1e-3)
    assert [n.op_type for n in model.graph.node] == ["QuantizeLinear", "DequantizeLinear",
                                                     "Relu"]  # the original is untouched


def test_head_refit_takes_out_a_linear_error_and_nothing_when_pulled_back() -> None:
    """Features distorted by a linear map and a shift: the refitted head gives the reference
    logits back exactly; pulled hard toward the trained head, it stays that head."""
    script = _script()
    rng = np.random.default_rng(0)
    clean = rng.standard_normal((400, 6))
    head = np.vstack([rng.standard_normal((6, 2)), rng.standard_normal((1, 2))])
    target = np.hstack([clean, np.ones((400, 1))]) @ head
    distorted = clean @ (np.eye(6) + 0.2 * rng.standard_normal((6, 6))) + 0.3
    fitted = script.refit(distorted, target, head, 1e-9)
    assert np.allclose(np.hstack([distorted, np.ones((400, 1))]) @ fitted, target, atol=1e-5)
    assert np.allclose(script.refit(distorted, target, head, 1e9), head, atol=1e-6)


def test_head_features_are_the_gemm_input_and_its_weights() -> None:
    script = _script()
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)  # levels x features (transB)
    bias = np.array([0.5, -0.5], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["pooled"]),
         helper.make_node("Gemm", ["pooled", "w", "b"], ["logits"], transB=1)], "head",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    serialized, head = script.with_head_features(model)
    assert np.array_equal(head, np.vstack([weight.T, bias[None]]))
    x = np.array([[1.0, -2.0, 3.0]], np.float32)
    logits, pooled = load_session(serialized).run(["logits", "pooled"], {"input": x})
    assert np.array_equal(pooled, np.maximum(x, 0))
    assert np.allclose(np.hstack([pooled, [[1.0]]]) @ head, logits)


def _two_step_model(skip: bool) -> onnx.ModelProto:
    """input -> Relu -> mid -> Mul(2) -> logits; ``skip``: the logits also add the input."""
    nodes = [helper.make_node("Relu", ["input"], ["mid"]),
             helper.make_node("Mul", ["mid", "two"], ["doubled"])]
    nodes.append(helper.make_node("Add", ["doubled", "input"], ["logits"]) if skip
                 else helper.make_node("Identity", ["doubled"], ["logits"]))
    graph = helper.make_graph(
        nodes, "two", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 2])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_the_rest_after_a_tensor_runs_from_that_tensor_alone() -> None:
    """--split-at: the float rest takes the tensor's value (any value, e.g. the int8 model's)
    and gives what the whole model gives from there; a tensor the logits bypass is refused."""
    script = _script()
    model = _two_step_model(skip=False)
    rest = load_session(script.rest_of(model, "mid"))
    assert [i.name for i in rest.get_inputs()] == ["mid"]
    values = np.array([[0.5, 3.0], [1.25, 0.0]], np.float32)
    assert np.array_equal(script.batched(rest, "logits", values, input_name="mid"), 2 * values)
    x = np.array([[-1.0, 2.0]], np.float32)
    whole = load_session(script.with_output(model, "mid")).run(["logits", "mid"],
                                                               {"input": x})
    assert np.array_equal(whole[1], np.maximum(x, 0))
    assert np.array_equal(rest.run(["logits"], {"mid": whole[1]})[0], whole[0])
    with pytest.raises(ValueError, match="alone"):
        script.rest_of(_two_step_model(skip=True), "mid")
    with pytest.raises(ValueError, match="no such tensor"):
        script.rest_of(model, "/blocks.4.2/Add_output_0")
