"""How far an int8 model's decisions are from fp32's, as a paired error rather than a count.

    .venv/bin/python benchmarks/int8_margin_error.py EXPORT [--split test] [--sensitivity N]

Why: top-1 agreement counts flips, and at 98-99% on 1,490 crops a count moves by several
crops between two tunings that are equally good. Each crop's decision margin (the logit of
fp32's chosen level minus the largest other logit) is a continuous, paired measure: a crop
flips when the int8 model's error on its margin exceeds the margin. The script prints, for
each int8 model of an export, the spread (standard deviation) of that error over the split's
crops, the error by margin band, and the fp32 margins of the crops that flipped.
``--sensitivity N``: on N of those crops, how much the spread falls when one activation
quantizer at a time is removed (its tensor left in float): which tensors carry the error.
``--split-at TENSOR``: where the error enters: the int8 model's value of TENSOR run through
the float model from there on (the error made before TENSOR alone), and the same errors
handed to other crops (how much of it belongs to the crop it was made on).
``--refit-head``: how much of the error a float head refitted to the int8 features removes
(ridge least squares of the pooled int8 features onto the fp32 logits on the training split's
crops, no labels, pulled toward the trained head): the part of the error that is linear in
the features, which a step of the export could take out for free.

The reference is the export's fp32 ONNX (held to torch within 1e-4 by the export's own
gate); every model runs on onnxruntime CPU through the project's one session loader; the
crops are the training run's split, read as the bench reads them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_smw.artifacts.folders import ExportDir
from edge_smw.artifacts.formats import FP32
from edge_smw.artifacts.sessions import load_session
from edge_smw.contract import PreprocessContract
from edge_smw.export.crops import CropSet, find_split, load_crops, split_items
from edge_smw.export.quantize import Flavour
from edge_smw.metadata import INPUT_NAME, OUTPUT_LOGITS, ModelInfo
from edge_smw.stats import DecisionMargins, decision_gaps

BANDS = ((0.0, 0.5), (0.5, 2.0), (2.0, 5.0), (5.0, float("inf")))


def batched(session: Any, output: str, inputs: np.ndarray, batch: int = 64,
            input_name: str = INPUT_NAME) -> np.ndarray:
    """One output of an onnxruntime session over ``inputs``, ``batch`` crops at a time."""
    return np.concatenate([session.run([output], {input_name: inputs[k:k + batch]})[0]
                           for k in range(0, len(inputs), batch)])


def logits(model: Path | bytes, inputs: np.ndarray, batch: int = 64) -> np.ndarray:
    return batched(load_session(model), OUTPUT_LOGITS, inputs, batch)


def without_quantizer(model: onnx.ModelProto, quantizer: onnx.NodeProto) -> onnx.ModelProto:
    """A copy whose ``quantizer`` and its DequantizeLinear nodes are gone: readers of the
    dequantized tensor read the float tensor instead."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    source, quantized = quantizer.input[0], quantizer.output[0]
    dropped = {n.output[0] for n in out.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] == quantized}
    kept = [n for n in out.graph.node
            if n.name != quantizer.name and not (n.op_type == "DequantizeLinear"
                                                 and n.input[0] == quantized)]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in dropped:
                node.input[i] = source
    for output in out.graph.output:
        if output.name in dropped:
            output.name = source
    del out.graph.node[:]
    out.graph.node.extend(kept)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/int8_margin_error.py")
    parser.add_argument("export", type=Path, help="an export folder made with --int8")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--sensitivity", type=int, default=0, metavar="N",
                        help="crops for the one-quantizer-removed table (0: skip it)")
    parser.add_argument("--split-at", metavar="TENSOR",
                        help="the error made before this tensor alone (float after it)")
    parser.add_argument("--refit-head", action="store_true",
                        help="refit the float head to the int8 features on the training split")
    args = parser.parse_args()

    folder = ExportDir(args.export)
    fp32_path = folder.path / FP32.file_name
    models = [folder.path / f.file_name for f in Flavour if (folder.path / f.file_name).is_file()]
    if not fp32_path.is_file() or not models:
        names = " / ".join(f.file_name for f in Flavour)
        print(f"{args.export}: no {FP32.file_name} with an INT8 model ({names}) beside it; give "
              "an export folder made with --int8", file=sys.stderr)
        return 2
    rest = None
    if args.split_at:
        try:
            rest = load_session(rest_of(onnx.load(str(fp32_path)), args.split_at))
        except ValueError as error:
            print(f"--split-at {args.split_at}: {error}", file=sys.stderr)
            return 2
    info = ModelInfo.from_file(fp32_path)
    source = json.loads(folder.export_json.read_text())["source"]["path"]
    split = find_split(source)
    if split is None:
        print(f"{source}: no split.json; the training run is needed for its split",
              file=sys.stderr)
        return 2
    def split_crops(name: str) -> CropSet:
        items = split_items(split, name, info.levels)
        return load_crops(items, info.contract, detect=info.detect, source=name,
                          progress=False)

    inputs = split_crops(args.split).inputs(info.contract)
    # the training split only as crops: its 6,949 inputs at once would take 4 GB
    training = split_crops("train") if args.refit_head else None
    reference = logits(fp32_path, inputs)
    float_values = (batched(load_session(with_output(onnx.load(str(fp32_path)), args.split_at)),
                            args.split_at, inputs) if rest is not None else None)
    base = decision_gaps(reference, reference)[0]
    print(f"{args.export}, {args.split} split: {len(inputs)} crops; fp32 |margin| median "
          f"{np.median(np.abs(base)):.2f}, {int((np.abs(base) < 0.1).sum())} below 0.1, "
          f"{int((np.abs(base) < 0.5).sum())} below 0.5")
    for path in models:
        error = decision_gaps(logits(path, inputs), reference)[1]
        flipped = base + error < 0
        print(f"\n{path.name}: {int(flipped.sum())} flips, margin error sd {error.std():.3f} "
              f"(mean {error.mean():+.3f}); {DecisionMargins.from_gaps(base, error).describe()}")
        print("| fp32 margin | crops | error sd |\n|---|---|---|")
        for low, high in BANDS:
            band = (base >= low) & (base < high)
            if band.any():
                print(f"| {low:g}-{high:g} | {int(band.sum())} | {error[band].std():.3f} |")
        print("flipped crops' fp32 margins:", " ".join(f"{m:.2f}" for m in np.sort(base[flipped])))
        if args.sensitivity:
            sensitivity(path, inputs, reference, args.sensitivity)
        if float_values is not None:  # set exactly when --split-at is
            split_at(path, args.split_at, rest, inputs, float_values, reference)
        if training is not None:
            head_refit(path, fp32_path, training, info.contract, inputs, reference)
    return 0


def with_output(model: onnx.ModelProto, tensor: str) -> bytes:
    """The model with ``tensor`` as a further output."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    return out.SerializeToString()


def with_head_features(model: onnx.ModelProto) -> tuple[bytes, np.ndarray]:
    """The model with its head's input (the pooled features) as a second output, and the
    head as one matrix: weights (features x levels) over a bias row."""
    head = next(n for n in model.graph.node if n.op_type == "Gemm"
                and OUTPUT_LOGITS in n.output)
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weight, bias = constants[head.input[1]].astype(np.float64), constants[head.input[2]]
    if any(a.name == "transB" and a.i for a in head.attribute):
        weight = weight.T
    return with_output(model, head.input[0]), np.vstack([weight, bias[None].astype(np.float64)])


def refit(features: np.ndarray, target: np.ndarray, head: np.ndarray,
          strength: float) -> np.ndarray:
    """The head minimising |[features, 1] head' - target|^2 + strength * n * |head' - head|^2."""
    x = np.hstack([features, np.ones((len(features), 1))])
    pull = strength * len(x)
    return np.linalg.solve(x.T @ x + pull * np.eye(x.shape[1]), x.T @ target + pull * head)


def head_refit(path: Path, fp32_path: Path, training: CropSet, contract: PreprocessContract,
               inputs: np.ndarray, reference: np.ndarray) -> None:
    model, head = with_head_features(onnx.load(str(path)))
    session, fp32 = load_session(model), load_session(fp32_path)
    feature_name = session.get_outputs()[-1].name
    chunks = [training.inputs(contract, k, k + 512) for k in range(0, len(training), 512)]
    train_features = np.concatenate([batched(session, feature_name, c) for c in chunks])
    target = np.concatenate([batched(fp32, OUTPUT_LOGITS, c) for c in chunks])
    train_features, target = train_features.astype(np.float64), target.astype(np.float64)
    evaluated = batched(session, feature_name, inputs).astype(np.float64)
    base = decision_gaps(reference, reference)[0]
    print(f"\nfloat head refitted on {len(training)} training crops' int8 features (ridge, "
          "pulled toward the trained head)\n| strength | flips | error sd |\n|---|---|---|")
    for strength in (0.001, 0.01, 0.1, 1.0, 10.0):
        theta = refit(train_features, target, head, strength)
        out = np.hstack([evaluated, np.ones((len(evaluated), 1))]) @ theta
        error = decision_gaps(out, reference)[1]
        print(f"| {strength:g} | {int((base + error < 0).sum())} | {error.std():.3f} |")


def rest_of(model: onnx.ModelProto, tensor: str) -> bytes:
    """The part of ``model`` after ``tensor``: ``tensor`` in, the logits out. Raises
    ``ValueError`` when the model has no such tensor or the logits also read something
    computed before it."""
    if tensor not in {o for n in model.graph.node for o in n.output}:
        raise ValueError("no such tensor in the fp32 model; its names are the ONNX "
                         "exporter's, e.g. /blocks.4.2/Add_output_0")
    inferred = onnx.shape_inference.infer_shapes(model)  # the extractor reads value_info
    rest = onnx.utils.Extractor(inferred).extract_model([tensor], [OUTPUT_LOGITS])
    known = {tensor} | {i.name for i in rest.graph.initializer}
    known |= {o for n in rest.graph.node for o in n.output}
    if any(name and name not in known for n in rest.graph.node for name in n.input):
        raise ValueError(f"the logits do not depend on the network input through {tensor} "
                         "alone; pick a tensor every path to the logits crosses")
    return rest.SerializeToString()


def split_at(path: Path, tensor: str, rest: Any, inputs: np.ndarray, float_values: np.ndarray,
             reference: np.ndarray, seed: int = 0) -> None:
    """The error made before ``tensor``: the int8 model's value of it through ``rest`` (the
    fp32 model after it), and the same errors added to other crops' ``float_values``."""
    model = onnx.load(str(path))
    if tensor not in {o for n in model.graph.node for o in n.output}:
        print(f"--split-at {tensor}: {path.name} has no such tensor (the quantizer renamed "
              "it); pick one it keeps, e.g. a residual Add's output", file=sys.stderr)
        return
    int8_values = batched(load_session(with_output(model, tensor)), tensor, inputs)
    before = decision_gaps(reference, reference)[0]
    shuffled = np.random.default_rng(seed).permutation(len(inputs))
    rows = [("the int8 model's value, float after it", int8_values),
            ("the same errors, each on another crop",
             float_values + (int8_values - float_values)[shuffled])]
    print(f"\nthe error made before {tensor} (float from there on)\n"
          "| value entering the float rest | flips | error sd |\n|---|---|---|")
    for label, values in rows:
        out = batched(rest, OUTPUT_LOGITS, values, input_name=tensor)
        error = decision_gaps(out, reference)[1]
        print(f"| {label} | {int((before + error < 0).sum())} | {error.std():.3f} |")


def sensitivity(path: Path, inputs: np.ndarray, reference: np.ndarray, n: int) -> None:
    pick = np.random.default_rng(0).choice(len(inputs), min(n, len(inputs)), replace=False)
    model = onnx.load(str(path))
    constants = {i.name for i in model.graph.initializer}

    def spread(candidate: onnx.ModelProto) -> float:
        out = logits(candidate.SerializeToString(), inputs[pick])
        return float(np.std(decision_gaps(out, reference[pick])[1]))

    whole = spread(model)
    rows = []
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants:
            rows.append((spread(without_quantizer(model, node)), node.input[0]))
    print(f"\none activation quantizer removed, {len(pick)} crops (error sd {whole:.3f} with "
          "all of them): the ten that matter most\n| tensor left float | error sd | change |"
          "\n|---|---|---|")
    for value, tensor in sorted(rows)[:10]:
        print(f"| {tensor} | {value:.3f} | {100 * (value / whole - 1):+.0f}% |")


if __name__ == "__main__":
    raise SystemExit(main())
