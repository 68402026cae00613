"""Face detectors: anchors, decoding and suppression on known inputs; the resolver; the
contract's detector field; alignment; recall on a small detection set built from real crops."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_smw.bench.detection import (
    CONDITIONS,
    build_detection_set,
    evaluate_detectors,
    load_face_crops,
    match,
    parse_detector,
)
from edge_smw.contract import CONTRACT_VERSION, DetectorSpec, PreprocessContract
from edge_smw.detect import (
    DETECTORS,
    HAAR,
    open_detector,
    resolve_spec,
    shared_detector,
)
from edge_smw.detect import registry as registry_module
from edge_smw.detect.blazeface import (
    BlazeFaceDetector,
    Recipe,
    anchor_centres,
    decode,
)
from edge_smw.detect.haar import HaarDetector
from edge_smw.detect.nms import iou_matrix, weighted_nms
from edge_smw.errors import InputError, ModelError
from edge_smw.runtime.backends import open_runner

SHORT = Recipe("blazeface-short", (8, 16, 16, 16), 1.0, (128, 128), 16, 0.5, 0.3,
               ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear_tragion",
                "left_ear_tragion"))
FULL = Recipe("blazeface-full", (4,), 0.0, (192, 192), 32, 0.6, 0.3, SHORT.keypoints)


# -- anchors, decoding, suppression -------------------------------------------------------
def test_anchors_match_mediapipe_counts_and_order() -> None:
    anchors = anchor_centres(SHORT, 128, 128)
    assert anchors.shape == (896, 2)  # 16x16x2 + 8x8x6, MediaPipe's short-range count
    assert np.allclose(anchors[0], anchors[1]) and np.allclose(anchors[0], [0.5 / 16, 0.5 / 16])
    assert np.allclose(anchors[2], [1.5 / 16, 0.5 / 16])  # next column, same row
    assert np.allclose(anchors[512:518], [0.5 / 8, 0.5 / 8])  # stride 16: 6 per cell
    assert anchor_centres(FULL, 192, 192).shape == (2304, 2)
    wide = anchor_centres(SHORT, 320, 240)  # the input resolution is a setting
    assert wide.shape == (40 * 30 * 2 + 20 * 15 * 6, 2)


def test_decode_places_a_face_at_its_anchor_and_merges_overlaps() -> None:
    anchors = anchor_centres(SHORT, 128, 128)
    reg = np.zeros((896, 16), np.float32)
    logits = np.full((896,), -10.0, np.float32)
    a, b = 16 * 5 + 3, 16 * 5 + 4  # two neighbouring stride-8 cells (anchor index / 2)
    for index, logit in ((2 * a, 3.0), (2 * b, 1.0)):
        reg[index, :4] = (2.0, -1.0, 40.0, 44.0)  # centre offset, width, height in pixels
        reg[index, 4:] = np.tile([-10.0, -8.0], 6)  # keypoints relative to the anchor
        logits[index] = logit
    boxes, scores, points = decode(reg, logits, anchors, 128, 128, 0.5, 0.3)
    assert len(boxes) == 1  # the two overlapping candidates became one face
    ca, cb = anchors[2 * a] * 128, anchors[2 * b] * 128
    w1, w2 = 1 / (1 + math.exp(-3.0)), 1 / (1 + math.exp(-1.0))
    centre = (w1 * ca + w2 * cb) / (w1 + w2) + (2.0, -1.0)
    assert np.allclose((boxes[0, :2] + boxes[0, 2:]) / 2, centre, atol=1e-4)
    assert np.allclose(boxes[0, 2:] - boxes[0, :2], (40.0, 44.0), atol=1e-4)
    assert scores[0] == pytest.approx(w1)  # the best candidate's score
    assert np.allclose(points[0, 0], centre - (2.0, -1.0) + (-10.0, -8.0), atol=1e-4)
    # below the threshold: nothing
    assert len(decode(reg, logits - 10, anchors, 128, 128, 0.5, 0.3)[0]) == 0
    with pytest.raises(ModelError, match="recipe does not fit"):
        decode(reg[:800], logits[:800], anchors, 128, 128, 0.5, 0.3)


def test_iou_and_weighted_nms_on_known_boxes() -> None:
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], float)
    assert np.allclose(iou_matrix(a, b), [[50 / 150, 0.0, 1.0]])
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], float)
    scores = np.array([0.6, 0.9, 0.7])
    kept, kept_scores, _ = weighted_nms(boxes, scores, None, 0.3)
    assert list(kept_scores) == [0.9, 0.7]
    assert np.allclose(kept[0], (0.9 * boxes[1] + 0.6 * boxes[0]) / 1.5)
    assert np.allclose(kept[1], boxes[2])


def test_match_pairs_best_first_one_to_one() -> None:
    truth = [(0, 0, 100, 100), (200, 200, 50, 50)]
    found = [(5, 5, 100, 100), (0, 0, 100, 100), (400, 400, 30, 30)]
    hits, false, ious = match(truth, found, 0.4)
    assert (hits, false) == (1, 2) and ious == [1.0]  # one box per face; the twin is false
    assert match([], found) == (0, 3, [])


# -- the shipped detector ------------------------------------------------------------------
def test_shipped_weights_match_their_provenance() -> None:
    """PROVENANCE.md's sha256 is the file's (scripts/convert-blazeface.sh reproduces it)."""
    import hashlib

    text = (registry_module.WEIGHTS_DIR / "PROVENANCE.md").read_text()
    for name, shipped in DETECTORS.items():
        digest = hashlib.sha256(shipped.path.read_bytes()).hexdigest()
        assert digest in text, name
    licence = (registry_module.WEIGHTS_DIR / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence


def test_blazeface_finds_a_real_face_with_landmarks(smiles_dir: Path) -> None:
    crop = load_face_crops(smiles_dir, limit=1)[0]
    frame = np.full((480, 640, 3), 120, np.uint8)
    frame[100:300, 300:500] = cv2.resize(crop, (200, 200), interpolation=cv2.INTER_CUBIC)
    with open_detector("blazeface-short", backend="onnxruntime-cpu", threads=1) as detector:
        assert isinstance(detector, BlazeFaceDetector) and detector.backend == "onnxruntime-cpu"
        found = detector.detect(frame)
        assert detector.detect(np.full((480, 640, 3), 120, np.uint8)) == []
    assert len(found) == 1
    face = found[0]
    hits, _, _ = match([(300, 100, 200, 200)], [face.box])
    assert hits == 1 and 0.55 <= face.score <= 1.0
    (rx, ry), (lx, ly) = face.eyes
    assert 300 < rx < lx < 500 and 100 < ry < 220 and 100 < ly < 220  # eyes in the upper half
    assert face.landmarks["mouth"][1] > max(ry, ly)
    assert json.loads(json.dumps(face.to_dict()))["landmarks"]["nose_tip"]


def test_any_runner_feeds_its_models_own_input_name(tmp_path: Path) -> None:
    """Runners no longer insist on the scorer's input name: a detector's is its own."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["pixels"], ["out"])], "g",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 4, 4])])
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    runner = open_runner("onnxruntime-cpu", path, threads=1)
    runner.activate()
    x = np.arange(48, dtype=np.float32).reshape(1, 3, 4, 4)
    assert runner.input_name == "pixels"
    assert np.array_equal(runner.infer(x)["out"], x)
    runner.deactivate()
    with pytest.raises(ModelError, match="'edge_smw.detector' metadata"):
        BlazeFaceDetector(DetectorSpec(), path)  # a plain network is not a detector


# -- the resolver ---------------------------------------------------------------------------
def test_resolver_names_auto_files_and_the_contracts_settings(tmp_path: Path) -> None:
    haar_model = PreprocessContract(levels=("a", "b"), detector=DetectorSpec(name=HAAR))
    tuned = PreprocessContract(levels=("a", "b"),
                               detector=DetectorSpec(input_size=256, retry_sizes=()))
    assert resolve_spec("auto", haar_model).name == HAAR
    assert resolve_spec(None).name == "blazeface-short"
    assert resolve_spec("blazeface-short", tuned) == tuned.detector  # keeps its settings
    assert resolve_spec("blazeface-short", haar_model) == DetectorSpec()
    with pytest.raises(InputError, match="unknown face detector 'yolo'"):
        resolve_spec("yolo")
    with pytest.raises(ModelError, match="not found"):
        open_detector(str(tmp_path / "missing.onnx"))
    with pytest.raises(InputError, match="unknown backend"):
        open_detector("blazeface-short", backend="pytorch")
    assert isinstance(open_detector("haar"), HaarDetector)
    # an .onnx path: the shipped file under another name decodes by its own metadata
    copy = tmp_path / "detector.onnx"
    copy.write_bytes(DETECTORS["blazeface-short"].path.read_bytes())
    with open_detector(str(copy), threads=1) as detector:
        assert detector.name == "blazeface-short" and detector.side == 128  # trained size
    assert shared_detector(DetectorSpec()) is shared_detector(DetectorSpec())


@pytest.mark.parametrize("content", [b"", DETECTORS["blazeface-short"].path.read_bytes()[:20000]],
                         ids=["empty", "truncated"])
def test_a_broken_detector_file_says_what_makes_a_detector(tmp_path: Path, content: bytes) -> None:
    """Not "re-export it with `edge-smw export`": export makes scoring models, not detectors."""
    broken = tmp_path / "detector.onnx"
    broken.write_bytes(content)
    with pytest.raises(ModelError) as info:
        open_detector(str(broken), backend="onnxruntime-cpu", threads=1)
    message = str(info.value)
    assert message.startswith(f"face detector {broken} is ")
    assert "--detector blazeface-short" in message and "convert-blazeface.sh" in message
    assert "re-export" not in message


def test_a_gpu_backend_runs_the_detector_or_falls_back_to_the_cpu(smiles_dir: Path) -> None:
    """Next to a GPU scorer the detector asks for the same GPU; where onnxruntime has no such
    provider (this CPU machine) it runs on the CPU instead. On a machine with CUDA the same
    call runs on it, and finds the same faces as the CPU."""
    import onnxruntime as ort

    crops = load_face_crops(smiles_dir, limit=6, seed=2)
    frames = build_detection_set(crops, per_condition=3, seed=2,
                                 conditions=["medium (80-140 px)"])
    with open_detector("blazeface-short", backend="onnxruntime-cpu", threads=1) as cpu, \
            open_detector("blazeface-short", backend="onnxruntime-cuda", threads=1) as asked:
        has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        assert asked.backend == ("onnxruntime-cuda" if has_cuda else "onnxruntime-cpu")
        for frame in frames:
            on_cpu, on_asked = cpu.detect(frame.image), asked.detect(frame.image)
            assert len(on_cpu) == len(on_asked) >= 1
            found = match([d.box for d in on_cpu], [d.box for d in on_asked], min_iou=0.9)[0]
            assert found == len(on_cpu)


def test_detector_settings_read_back_from_their_short_form() -> None:
    """``python -m edge_smw.bench.detection --detectors`` compares settings of one detector in
    one run; each is written the way ``DetectorSpec.describe`` prints it."""
    for spec in (DetectorSpec(), DetectorSpec(retry_sizes=(576,)),
                 DetectorSpec(input_size=256, retry_sizes=()),
                 DetectorSpec(input_size=320, retry_sizes=(192, 576)), DetectorSpec(name=HAAR)):
        assert parse_detector(spec.describe()) == spec
    with pytest.raises(InputError, match="name\\[@SIZE\\]"):
        parse_detector("blazeface-short>near")
    with pytest.raises(InputError, match="unknown face detector"):
        parse_detector("yolo@320")


def test_missing_weights_fall_back_to_haar_with_one_warning(monkeypatch, tmp_path: Path,
                                                             caplog) -> None:
    monkeypatch.setattr(registry_module, "WEIGHTS_DIR", tmp_path)  # a stripped install
    monkeypatch.setattr(registry_module, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="edge_smw.detect"):
        first = open_detector("blazeface-short")
        second = open_detector("auto")
    assert isinstance(first, HaarDetector) and isinstance(second, HaarDetector)
    assert first.fallback_for == "blazeface-short"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "falling back to Haar" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()


# -- the contract -------------------------------------------------------------------------
def test_contract_records_the_detector_and_reads_old_contracts_as_haar() -> None:
    contract = PreprocessContract(levels=("a", "b"), detector=DetectorSpec(
        input_size=256, retry_sizes=(192, 576), score_threshold=0.6, align=True))
    back = PreprocessContract.from_json(contract.to_json())
    assert back == contract and back.version == CONTRACT_VERSION == 3
    assert back.detector.retry_sizes == (192, 576)  # a JSON list reads back as the tuple
    assert contract.detector.describe() == "blazeface-short@256>192>576 score>=0.6 aligned"
    assert json.loads(contract.to_json())["detector"]["align"] is True
    old = json.loads(contract.to_json())
    del old["detector"]
    old["version"] = 1
    assert PreprocessContract.from_dict(old).detector == DetectorSpec(name=HAAR)
    # version 2 had one second look, ``retry_size``: 0 meant none
    for legacy, sizes in [(576, (576,)), (0, ()), (None, None)]:
        v2 = {**old, "version": 2, "detector": {"name": "blazeface-short", "retry_size": legacy}}
        assert PreprocessContract.from_dict(v2).detector.retry_sizes == sizes
    assert PreprocessContract(levels=("a", "b")).detector.name == "blazeface-short"
    assert contract.geometry_sha256 != PreprocessContract(levels=("a", "b")).geometry_sha256
    with pytest.raises(ModelError, match="newer edge-smw"):
        PreprocessContract.from_dict({**old, "detector": {"name": HAAR, "anchors": 3}})
    for bad, words in [({"name": HAAR, "align": True}, "eye landmarks"),
                       ({"input_size": 8}, "input_size"), ({"retry_sizes": (12,)}, "retry_sizes"),
                       ({"retry_sizes": 576}, "retry_sizes"),
                       ({"score_threshold": 1.5}, "score_threshold"), ({"name": ""}, "name")]:
        with pytest.raises(InputError, match=words):
            DetectorSpec(**bad)


def test_alignment_rotates_the_crop_so_the_eyes_are_level() -> None:
    image = np.full((400, 400, 3), 200, np.uint8)
    angle = math.radians(25)
    centre = np.array([200.0, 200.0])
    offset = 40 * np.array([math.cos(angle), math.sin(angle)])
    right, left = centre - offset, centre + offset  # the left eye is lower: head tilted
    for x, y in (right, left):
        cv2.circle(image, (int(round(x)), int(round(y))), 6, (0, 0, 0), -1)
    box = (150, 150, 100, 100)
    plain = PreprocessContract(levels=("a", "b"))
    aligned = PreprocessContract(levels=("a", "b"), detector=DetectorSpec(align=True))
    eyes = ((float(right[0]), float(right[1])), (float(left[0]), float(left[1])))

    def dot_rows(crop: np.ndarray) -> list[float]:
        dark = (crop[:, :, 0] < 80).astype(np.uint8)
        _, _, _, centroids = cv2.connectedComponentsWithStats(dark)
        return sorted(centroids[1:], key=lambda c: c[0])

    tilted = dot_rows(plain.crop_face(image, box, eyes))
    level = dot_rows(aligned.crop_face(image, box, eyes))
    assert len(tilted) == len(level) == 2
    assert abs(tilted[1][1] - tilted[0][1]) > 25  # unaligned: still tilted
    assert abs(level[1][1] - level[0][1]) < 1.5  # aligned: level
    assert aligned.crop_face(image, box, eyes).shape == plain.crop_face(image, box).shape
    assert np.array_equal(aligned.crop_face(image, box), plain.crop_face(image, box))


# -- recall on a small detection set -------------------------------------------------------
def test_detection_set_is_deterministic_and_has_known_truth(smiles_dir: Path) -> None:
    crops = load_face_crops(smiles_dir, limit=20)
    one = build_detection_set(crops, per_condition=1, seed=3)
    two = build_detection_set(crops, per_condition=1, seed=3)
    assert [f.condition for f in one] == list(CONDITIONS)
    assert all(np.array_equal(a.image, b.image) and a.boxes == b.boxes
               for a, b in zip(one, two, strict=True))
    assert {len(f.boxes) for f in one if f.condition == "no face"} == {0}
    assert max(len(f.boxes) for f in one) >= 3
    with pytest.raises(InputError, match="unknown detection condition"):
        build_detection_set(crops, conditions=["upside down"])


def test_blazeface_recall_on_a_small_detection_set(smiles_dir: Path) -> None:
    """The default detector finds most faces the set holds and not many that it does not;
    the full figures per condition are in benchmarks/RESULTS.md."""
    crops = load_face_crops(smiles_dir, limit=60)
    conditions = ["medium (80-140 px)", "rotated 20-30 deg", "dark", "several faces (3-4)",
                  "no face"]
    frames = build_detection_set(crops, per_condition=4, seed=11, conditions=conditions)
    with open_detector("blazeface-short", threads=1) as detector:
        (row,) = evaluate_detectors([detector], frames)
    assert row.overall.faces >= 25
    assert row.overall.recall is not None and row.overall.recall >= 0.85, row
    assert row.overall.false_positives <= 4, row
    assert row.conditions["no face"].faces == 0
    assert row.detect_ms is not None and row.detect_ms.p50 > 0
    assert row.name == "blazeface-short"


def test_a_face_that_fills_the_frame_is_found_by_the_farther_look(smiles_dir: Path) -> None:
    """Short range sees faces up to about half its input's long side: a 180-300 px face in a
    640x480 frame is at that edge at 320 px (measured: 35-38 of 40 found), all found at 192.
    The default looks again farther when the first look finds nothing."""
    crops = load_face_crops(smiles_dir, limit=40, seed=1)
    frames = build_detection_set(crops, per_condition=12, seed=1,
                                 conditions=["large (180-300 px)"])
    first_only = DetectorSpec(retry_sizes=())
    with open_detector("blazeface-short", threads=1) as default, \
            open_detector(first_only, threads=1) as single:
        assert default.retry_sides == DETECTORS["blazeface-short"].retry_sides
        assert default.retry_sides[0] < default.side  # farther first, then closer
        rows = evaluate_detectors([default, single], frames)
    found = {row.detector: row.overall.found for row in rows}
    assert rows[0].overall.recall is not None and rows[0].overall.recall >= 0.95, rows[0]
    assert rows[0].overall.found >= rows[1].overall.found, found
    assert rows[0].overall.false_positives <= rows[1].overall.false_positives + 1, rows
