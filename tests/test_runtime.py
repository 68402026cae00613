"""The lean runtime on onnxruntime-cpu: parity with torch on real crops, threads, bad input.

The model is conftest's ``smiles_onnx`` (trained on real SMILEsmileD crops); frames with
faces are real crops given a border and pasted into a larger grey frame.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_smw.errors import BackendUnavailableError, InputError, ModelError
from edge_smw.runtime import FaceScore, Runtime, ScoreResult
from edge_smw.stats import wilson_interval
from tests.runtime_helpers import crops_by_level, detectable_frames, gradient
from tests.skips import skip_for_machine

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runtime(smiles_onnx: Path):
    """The crop-trained model, asked to find faces in frames (as a camera build would)."""
    with Runtime(smiles_onnx, backend="onnxruntime-cpu", threads=1, detect_faces=True) as rt:
        yield rt


@pytest.fixture(scope="module")
def crops(smiles_test_items) -> list[np.ndarray]:
    return crops_by_level(smiles_test_items, 12)


@pytest.fixture(scope="module")
def face_frames(smiles_test_items) -> list[np.ndarray]:
    paths = [item.path for item in smiles_test_items]
    return [frame for _, frame in detectable_frames(paths[:10] + paths[-10:], 2)]


# -- parity with the torch model ----------------------------------------------------------
def test_fp32_parity_with_torch(smiles_run: Path, smiles_onnx: Path, crops) -> None:
    torch = pytest.importorskip("torch")
    from edge_smw.train.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(smiles_run)
    with Runtime(smiles_onnx, backend="onnxruntime-cpu", detect_faces=False) as rt:
        assert rt.contract == checkpoint.contract  # the metadata carries the same contract
        assert rt.levels == checkpoint.levels
        faces = rt.score_batch(crops)
        raw = rt.infer(rt.contract.apply_batch(crops))
    model = checkpoint.build_model()
    with torch.no_grad():
        logits = model(torch.from_numpy(checkpoint.contract.apply_batch(crops)))
        reference = logits.softmax(dim=1).numpy().astype(np.float64)
    probs = np.stack([f.probabilities for f in faces])
    assert np.abs(probs - reference).max() <= 1e-4
    assert np.array_equal(probs.argmax(1), reference.argmax(1))
    assert np.abs(raw["probabilities"] - reference).max() <= 1e-4
    np.testing.assert_allclose(raw["logits"], logits.numpy(), rtol=1e-4, atol=1e-3)
    # both levels are really exercised, and the expected score is the weighted level
    assert len(set(probs.argmax(1))) == 2
    for face, p in zip(faces, probs, strict=True):
        assert face.expected_score == pytest.approx(1 * p[0] + 2 * p[1])
        assert face.level_name == rt.levels[face.level]


def test_int8_parity_with_torch(smiles_int8: Path, smiles_run: Path, smiles_test_items) -> None:
    """INT8 through the runtime picks torch's level on held-out real crops."""
    torch = pytest.importorskip("torch")
    int8_model = smiles_int8
    from edge_smw.train.checkpoint import load_checkpoint

    crops = crops_by_level(smiles_test_items, 50)
    checkpoint = load_checkpoint(smiles_run)
    with Runtime(int8_model, backend="onnxruntime-cpu", detect_faces=False) as rt:
        assert rt.info.precision == "int8" and rt.contract == checkpoint.contract
        probs = np.stack([f.probabilities for f in rt.score_batch(crops)])
    with torch.no_grad():
        logits = checkpoint.build_model()(torch.from_numpy(checkpoint.contract.apply_batch(crops)))
    reference = logits.softmax(dim=1).numpy()
    # A claim on ~90 crops: the agreement must not be shown to fall below the export gate's
    # 98% (the upper end of its 95% Wilson interval reaches 98%: of 90, 4 differing pass, 5 fail).
    agree = int(np.sum(probs.argmax(1) == reference.argmax(1)))
    low, high = wilson_interval(agree, len(crops))
    assert high >= 0.98, f"{agree}/{len(crops)} agree (95% interval {low:.3f}-{high:.3f})"


def test_score_batch_is_one_batched_call_equal_to_single_crops(runtime: Runtime, crops) -> None:
    calls = []
    infer = runtime.runner.infer
    runtime.runner.infer = lambda x: (calls.append(x.shape[0]), infer(x))[1]
    try:
        batch = runtime.score_batch(crops[:6])
    finally:
        del runtime.runner.infer
    assert calls == [6]
    for face, crop in zip(batch, crops[:6], strict=True):
        single = runtime.score_crop(crop)
        np.testing.assert_allclose(face.probabilities, single.probabilities, atol=1e-5)
        assert face.box is None


def test_score_finds_faces_in_frames_and_none_in_a_gradient(runtime: Runtime,
                                                            face_frames) -> None:
    result = runtime.score(face_frames[0])
    assert isinstance(result, ScoreResult) and len(result.faces) >= 1
    face = result.faces[0]
    x, y, w, h = face.box
    assert 96 - 40 <= y and y + h <= 96 + 288 + 40 and 176 - 40 <= x  # where it was pasted
    assert face.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert set(result.timings) == {"detect", "preprocess", "infer", "total"}
    assert result.frame_shape == face_frames[0].shape
    data = json.loads(json.dumps(result.to_dict()))
    assert data["faces"][0]["level"] in runtime.levels
    assert runtime.score(gradient()).faces == []
    # the same frame in RGB and in gray (a gray frame gives the gray-converted crop's score)
    rgb = runtime.score(np.ascontiguousarray(face_frames[0][..., ::-1]), color="rgb")
    np.testing.assert_array_equal(rgb.faces[0].probabilities, face.probabilities)
    gray = face_frames[0][..., 0]
    assert len(runtime.score(gray, color="gray").faces) >= 1


def test_detection_can_follow_how_the_model_was_trained(smiles_onnx: Path, crops) -> None:
    with Runtime(smiles_onnx, backend="onnxruntime-cpu", threads=1, detect_faces=None) as rt:
        assert rt.info.detect is False and rt.detect is False  # trained on face crops
        result = rt.score(crops[0])  # a 64x64 crop Haar cannot find a face in
    assert len(result.faces) == 1 and result.faces[0].box == (0, 0, 64, 64)
    with Runtime(smiles_onnx, backend="onnxruntime-cpu", threads=1) as rt:
        assert rt.detect is True  # by default a frame holds faces to find (a camera)


def test_no_detect_scores_the_whole_frame(smiles_onnx: Path, crops) -> None:
    with Runtime(smiles_onnx, backend="onnxruntime-cpu", threads=1, detect_faces=False) as rt:
        result = rt.score(crops[0])
        single = rt.score_crop(crops[0])
    assert len(result.faces) == 1 and result.faces[0].box == (0, 0, 64, 64)
    np.testing.assert_array_equal(result.faces[0].probabilities, single.probabilities)


def test_feature_map_output(runtime: Runtime, crops) -> None:
    face = runtime.score_crop(crops[0], feature_map=True)
    assert face.feature_map is not None and face.feature_map.ndim == 3
    assert runtime.info.has_feature_map and runtime.info.head_weight is not None
    assert isinstance(face, FaceScore)


def test_buffers_are_reused_per_thread(runtime: Runtime, crops) -> None:
    runtime.score_batch(crops[:3])
    first = runtime._local.inputs
    runtime.score_crop(crops[0])
    runtime.score_batch(crops[:2])
    assert runtime._local.inputs is first  # no new buffer for smaller batches


# -- threads ----------------------------------------------------------------------------
def test_eight_threads_sharing_one_runtime_match_one_thread(runtime: Runtime, crops,
                                                            face_frames) -> None:
    def work(k: int) -> list[np.ndarray]:
        out = [f.probabilities for f in runtime.score(face_frames[k % 2]).faces]
        out += [f.probabilities for f in runtime.score_batch(crops[k : k + 1 + k % 4])]
        out.append(runtime.score_crop(crops[-1 - k]).probabilities)
        return out

    expected = [work(k) for k in range(8)]
    got: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def thread(k: int) -> None:
        try:
            barrier.wait()
            for _ in range(2):
                got[k] = work(k)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=thread, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k in range(8):
        assert len(got[k]) == len(expected[k])
        for a, b in zip(got[k], expected[k], strict=True):
            np.testing.assert_array_equal(a, b)


# -- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize(("frame", "color", "words"), [
    (np.zeros((64, 64, 3), np.float32), "bgr", "uint8"),
    (np.zeros((64, 64, 5), np.uint8), "bgr", "shape"),
    (np.zeros((2, 64, 64, 3), np.uint8), "bgr", "shape"),
    (np.zeros((0, 0, 3), np.uint8), "bgr", "empty"),
    (np.zeros((64, 0), np.uint8), "gray", "empty"),
    (np.zeros((64, 64, 3), np.uint8), "hsv", "color"),
    (np.zeros((64, 64, 3), np.uint8), "gray", "gray"),
    ([[0, 1], [2, 3]], "bgr", "numpy"),
])
def test_bad_frames_raise_input_error(runtime: Runtime, frame, color, words) -> None:
    with pytest.raises(InputError, match=words):
        runtime.score(frame, color=color)
    with pytest.raises(InputError):
        runtime.score_crop(frame, color=color)


def test_bad_crop_in_a_batch_is_named(runtime: Runtime, crops) -> None:
    with pytest.raises(InputError, match="crop 1"):
        runtime.score_batch([crops[0], crops[1].astype(np.float64)])
    with pytest.raises(InputError, match="score_crop"):
        runtime.score_batch(crops[0])
    assert runtime.score_batch([]) == []
    assert len(runtime.score_batch(np.stack(crops[:3]))) == 3


def test_bad_infer_inputs_raise_input_error(runtime: Runtime, crops) -> None:
    good = runtime.contract.apply_batch(crops[:2])
    size = runtime.contract.input_size
    nan = good.copy()
    nan[1, 0, 5, 5] = np.nan
    inf = good.copy()
    inf[0, 2, 0, 0] = np.inf
    minus_inf = good.copy()
    minus_inf[1, 1, 3, 3] = -np.inf
    cases = [
        (good.astype(np.float64), "dtype float64"),
        (good.astype(np.uint8), "dtype uint8"),
        (good[0], "shape"),
        (np.zeros((1, 3, 32, 32), np.float32), f"3, {size}, {size}"),
        (np.zeros((1, size, size, 3), np.float32), "shape"),
        (np.zeros((0, 3, size, size), np.float32), "empty batch"),
        (nan, "NaN"),
        (inf, "NaN/infinite"),
        (minus_inf, "1 NaN/infinite"),
        (good.tolist(), "numpy"),
    ]
    for value, words in cases:
        with pytest.raises(InputError, match=words):
            runtime.infer(value)
    out = runtime.infer(good)
    assert set(out) >= {"probabilities", "logits"} and out["probabilities"].shape == (2, 2)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"backend": "pytorch"}, "unknown backend"),
    ({"backend": "onnxruntime-metal"}, "unknown onnxruntime provider"),
    ({"threads": 0}, "threads"),
    ({"max_faces": 0}, "max_faces"),
    ({"device": -1}, "device"),
    ({"backend_options": {"trt_fp61": True}}, "trt_fp61"),
    ({"detect_faces": "no"}, "detect_faces must be True, False or None"),
    ({"detect_faces": False, "detector": "bogus"}, "unknown face detector 'bogus'"),
    ({"detect_faces": None, "detector": "bogus"}, "unknown face detector 'bogus'"),
])
def test_bad_settings_raise_input_error(smiles_onnx: Path, kwargs, words) -> None:
    with pytest.raises(InputError, match=words):
        Runtime(smiles_onnx, warmup=False, **{"backend": "onnxruntime-cpu", **kwargs})


def test_no_model_path_is_an_input_error() -> None:
    with pytest.raises(InputError, match="model_path must be the path"):
        Runtime(None)  # type: ignore[arg-type]


def test_auto_names_the_backend_it_chose_for_unknown_options(smiles_onnx: Path) -> None:
    """Not the first backend it tried (onnxruntime-tensorrt, absent on a CPU machine)."""
    with Runtime(smiles_onnx, warmup=False, threads=1) as chosen:
        backend = chosen.backend
    with pytest.raises(InputError, match="does not take option") as info:
        Runtime(smiles_onnx, warmup=False, threads=1, backend_options={"foo": 1})
    message = str(info.value)
    assert f"backend {backend!r} does not take" in message
    assert f"'auto' chose {backend!r}" in message


def test_missing_gpu_providers_are_backend_unavailable(smiles_onnx: Path, caplog) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        skip_for_machine("this onnxruntime has the CUDA provider; covered on GPU machines")
    with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
        Runtime(smiles_onnx, backend="onnxruntime-cuda")
    with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
        Runtime(smiles_onnx, backend="onnxruntime-tensorrt")
    from edge_smw.runtime import runtime as runtime_module

    runtime_module._CHOICES_LOGGED.clear()
    caplog.set_level("INFO", logger="edge_smw.runtime")
    with Runtime(smiles_onnx, threads=1, warmup=False) as rt:  # auto falls back quietly...
        assert rt.backend == "onnxruntime-cpu"
    assert "auto ->" not in caplog.text
    runtime_module._CHOICES_LOGGED.clear()
    caplog.set_level("DEBUG", logger="edge_smw.runtime")
    for _ in range(3):  # ...and says why once per process, at DEBUG (-v)
        with Runtime(smiles_onnx, threads=1, warmup=False):
            pass
    assert caplog.text.count("auto -> onnxruntime-cpu") == 1
    assert "TensorrtExecutionProvider" in caplog.text


# -- bad model files ----------------------------------------------------------------------
def _tiny_onnx(path: Path, *, side: int, classes: int, props: dict[str, str],
               input_name: str = "input", output_name: str = "probabilities") -> Path:
    """A small real ONNX network (mean over pixels -> softmax) with chosen I/O and metadata."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 3, side, side])
    y = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", classes])
    weight = helper.make_tensor("w", TensorProto.FLOAT, [3, classes], [0.1] * (3 * classes))
    nodes = [
        helper.make_node("GlobalAveragePool", [input_name], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["z"]),
        helper.make_node("Softmax", ["z"], [output_name], axis=1),
    ]
    graph = helper.make_graph(nodes, "tiny", [x], [y], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save_model(model, str(path))
    return path


def test_bad_model_files_raise_model_error(smiles_onnx: Path, runtime: Runtime,
                                           tmp_path: Path) -> None:
    data = smiles_onnx.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    checkpoint = tmp_path / "head.pt"
    checkpoint.write_bytes(b"\x80\x04")
    (tmp_path / "empty_export").mkdir()
    props = runtime.runner.metadata()
    size = runtime.contract.input_size
    cases = [
        (tmp_path / "missing.onnx", "not found; give an export folder or the .onnx"),
        (truncated, "truncated"),
        (text, "not an ONNX model"),
        (empty, "empty"),
        (checkpoint, "edge-smw export"),
        (tmp_path / "empty_export", "no exported model"),
        (_tiny_onnx(tmp_path / "plain.onnx", side=size, classes=2, props={}),
         "no edge-smw metadata"),
        (_tiny_onnx(tmp_path / "renamed.onnx", side=size, classes=2, props=props,
                    input_name="images"), "not 'input'"),
        (_tiny_onnx(tmp_path / "scores.onnx", side=size, classes=2, props=props,
                    output_name="scores"), "no 'probabilities'"),
        (_tiny_onnx(tmp_path / "small.onnx", side=32, classes=2, props=props),
         "another model"),
        (_tiny_onnx(tmp_path / "three.onnx", side=size, classes=3, props=props),
         "does not match"),
    ]
    for path, words in cases:
        with pytest.raises(ModelError, match=words) as info:
            Runtime(path, backend="onnxruntime-cpu", threads=1)
        assert path.name in str(info.value)


def test_a_real_network_with_its_metadata_loads(runtime: Runtime, tmp_path: Path) -> None:
    """The tiny network of the failure cases does run when its I/O matches (no false alarms)."""
    size = runtime.contract.input_size
    path = _tiny_onnx(tmp_path / "tiny.onnx", side=size, classes=2,
                      props=runtime.runner.metadata())
    with Runtime(path, backend="onnxruntime-cpu", threads=1, detect_faces=False) as rt:
        face = rt.score(gradient())
    assert face.faces[0].probabilities.sum() == pytest.approx(1.0, abs=1e-5)


def test_export_folder_and_closed_runtime(smiles_onnx: Path, crops) -> None:
    rt = Runtime(smiles_onnx.parent, backend="onnxruntime-cpu", threads=1)
    assert rt.path == smiles_onnx and "onnxruntime-cpu" in repr(rt)
    rt.close()
    rt.close()  # idempotent
    assert rt.closed and "closed" in repr(rt)
    with pytest.raises(ModelError, match="closed"):
        rt.score_crop(crops[0])


# -- lean: no torch -----------------------------------------------------------------------
_NO_TORCH = r"""
import importlib.abc, json, sys

attempted = []  # every import of torch & co. tried, even one a caller caught and let go

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm"):
            attempted.append(name)
            raise ImportError(f"blocked import of {name}")
        return None

sys.meta_path.insert(0, Block())
import edge_smw
from edge_smw.images import read_image
model, crop_path = sys.argv[1], sys.argv[2]
with edge_smw.Runtime(model, backend="onnxruntime-cpu", threads=1, detect_faces=False) as rt:
    result = rt.score(read_image(crop_path))
import numpy as np
with edge_smw.Runtime(model, backend="onnxruntime-cpu", threads=1, detect_faces=True) as rt:
    assert rt.detector.name == "blazeface-short", rt.detector
    rt.score(np.full((240, 320, 3), 128, np.uint8))
import contextlib, io
from edge_smw.cli.main import main
import edge_smw.rank
with contextlib.redirect_stdout(io.StringIO()) as cli_out:
    code = main(["score", model, crop_path, "--no-detect", "--json", "--threads", "1"])
print(json.dumps({"result": result.to_dict(), "attempted": attempted, "code": code,
                  "cli": [json.loads(line) for line in cli_out.getvalue().splitlines()]}))
"""


def test_runtime_and_cli_run_where_torch_cannot_be_imported(smiles_onnx: Path,
                                                             smiles_test_items) -> None:
    crop = str(smiles_test_items[0].path)
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, str(smiles_onnx), crop],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["attempted"] == [] and out["code"] == 0
    assert len(out["result"]["faces"]) == 1
    assert out["cli"][0]["probabilities"] == out["result"]["faces"][0]["probabilities"]


def test_importing_edge_smw_imports_no_torch() -> None:
    code = ("import sys, edge_smw; edge_smw.Runtime; import edge_smw.runtime.backends.tensorrt;"
            "import edge_smw.rank, edge_smw.cli.score, edge_smw.cli.rank;"
            "import edge_smw.detect.blazeface, edge_smw.detect.haar, edge_smw.bench.detection;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'torchvision', 'timm')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# -- face detectors -------------------------------------------------------------------------
def test_runtime_scores_frames_with_each_detector(smiles_onnx: Path, face_frames,
                                                  tmp_path: Path) -> None:
    from edge_smw.detect import DETECTORS

    own_file = tmp_path / "detector.onnx"  # a detector given as a file
    own_file.write_bytes(DETECTORS["blazeface-short"].path.read_bytes())
    found = {}
    for detector in ("haar", "blazeface-short", str(own_file)):
        with Runtime(smiles_onnx, backend="onnxruntime-cpu", threads=1, detect_faces=True,
                     detector=detector) as rt:
            faces = [f for frame in face_frames for f in rt.score(frame).faces]
            found[detector] = faces
            expected_backend = "opencv" if detector == "haar" else "onnxruntime-cpu"
            assert rt.detector.backend == expected_backend
        assert faces, detector
        for face in faces:
            assert face.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert all(f.landmarks is None for f in found["haar"])
    dnn = found["blazeface-short"][0]
    assert set(dnn.landmarks) >= {"right_eye", "left_eye", "mouth"}
    assert 0.55 <= dnn.to_dict()["detection_score"] <= 1.0
    # the same network from a file: decoded by its own metadata, at its trained size
    assert all(set(f.landmarks) == set(dnn.landmarks) for f in found[str(own_file)])


def _with_contract(source: Path, target: Path, *, trained_detect: bool, old: bool) -> Path:
    """A copy of ``source`` whose metadata says how it was trained (an older edge-smw's
    contract has no detector field: its crops came from Haar)."""
    import onnx

    from edge_smw.metadata import ModelInfo

    model = onnx.load(str(source))
    props = {p.key: p.value for p in model.metadata_props}
    info = ModelInfo.from_props(props)
    info.extra["detect"] = trained_detect
    props = info.to_props()
    if old:
        contract = json.loads(props["edge_smw.contract"])
        del contract["detector"]
        contract["version"] = 1
        props["edge_smw.contract"] = json.dumps(contract)
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(target))
    return target


def test_a_model_trained_on_haar_crops_refuses_another_detector(smiles_onnx: Path, face_frames,
                                                                tmp_path: Path,
                                                                caplog) -> None:
    import logging

    old = _with_contract(smiles_onnx, tmp_path / "old.onnx", trained_detect=True, old=True)
    with Runtime(old, backend="onnxruntime-cpu", threads=1) as rt:  # auto: its own, Haar
        assert rt.contract.detector.name == "haar" and rt.detector.name == "haar"
    with pytest.raises(InputError, match="trained on crops from the haar face detector.*"
                                         "allow_detector_mismatch"):
        Runtime(old, backend="onnxruntime-cpu", threads=1, detector="blazeface-short")
    with caplog.at_level(logging.WARNING, logger="edge_smw.runtime"):
        with Runtime(old, backend="onnxruntime-cpu", threads=1, detector="blazeface-short",
                     allow_detector_mismatch=True) as rt:
            assert rt.detector.name == "blazeface-short" and rt.score(face_frames[0]).faces
    assert any("allowed" in r.getMessage() for r in caplog.records)
    # trained on whole crops (--no-detect): any detector serves it, nothing to warn about
    crops = _with_contract(smiles_onnx, tmp_path / "crops.onnx", trained_detect=False, old=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edge_smw.runtime"):
        with Runtime(crops, backend="onnxruntime-cpu", threads=1, detect_faces=True,
                     detector="blazeface-short") as rt:
            assert rt.detector.name == "blazeface-short"
    assert not [r.getMessage() for r in caplog.records if "detector" in r.getMessage()]


def test_tensorrt_options_are_refused_where_they_would_do_nothing(smiles_onnx: Path) -> None:
    """trt_fp16 on the CPU provider used to be accepted and ignored."""
    with pytest.raises(InputError, match=r"does not take option\(s\) \['trt_fp16'\]") as info:
        Runtime(smiles_onnx, backend="onnxruntime-cpu", warmup=False,
                backend_options={"trt_fp16": True})
    assert "trt_" not in str(info.value).split("it takes", 1)[1]
    with Runtime(smiles_onnx, backend="onnxruntime-cpu", warmup=False,
                 backend_options={"allow_spinning": False}) as runtime:
        assert runtime.backend == "onnxruntime-cpu"
    from edge_smw.runtime.backends import open_runner

    runner = open_runner("onnxruntime-tensorrt", smiles_onnx, options={"trt_fp16": True})
    assert runner.trt_fp16 is True  # created only: this machine need not have TensorRT
