"""Does eye alignment help the scorer? Accuracy with and without it, on real crops.

Each held-out real face crop is pasted into a 640x480 grey frame, upright or rotated in-plane,
found with the DNN detector, cut by the model's contract with ``align`` off and on, and scored
by the exported model through the Runtime; accuracy against the crop's label is compared per
rotation. Usage (a run trained on whole crops and its export):

    .venv/bin/python scripts/measure_alignment.py RUN_DIR EXPORT_DIR [--n 300]
"""

from __future__ import annotations

import argparse
import dataclasses

import cv2
import numpy as np

from edge_smw.artifacts.folders import RunDir
from edge_smw.bench.detection import FRAME_H, FRAME_W, background
from edge_smw.contract import DetectorSpec
from edge_smw.data.datasets import SplitManifest
from edge_smw.detect import open_detector
from edge_smw.images import read_image
from edge_smw.runtime import Runtime


def frame_with(crop: np.ndarray, angle: float, rng: np.random.Generator) -> np.ndarray:
    scene = background(rng).astype(np.float32)
    side = 160
    face = cv2.resize(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY), (side, side),
                      interpolation=cv2.INTER_CUBIC).astype(np.float32)
    x, y = (FRAME_W - side) // 2, (FRAME_H - side) // 2
    matrix = cv2.getRotationMatrix2D((side / 2, side / 2), angle, 1.0)
    matrix[:, 2] += (x, y)
    warped = cv2.warpAffine(face, matrix, (FRAME_W, FRAME_H))
    mask = cv2.warpAffine(np.ones_like(face), matrix, (FRAME_W, FRAME_H))
    scene = scene * (1 - mask) + warped * mask
    return cv2.cvtColor(np.clip(scene, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("model")
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    items = SplitManifest.load(RunDir.of(args.run_dir).split).items("test")
    rng = np.random.default_rng(0)
    chosen = [items[i] for i in rng.choice(len(items), min(args.n, len(items)), replace=False)]
    with Runtime(args.model, backend="onnxruntime-cpu", detect_faces=False) as rt, \
            open_detector(DetectorSpec(), backend="onnxruntime-cpu") as detector:
        plain = dataclasses.replace(rt.contract, detector=DetectorSpec(align=False))
        aligned = dataclasses.replace(rt.contract, detector=DetectorSpec(align=True))
        print("| rotation | faces found | accuracy, crops as detected | accuracy, eyes levelled |")
        print("|---|---|---|---|")
        for low, high in ((0, 0), (10, 20), (20, 30)):
            right = {"plain": 0, "aligned": 0}
            found = 0
            for item in chosen:
                angle = float(rng.uniform(low, high)) * float(rng.choice([-1, 1]))
                frame = frame_with(read_image(item.path), angle, rng)
                faces = detector.detect(frame, max_faces=1)
                if not faces:
                    continue
                found += 1
                for name, contract in (("plain", plain), ("aligned", aligned)):
                    crop = contract.crop_face(frame, faces[0].box, faces[0].eyes)
                    level = rt.score_crop(crop).level
                    right[name] += int(level == item.level)
            rows = [f"{100 * right[k] / max(1, found):.1f}%" for k in ("plain", "aligned")]
            print(f"| {low}-{high} deg | {found}/{len(chosen)} | {rows[0]} | {rows[1]} |")


if __name__ == "__main__":
    main()
