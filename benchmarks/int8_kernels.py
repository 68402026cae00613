"""How much faster onnxruntime's CPU int8 kernels are than its fp32 ones, layer kind by kind.

    .venv/bin/python benchmarks/int8_kernels.py [--runs 200] [--rounds 3] [--threads 2]

Why: the whole-model INT8 speed-up is bounded by the layer kinds the model spends its time
in. Each EfficientNet-Lite0 layer shape below is built as a one-Conv model (+ ReLU6, as in
the network; random weights, seeded), quantized exactly as the export's cpu flavour does
(``edge_smw.export.quantize``, 7-bit weights of the default x86-avx2 target, U8S8 QDQ, which
onnxruntime fuses into ``QLinearConv``) with uint8 input and output as inside an all-integer
network, and timed at batch 1 beside its fp32 twin in one
process, runs interleaved, sessions from the project's one session loader. Each round
prints p50 per layer; the table gives the median over rounds and the range of the ratio.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_smw.artifacts.sessions import SessionSettings, load_session
from edge_smw.cpu import cpu_features
from edge_smw.export import quantize as Q

# (name, in channels, out channels, kernel, stride, group, input size): Lite0 at 224x224
LAYERS = (
    ("stem 3x3 s2, 3->32 @224", 3, 32, 3, 2, 1, 224),
    ("depthwise 3x3, 32 @112", 32, 32, 3, 1, 32, 112),
    ("depthwise 3x3 s2, 96 @112", 96, 96, 3, 2, 96, 112),
    ("depthwise 3x3, 144 @56", 144, 144, 3, 1, 144, 56),
    ("depthwise 5x5, 240 @28", 240, 240, 5, 1, 240, 28),
    ("pointwise 1x1, 24->144 @56", 24, 144, 1, 1, 1, 56),
    ("pointwise 1x1, 144->24 @56", 144, 24, 1, 1, 1, 56),
    ("pointwise 1x1, 480->80 @14", 480, 80, 1, 1, 1, 14),
    ("head 1x1, 320->1280 @7", 320, 1280, 1, 1, 1, 7),
)


def one_conv(c_in: int, c_out: int, k: int, stride: int, group: int, size: int,
             rng: np.random.Generator) -> onnx.ModelProto:
    weight = rng.standard_normal((c_out, c_in // group, k, k)).astype(np.float32)
    weight *= np.float32(np.sqrt(2.0 / (k * k * c_in // group)))
    bias = (0.1 * rng.standard_normal(c_out)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["conv"], name="conv",
                              kernel_shape=[k, k], strides=[stride, stride], group=group,
                              pads=[k // 2] * 4),
             helper.make_node("Clip", ["conv", "lo", "hi"], ["output"], name="relu6")]
    graph = helper.make_graph(
        nodes, "one_conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, c_in, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b"),
         numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6),
                                                                               "hi")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def int8_twin(model: onnx.ModelProto, feed: np.ndarray, folder: Path
              ) -> tuple[onnx.ModelProto, np.ndarray]:
    """The cpu flavour's QDQ model (ranges from the feed itself, minmax) with uint8 input and
    output, as the layer sees them inside an all-integer network (no float conversion at its
    ends), and the feed on its input grid."""
    path = folder / "probe.onnx"
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info("conv", TensorProto.FLOAT, None))
    onnx.save_model(probe, str(path))
    conv, out = load_session(path).run(["conv", "output"], {"input": feed})
    ranges = {name: (min(0.0, float(v.min())), max(0.0, float(v.max())))
              for name, v in (("input", feed), ("conv", conv), ("output", out))}
    calibration = Q.Calibration(Q.CalibMethod.MINMAX, ranges, "random input", len(feed))
    qdq = Q.quantize(model, calibration, Q.flavour_spec(Q.Flavour.CPU, reduce_range=True),
                     float_head=False)  # one Conv: no head to keep float
    init = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    first = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear"
                 and n.input[0] == "input")
    last = next(n for n in qdq.graph.node if n.op_type == "DequantizeLinear"
                and n.output[0] == "output")
    scale, zero = float(init[first.input[1]]), int(init[first.input[2]])
    fed = np.clip(np.round(feed / scale) + zero, 0, 255).astype(np.uint8)
    for node in (first, last):
        qdq.graph.node.remove(node)
    del qdq.graph.input[:], qdq.graph.output[:]
    qdq.graph.input.append(helper.make_tensor_value_info(first.output[0], TensorProto.UINT8,
                                                         list(feed.shape)))
    qdq.graph.output.append(helper.make_tensor_value_info(last.input[0], TensorProto.UINT8,
                                                          None))
    return qdq, fed


def main() -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/int8_kernels.py")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    settings = SessionSettings(threads=args.threads, spinning=False)
    sessions, feeds = {}, {}
    with tempfile.TemporaryDirectory(prefix="edge-smw-kernels-") as scratch:
        folder = Path(scratch)
        for name, c_in, c_out, k, stride, group, size in LAYERS:
            fp32 = one_conv(c_in, c_out, k, stride, group, size, rng)
            feed = np.clip(rng.standard_normal((1, c_in, size, size)), 0, 6).astype(np.float32)
            int8, fed = int8_twin(fp32, feed, folder)
            for precision, model, data in (("fp32", fp32, feed), ("int8", int8, fed)):
                path = folder / f"{len(sessions)}.onnx"
                onnx.save_model(model, str(path))
                session = load_session(path, settings)
                sessions[name, precision] = session
                feeds[name, precision] = {session.get_inputs()[0].name: data}
        rounds: list[dict[tuple[str, str], float]] = []
        for _ in range(args.rounds):
            times: dict[tuple[str, str], list[float]] = {key: [] for key in sessions}
            for i in range(10 + args.runs):
                for key, session in sessions.items():
                    start = time.perf_counter()
                    session.run(None, feeds[key])
                    if i >= 10:
                        times[key].append((time.perf_counter() - start) * 1e6)
            rounds.append({key: statistics.median(t) for key, t in times.items()})
    cpu = cpu_features()
    flags = " ".join(["avx2"] * cpu["avx2"] + ["avx512"] * cpu["avx512"] + cpu["vnni_flags"])
    import onnxruntime

    print(f"{cpu['model'] or platform.machine()}, CPU flags: {flags}; onnxruntime "
          f"{onnxruntime.__version__}, {args.threads} threads, batch 1, {args.runs} "
          f"interleaved runs x {args.rounds} rounds\n")
    print("| layer | fp32 us (p50) | int8 us (p50) | fp32 / int8 (range over rounds) |")
    print("|---|---|---|---|")
    for name, *_ in LAYERS:
        f = [r[name, "fp32"] for r in rounds]
        q = [r[name, "int8"] for r in rounds]
        ratios = [a / b for a, b in zip(f, q, strict=True)]
        print(f"| {name} | {statistics.median(f):.0f} | {statistics.median(q):.0f} | "
              f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
