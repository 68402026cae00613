"""The artifacts layer: one formats table, run/export folders as objects, one session loader,
one way to read a model's metadata, one stratified sampler."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_smw.artifacts import formats
from edge_smw.artifacts.folders import (
    ExportDir,
    RunDir,
    checkpoint_file,
    is_exported_model,
    quant_report_name,
    resolve_model_path,
)
from edge_smw.artifacts.sessions import SessionSettings, load_session, read_metadata
from edge_smw.data.datasets import LabelledImage, stratified_indices, stratified_items
from edge_smw.errors import InputError, ModelError
from edge_smw.metadata import ModelInfo, sidecar_path

REPO = Path(__file__).resolve().parents[1]


# -- the formats table ---------------------------------------------------------------------
def test_formats_table_is_consistent() -> None:
    keys = [f.key for f in formats.FORMATS]
    names = [f.file_name for f in formats.FORMATS]
    assert len(set(keys)) == len(keys) and len(set(names)) == len(names)
    for fmt in formats.FORMATS:
        assert fmt.suffix in (*formats.MODEL_SUFFIXES, ".pt")
        assert all(b in (*formats.BACKENDS, "torch-eager") for b in fmt.backends), fmt
    assert formats.int8_format("cpu").file_name == "model.int8.onnx"
    assert formats.int8_format("tensorrt").intended("tensorrt")
    assert not formats.int8_format("cpu").intended("onnxruntime-cuda")
    assert formats.FP32.intended("onnxruntime-cpu") and formats.FP32.intended("onnxruntime-cuda")
    assert not formats.FP16.intended("onnxruntime-cpu")
    assert formats.engine_format("int8").engine_name("orin") == "model.orin.int8.engine"
    assert formats.model_format("engine", "fp16", None) is formats.ENGINE_FP16
    assert [f.key for f in formats.offered_models()] == ["int8-cpu", "fp32", "fp16"]
    rows = formats.export_formats()
    assert {r["key"] for r in rows} == set(keys) and all("backends" in r for r in rows)
    with pytest.raises(KeyError):
        formats.int8_format("gpu")


def test_the_quantizer_names_its_files_from_the_table() -> None:
    pytest.importorskip("onnx")
    from edge_smw.export.quantize import Flavour

    assert {f.file_name for f in Flavour} == {formats.INT8_CPU.file_name,
                                              formats.INT8_TENSORRT.file_name}


# -- run and export folders ----------------------------------------------------------------
def test_is_exported_model_is_one_rule(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"x")
    (run / "model.onnx").write_bytes(b"x")  # a run folder with a stray model is still a run
    assert not is_exported_model(run)
    export = tmp_path / "export"
    export.mkdir()
    assert not is_exported_model(export)  # empty: nothing exported there
    (export / "model.int8.onnx").write_bytes(b"x")
    assert is_exported_model(export)
    assert is_exported_model(tmp_path / "m.engine") and is_exported_model(tmp_path / "m.plan")
    assert not is_exported_model(run / "checkpoint.pt")


def test_export_dir_offers_the_most_deployable_model(tmp_path: Path) -> None:
    folder = ExportDir(tmp_path)
    with pytest.raises(ModelError, match="holds no exported model"):
        folder.default_model()
    for name in ("model.fp16.onnx", "model.onnx", "model.int8-trt.onnx"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".export-staging.onnx").write_bytes(b"x")
    assert folder.default_model().name == "model.onnx"
    (tmp_path / "model.int8.onnx").write_bytes(b"x")
    assert resolve_model_path(tmp_path).name == "model.int8.onnx"
    assert [p.name for p in folder.model_files()] == [
        "model.fp16.onnx", "model.int8-trt.onnx", "model.int8.onnx", "model.onnx"]
    (tmp_path / "export.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelError, match="not valid JSON"):
        folder.read_export_json()
    (tmp_path / "export.json").write_text(json.dumps({"a": 1}), encoding="utf-8")
    assert folder.read_export_json() == {"a": 1}
    with pytest.raises(ModelError, match="expected an .onnx"):
        resolve_model_path(tmp_path / "export.json")


def _tiny_model(path: Path, checkpoint_sha256: str) -> Path:
    """An ONNX file with edge-smw metadata naming the checkpoint it was exported from."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from edge_smw.contract import PreprocessContract

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["probabilities"])], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    info = ModelInfo(PreprocessContract(levels=("a", "b"), input_size=16), "tiny",
                     checkpoint_sha256=checkpoint_sha256)
    helper.set_model_props(model, info.to_props())
    onnx.save_model(model, str(path))
    return path


def test_a_stale_model_of_an_earlier_export_is_refused(tmp_path: Path) -> None:
    """A model exported from another checkpoint than export.json says is never picked."""
    folder = ExportDir(tmp_path)
    _tiny_model(tmp_path / formats.FP32.file_name, "b" * 64)
    stale = _tiny_model(tmp_path / formats.INT8_CPU.file_name, "a" * 64)
    assert folder.default_model() == stale  # no export.json: nothing to check against
    folder.export_json.write_text(json.dumps({"source": {"checkpoint_sha256": "b" * 64}}),
                                  encoding="utf-8")
    assert folder.source_checkpoint() == "b" * 64
    with pytest.raises(ModelError, match=r"model.int8.onnx was exported from checkpoint "
                                         r"aaaaaaaaaaaa, .* from bbbbbbbbbbbb: it is a stale"):
        resolve_model_path(tmp_path)
    stale.unlink()
    assert folder.default_model().name == formats.FP32.file_name
    assert folder.model_info(tmp_path / formats.FP32.file_name).checkpoint_sha256 == "b" * 64


def test_remove_stale_keeps_this_exports_files_and_the_users(tmp_path: Path) -> None:
    names = [f.file_name for f in formats.FORMATS if f.kind == "onnx"]
    engine = formats.ENGINE_INT8.engine_name("orin")
    for name in [*names, engine, sidecar_path(tmp_path / engine).name, "mine.onnx",
                 "notes.txt", formats.CHECKPOINT.file_name, "export.json"]:
        (tmp_path / name).write_bytes(b"x")
    reports = [f"{quant_report_name('cpu')}.{suffix}" for suffix in ("json", "md", "png")]
    for name in reports:
        (tmp_path / name).write_bytes(b"x")
    folder = ExportDir(tmp_path)
    folder.calibration.mkdir()
    (folder.calibration / "crops.json").write_text("{}", encoding="utf-8")
    written = [formats.FP32.file_name, "export.json"]
    removed = folder.remove_stale(written)
    assert sorted(removed) == sorted([*names[1:], engine, engine + ".json", *reports,
                                      folder.calibration.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*written, "mine.onnx", "notes.txt", formats.CHECKPOINT.file_name])


def test_remove_stale_keeps_the_reports_and_calibration_this_export_wrote(
        tmp_path: Path) -> None:
    folder = ExportDir(tmp_path)
    folder.calibration.mkdir()
    kept = [formats.FP32.file_name, f"{quant_report_name('cpu')}.md", folder.calibration.name]
    for name in kept[:2]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / f"{quant_report_name('tensorrt')}.md").write_bytes(b"x")
    assert folder.remove_stale(kept) == [f"{quant_report_name('tensorrt')}.md"]
    assert folder.report_files() == [tmp_path / kept[1]] and folder.calibration.is_dir()


def test_run_dir_knows_its_files(tmp_path: Path) -> None:
    run = RunDir.of(tmp_path / "checkpoint.pt")
    assert run.path == tmp_path and run.checkpoint == tmp_path / "checkpoint.pt"
    assert RunDir.of(tmp_path).split == tmp_path / "split.json"
    assert run.find_split() is None
    run.split.write_text("{}", encoding="utf-8")
    assert run.find_split() == run.split
    assert checkpoint_file(tmp_path) == tmp_path / "checkpoint.pt"
    assert checkpoint_file(tmp_path / "other.pt") == tmp_path / "other.pt"


def test_no_module_spells_artifact_file_names() -> None:
    """File names live in the formats table and the folder objects, not in call sites."""
    names = ('"checkpoint.pt"', '"model.int8.onnx"', '"model.int8-trt.onnx"', '"export.json"',
             '"model.fp16.onnx"', '"split.json"', '"model.onnx"')
    offenders = []
    for path in (REPO / "edge_smw").rglob("*.py"):
        if path.parent.name == "artifacts":
            continue
        text = path.read_text(encoding="utf-8")
        offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n in text]
    assert not offenders, offenders


# -- the session loader --------------------------------------------------------------------
def test_session_settings_decide_every_option() -> None:
    import onnxruntime as ort

    options = SessionSettings(threads=1, spinning=False, optimization="none").options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spinning = SessionSettings(threads=1).options()  # spins inside a run, stops at its end
    assert spinning.get_session_config_entry("session.force_spinning_stop") == "1"
    plain = SessionSettings(threads=0).options()
    assert plain.intra_op_num_threads == 0  # onnxruntime's own default
    with pytest.raises(InputError, match="graph optimisation"):
        SessionSettings(optimization="max").options()


IDLE_PROBE = """
import sys, time
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from edge_smw.artifacts.sessions import SessionSettings

if sys.argv[1] == "edge-smw":
    options = SessionSettings(threads=2).options()
else:  # onnxruntime's defaults: spinning on, after the run too
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
weight = numpy_helper.from_array(np.ones((16, 16, 3, 3), np.float32), "w")
graph = helper.make_graph(
    [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 128, 128])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 128, 128])], [weight])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
session = ort.InferenceSession(model.SerializeToString(), options,
                               providers=["CPUExecutionProvider"])
feed = {"x": np.ones((1, 16, 128, 128), np.float32)}
for _ in range(3):
    session.run(None, feed)
start = time.process_time()
time.sleep(0.3)
print(time.process_time() - start)
"""


def _idle_cpu_seconds_after_a_run(settings: str) -> float:
    """CPU time a fresh process burns in the 0.3 s after a 2-thread session's last run (a
    process of its own: no other test's threads are counted)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", IDLE_PROBE, settings], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout.strip().splitlines()[-1])


def test_a_spinning_session_stops_spinning_when_its_run_returns() -> None:
    """Idle threads that keep spinning after a run steal the cores from the next model or
    the face detector (onnxruntime's default spins on: the control below)."""
    ours = _idle_cpu_seconds_after_a_run("edge-smw")
    spinning_on = _idle_cpu_seconds_after_a_run("onnxruntime")
    assert ours < 0.01, f"{ours:.3f} CPU seconds used by an idle session"
    assert spinning_on > ours + 0.005, (spinning_on, ours)  # the probe can see spinning


def test_no_module_builds_its_own_session() -> None:
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "edge_smw").rglob("*.py")
                 if p.parent.name != "artifacts"
                 and ("ort.InferenceSession(" in p.read_text(encoding="utf-8")
                      or "ort.SessionOptions(" in p.read_text(encoding="utf-8"))]
    assert not offenders, offenders


def test_model_info_from_file(smiles_onnx: Path, tmp_path: Path) -> None:
    info = ModelInfo.from_file(smiles_onnx)
    assert info.precision == "fp32" and info.contract.levels == ("not_smiling", "smiling")
    session = load_session(smiles_onnx, SessionSettings(threads=1))
    assert info.to_props()["edge_smw.contract"] == read_metadata(smiles_onnx)["edge_smw.contract"]
    assert session.get_inputs()[0].name == "input"
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(smiles_onnx.read_bytes()[:1000])
    with pytest.raises(ModelError, match="broken.onnx cannot be loaded"):
        ModelInfo.from_file(broken)
    with pytest.raises(ModelError, match="not found"):
        ModelInfo.from_file(tmp_path / "absent.onnx")
    engine = tmp_path / "model.gpu.fp16.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(ModelError, match="sidecar"):
        ModelInfo.from_file(engine)
    sidecar_path(engine).write_text(json.dumps(info.to_sidecar()), encoding="utf-8")
    assert ModelInfo.from_file(engine).contract == info.contract
    copy = tmp_path / "renamed.onnx"
    shutil.copyfile(smiles_onnx, copy)  # models are known by metadata, not by name
    assert ModelInfo.from_file(copy).checkpoint_sha256 == info.checkpoint_sha256


# -- one stratified sampler ----------------------------------------------------------------
def test_stratified_indices_proportional_deterministic_order_free() -> None:
    levels = [0] * 70 + [1] * 25 + [2] * 5
    keys = [f"{i:03d}.jpg" for i in range(100)]
    picked = stratified_indices(levels, 20, seed=3, keys=keys)
    assert len(picked) == 20 and len(set(picked)) == 20
    counts = np.bincount([levels[i] for i in picked], minlength=3)
    assert list(counts) == [14, 5, 1]
    assert picked == stratified_indices(levels, 20, seed=3, keys=keys)
    assert picked != stratified_indices(levels, 20, seed=4, keys=keys)
    # the same items in another order give the same choice
    perm = list(range(100))
    random.Random(0).shuffle(perm)
    again = stratified_indices([levels[i] for i in perm], 20, seed=3,
                               keys=[keys[i] for i in perm])
    assert sorted(keys[perm[i]] for i in again) == sorted(keys[i] for i in picked)
    assert stratified_indices(levels, 0) == list(range(100))
    assert sorted(stratified_indices(levels, 1000)) == list(range(100))  # more: all
    rare = stratified_indices([0] * 99 + [1], 10)
    assert 99 in rare  # every level keeps at least one
    items = [LabelledImage(Path(k), lvl) for k, lvl in zip(keys, levels, strict=True)]
    assert [str(i.path) for i in stratified_items(items, 20, seed=3)] == [keys[i]
                                                                         for i in picked]
