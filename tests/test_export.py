"""``edge-smw export`` end to end on models trained on real face crops.

- one shared export of the conftest run (fp32 + both INT8 flavours + FP16 + report), forced
  through the gates so the files can be inspected whatever the figures on 90 crops;
- the acceptance export, unforced, on a bigger run (600 crops per level): both INT8 flavours
  must agree with torch on >= 98% of the run's *test* crops and lose <= 1 point of accuracy;
- the command's robustness: bad checkpoints, folders, calibration sets, interruptions.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install edge-smw[train])")

import onnx  # noqa: E402

from edge_smw.errors import GateFailure, InputError, ModelError  # noqa: E402
from edge_smw.export.int8 import OTHER_CORRECTION, OTHER_START, TUNING  # noqa: E402
from edge_smw.export.layout import STEP as LAYOUT_STEP  # noqa: E402
from edge_smw.export.pipeline import export_model  # noqa: E402
from edge_smw.export.settings import ExportSettings  # noqa: E402
from tests.skips import machine_reason  # noqa: E402

FAST = {"latency_runs": 3}


def int8_metadata(path: Path) -> dict:
    """The ``int8`` settings an exported model's metadata states."""
    props = {p.key: p.value for p in onnx.load_model(str(path)).metadata_props}
    return json.loads(props["edge_smw.info"])["extra"]["int8"]


@pytest.fixture(scope="module")
def exported(smiles_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "out"
    export_model(smiles_run, out, ExportSettings(int8=True, fp16=True, report=True, calib_size=64,
                                                 max_mixed_steps=2, equalize=True,
                                                 equalize_clipped=True,
                                                 tune=True, tune_crops=64, tune_epochs=1,
                                                 tune_ranges=True, centre_activations=True,
                                                 target_agreement=1.0,
                                                 force=True, **FAST),
                 progress=False)
    return out


@pytest.fixture(scope="module")
def summary(exported: Path) -> dict:
    return json.loads((exported / "export.json").read_text())


def test_writes_every_file(exported: Path) -> None:
    names = {p.name for p in exported.iterdir()}
    assert {"model.onnx", "model.int8.onnx", "model.int8-trt.onnx", "model.fp16.onnx",
            "export.json", "calibration", "quant_report.cpu.md", "quant_report.cpu.json",
            "quant_report.cpu.png", "quant_report.tensorrt.md"} <= names
    assert not [n for n in names if n.startswith(".")]  # no staging or temporary files left
    assert {"calibration.flatbuffers", "calibration.cache", "calibration.json", "ranges.json",
            "crops.json"} <= {p.name for p in (exported / "calibration").iterdir()}


def test_fp32_matches_torch(summary: dict) -> None:
    fp32 = summary["models"]["fp32"]
    assert fp32["parity"]["max_abs_prob_diff"] <= 1e-4
    assert fp32["parity"]["top1_agreement"] == 1.0 and fp32["gate"]["passed"]
    assert fp32["parity"]["n"] == summary["parity_data"]["count"] >= 80


def test_onnx_is_one_checked_file_with_dynamic_batch(exported: Path) -> None:
    model = onnx.load_model(str(exported / "model.onnx"), load_external_data=False)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.dim_value
    assert [o.name for o in model.graph.output] == ["probabilities", "logits"]
    assert not [p for p in exported.iterdir() if p.suffix == ".data"]


def test_metadata_round_trips(exported: Path, smiles_run: Path, summary: dict) -> None:
    from edge_smw.metadata import ModelInfo
    from edge_smw.train.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(smiles_run)
    calib_sha = summary["int8"]["calibration"]["crops_sha256"]
    for name, precision, flavour in [("model.onnx", "fp32", None),
                                     ("model.int8.onnx", "int8", "cpu"),
                                     ("model.int8-trt.onnx", "int8", "tensorrt"),
                                     ("model.fp16.onnx", "fp16", None)]:
        model = onnx.load_model(str(exported / name))
        info = ModelInfo.from_props({p.key: p.value for p in model.metadata_props})
        assert info.contract == checkpoint.contract
        assert info.levels == checkpoint.levels
        assert info.checkpoint_sha256 == checkpoint.sha256
        assert info.backbone == checkpoint.backbone
        assert info.precision == precision and info.flavour == flavour
        assert info.metrics == checkpoint.metrics
        assert info.calibration_sha256 == (calib_sha if precision == "int8" else None)
        assert info.extra["detect"] == checkpoint.detect


def test_runtime_needs_only_the_onnx(exported: Path, tmp_path: Path,
                                     smiles_test_items: list) -> None:
    from edge_smw.images import read_image
    from edge_smw.runtime import Runtime

    for name in ("model.onnx", "model.int8.onnx"):
        alone = tmp_path / name
        shutil.copy(exported / name, alone)
        with Runtime(alone, backend="onnxruntime-cpu", detect_faces=False) as runtime:
            face = runtime.score(read_image(smiles_test_items[0].path)).faces[0]
        assert face.level_name in ("not_smiling", "smiling")
        assert abs(float(face.probabilities.sum()) - 1.0) < 1e-4


def rounding_convs(info: dict) -> int:
    """Every Conv the quantizer made int8 before mixed precision put any back in float."""
    return info["qdq"]["int8_convs"] + len(info["qdq"]["float_convs"])


def test_int8_figures_and_steps_recorded(exported: Path, summary: dict) -> None:
    int8 = summary["int8"]
    assert int8["calibration"]["crops"] == 64 and len(int8["calibration"]["paths"]) == 64
    for flavour in ("cpu", "tensorrt"):
        info = int8["flavours"][flavour]
        steps = info["steps"]
        chain = ["naive static int8 (float tail kept)", "exact input grid",
                 "one quantizer per Conv and activation", "range equalization",
                 "clipped range equalization", "learned rounding", "centred activations",
                 "bias correction", "quantization-aware tuning", OTHER_START]
        if flavour == "tensorrt":  # corrected on both sides of the centring choice
            chain.insert(8, OTHER_CORRECTION)
        assert [s["step"] for s in steps[:len(chain)]] == chain
        step = {s["step"]: s for s in steps[:len(chain)]}
        if flavour == "cpu":  # its uint8 activations have zero points: nothing to do
            assert all(steps[k]["note"].startswith("skipped") for k in (2, 6))
        else:  # every ReLU6 of Lite0 but the pooled last one
            centring = step["centred activations"]["centring"]
            assert centring["tensors"] > 20 and centring["padded_readers"] > 10
            corrected = step["bias correction"], step[OTHER_CORRECTION]
            centred = step["centred activations"]["kept"]
            assert corrected[0]["centred"] is centred is not corrected[1]["centred"]
        tuning = step[TUNING]["tuning"]  # every int8 Conv, one pass over 64 training crops
        assert tuning["convs"] == rounding_convs(info) and tuning["crops"] == 64
        assert len(tuning["logit_mse_per_pass"]) == 2
        assert tuning["activation_scales"]["learned"] > 10  # --tune-ranges
        # Lite0: one linear stream per stage (25 tensors), on the calibration crops; then, a
        # row of its own, 32 ReLU6 outputs (a Conv's and its Clip's) on the tuning crops
        for name, kind, streams, tensors in (("range equalization", "linear", 7, 25),
                                             ("clipped range equalization", "clipped", 32, 64)):
            equalization = step[name]["equalization"]
            assert (equalization["kind"], equalization["streams"]) == (kind, streams)
            assert equalization["tensors"] == tensors and equalization["crops"] == 64
            assert (equalization["range_spread_after_median"]
                    < equalization["range_spread_before_median"])
        # every int8 Conv, from the 64 calibration crops
        rounding = step["learned rounding"]["rounding"]
        assert rounding["convs"] == rounding_convs(info)
        assert rounding["crops"] == 64 and rounding["output_error_vs_nearest_median"] < 1
        # tuning starts from both bias-correction choices: the kept one, then the other
        tuned, other = step[TUNING], step[OTHER_START]
        assert other["agreement"] is not None
        corrected = any(s["kept"] for s in steps if "correction" in s)
        assert tuned["bias_correction"] is corrected is not other["bias_correction"]
        # a step of the chain is kept only when it helps: fewer flips expected than before
        kept = [s["expected_flips"] for s in steps[:len(chain)] if s["kept"]]
        assert kept == sorted(kept, reverse=True) and len(set(kept)) == len(kept), kept
        assert info["latency_ms_p50"] > 0 and info["fp32_latency_ms_p50"] > 0
        rounds = info["speed_rounds"]  # the kept model, timed again in five rounds
        assert rounds["runs_per_round"] == 3 and len(rounds["ratios"]) == 5
        assert min(rounds["ratios"]) <= info["speedup_vs_fp32"] <= max(rounds["ratios"])
        model = summary["models"][f"int8-{flavour}"]
        parity = model["parity"]
        assert parity["n"] >= 80 and "accuracy_delta" in parity
        low, high = parity["top1_agreement_interval"]
        assert low <= parity["top1_agreement"] <= high
        gate = model["gate"]
        assert gate["min_top1_agreement"] == 0.97 and "Wilson" in gate["method"]
        assert gate["outcome"] in ("pass", "fail", "not judged") and "Wilson" in gate["claim"]
        # the claim is judged as the best of every model this flavour measured
        assert gate["models_compared"] == len(
            [s for s in info["steps"] if s["agreement"] is not None]) > 1
        assert gate["interval"][0] < low and "Bonferroni" in gate["method"]
    # cpu flavour, last: laid out for onnxruntime's kernels (exact): the global pool read
    # channels-last, the stem padded when it is int8
    layout = int8["flavours"]["cpu"]["steps"][-1]
    assert layout["step"] == LAYOUT_STEP and layout["kept"] and layout["max_change"] <= 1e-6
    assert LAYOUT_STEP not in [s["step"] for s in int8["flavours"]["tensorrt"]["steps"]]
    assert layout["pool"]["pool"]
    claimed = int8_metadata(exported / "model.int8.onnx")["stem_input_channels"]
    if isinstance(layout["stem"], dict):
        assert layout["stem"]["input_channels"] == claimed == [3, 4]
    else:
        assert layout["stem"].startswith("skipped: the first Conv's weights are float")
        assert claimed is None
    # the target (1.0) is not met: mixed precision tried at most two blocks in each flavour
    for info in int8["flavours"].values():
        assert 1 <= len([s for s in info["steps"] if s["step"].startswith("float")]) <= 2
    assert summary["int8"]["flavours"]["cpu"]["settings"]["activation_type"] == "QUInt8"
    assert summary["int8"]["flavours"]["tensorrt"]["qdq"]["all_zero_points_zero"]
    assert summary["versions"]["onnxruntime"] and summary["machine"]["machine"]


def test_fp16_keeps_float32_io(exported: Path, summary: dict) -> None:
    model = onnx.load_model(str(exported / "model.fp16.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
               for o in model.graph.output)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    parity = summary["models"]["fp16"]["parity"]
    assert parity["top1_agreement"] >= 0.97 and parity["max_abs_prob_diff"] < 0.05


def test_quant_report_cli(exported: Path, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    from edge_smw.cli.main import main

    assert main(["quant-report", str(exported), "--crops", "8", "--out", str(tmp_path),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "cpu flavour" in out and "tensorrt flavour" in out
    data = json.loads((tmp_path / "quant_report.cpu.json").read_text())
    sqnr = [t["local_sqnr_db"] for t in data["tensors"]]
    assert sqnr == sorted(sqnr) and data["tensors"][0]["tensor"] in out


# -- the acceptance bar, on a bigger run -------------------------------------------------------
@pytest.fixture(scope="module")
def big_run(smiles_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 real crops per level: 180 validation and 180 test crops (the export gates on the
    former; the acceptance test adds unseen shared crops to the latter)."""
    from edge_smw.data.datasets import load_dataset
    from edge_smw.data.sources import DataSource
    from edge_smw.train.pipeline import TrainOptions, train_run

    out = tmp_path_factory.mktemp("big_run")
    dataset = load_dataset(smiles_dir, levels=("not_smiling", "smiling"))
    train_run(DataSource(dataset, True, "smiles-share"), out,
              TrainOptions(max_per_level=600, compare_losses=False, progress=False,
                           lrs=(0.003, 0.01), momenta=(0.0, 0.9)))
    return out


def unseen_items(run: Path, smiles_dir: Path, levels: tuple[str, ...], count: int) -> list:
    """``count`` shared crops the run never used (in none of its splits), drawn at random
    with a fixed seed: held-out crops beyond the run's own test split."""
    import random

    from edge_smw.data.datasets import SPLITS
    from edge_smw.export.crops import find_split, folder_items, split_items

    split = find_split(run)
    used = {i.path.resolve() for name in SPLITS
            for i in split_items(split, name, levels)}
    items = [i for i in folder_items(smiles_dir, levels) if i.path.resolve() not in used]
    random.Random(0).shuffle(items)
    return items[:count]


@pytest.mark.slow
def test_int8_keeps_its_accuracy_on_the_test_split(big_run: Path, smiles_dir: Path,
                                                   tmp_path: Path) -> None:
    from edge_smw.export.crops import find_split, load_crops, split_items
    from edge_smw.export.parity import compare, runtime_probabilities, torch_probabilities
    from edge_smw.train.checkpoint import load_checkpoint

    out = tmp_path / "export"
    # Default settings but the weight width of the CPU this runs on (8-bit with VNNI, 7-bit
    # without, as before --target-cpu). The figures are checked on the run's test split plus
    # 1,500 shared crops the run never saw (1,680 crops: one flip is 0.06 points; on the 180
    # test crops alone it was 0.56 and a bar one flip from the measured figure).
    result = export_model(big_run, out, ExportSettings(int8=True, calib_size=128,
                                                       target_cpu="build-machine", **FAST),
                          progress=False)
    assert not result.forced
    summary = json.loads((out / "export.json").read_text())
    checkpoint = load_checkpoint(big_run)
    contract = checkpoint.contract
    items = (split_items(find_split(big_run), "test", contract.levels)
             + unseen_items(big_run, smiles_dir, contract.levels, 1500))
    held_out = load_crops(items, contract, detect=checkpoint.detect, source="held out",
                          progress=False)
    reference = torch_probabilities(checkpoint.build_model(), held_out, contract,
                                    progress=False)
    # cpu flavour: 98% (measured 98.5% on 3,000 unseen crops, AVX2-only EPYC). tensorrt
    # flavour: the claim its gate makes on the validation split (the lower end of a 95%
    # interval at 97%) holds on unseen crops; measured 97.9% with float blocks, 96.8-96.9%
    # all-integer with --centre-activations (benchmarks/RESULTS.md), which this fails.
    bars = {"model.int8.onnx": 0.98,
            "model.int8-trt.onnx": summary["models"]["int8-tensorrt"]["gate"][
                "min_top1_agreement"]}
    for name, bar in bars.items():
        figures = compare(runtime_probabilities(out / name, held_out, contract,
                                                progress=False), reference, held_out.levels)
        assert figures["n"] >= 1600 and figures["top1_agreement"] >= bar, (name, figures)
        # at most one point of accuracy, in whole crops
        lost = round(-figures["accuracy_delta"] * figures["n"])
        assert lost <= math.ceil(0.01 * figures["n"]), (name, figures)


@pytest.mark.slow
def test_int8_aware_head_within_a_point_of_fp32(big_run: Path, tmp_path: Path) -> None:
    from edge_smw.export.crops import find_split, load_crops, split_items
    from edge_smw.export.parity import compare, runtime_probabilities, torch_probabilities
    from edge_smw.train.checkpoint import load_checkpoint

    out = tmp_path / "aware"
    result = export_model(big_run, out, ExportSettings(int8=True, flavours=("cpu",),
                                                       calib_size=128, aware_head=True,
                                                       target_cpu="build-machine", force=True,
                                                       **FAST), progress=False)
    info = result.summary.int8.flavours["cpu"]
    head = info.aware_head
    assert head["train_crops"] >= 800 and head["plain_int8"] and head["aware"]
    assert [s.name for s in info.steps[-2:]] == ["int8-aware head", LAYOUT_STEP]
    checkpoint = load_checkpoint(big_run)
    contract = checkpoint.contract
    test = load_crops(split_items(find_split(big_run), "test", contract.levels), contract,
                      detect=checkpoint.detect, source="test", progress=False)
    reference = torch_probabilities(checkpoint.build_model(), test, contract, progress=False)
    figures = compare(runtime_probabilities(out / "model.int8.onnx", test, contract,
                                            progress=False), reference, test.levels)
    assert figures["accuracy"] >= figures["accuracy_torch"] - 0.01, figures
    model = onnx.load_model(str(out / "model.int8.onnx"))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    assert not np.allclose(weights[gemm.input[1]], checkpoint.head_weight)


# -- the command and its failures -----------------------------------------------------------------
def test_cli_exports_and_lists_profiles(smiles_run: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from edge_smw.cli.main import main

    assert main(["export", "--list-profiles"]) == 0
    listing = capsys.readouterr().out
    for name in ("cpu-int8", "desktop-gpu-fp16", "desktop-gpu-int8", "jetson-orin-int8",
                 "jetson-nano-fp16"):
        assert name in listing
    assert main(["export", str(smiles_run), "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    assert "model.onnx" in capsys.readouterr().out
    summary = json.loads((tmp_path / "cli" / "export.json").read_text())
    assert set(summary["models"]) == {"fp32"}


def test_missing_and_corrupt_checkpoints(tmp_path: Path, smiles_run: Path) -> None:
    with pytest.raises(ModelError, match="no checkpoint"):
        export_model(tmp_path / "nowhere", tmp_path / "o", ExportSettings(**FAST),
                     progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "checkpoint.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError, match="corrupt"):
        export_model(bad, tmp_path / "o", ExportSettings(**FAST), progress=False)
    newer = tmp_path / "newer"
    newer.mkdir()
    payload = torch.load(smiles_run / "checkpoint.pt", weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, newer / "checkpoint.pt")
    with pytest.raises(ModelError, match="newer edge-smw"):
        export_model(newer, tmp_path / "o", ExportSettings(**FAST), progress=False)
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_split_images_missing_here_say_where_to_run(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A run trained from another folder: the hint fits the split (--calib-data: train only)."""
    from edge_smw.data.datasets import SplitManifest
    from edge_smw.errors import DataError
    from edge_smw.export.crops import split_items

    (tmp_path / "run").mkdir()
    entries = [{"path": f"faces/{name}.jpg", "level": 0, "split": name}
               for name in ("train", "val")]
    split = SplitManifest(("a", "b"), 0, entries).save(tmp_path / "run" / "split.json")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"'val' images .* `edge-smw train` ran in") as val:
        split_items(split, "val", ("a", "b"))
    assert "--calib-data" not in str(val.value)
    with pytest.raises(DataError, match=r"'train' images .*, or pass --calib-data$"):
        split_items(split, "train", ("a", "b"))


def test_unwritable_out_folder(smiles_run: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="cannot write into"):
        export_model(smiles_run, blocker / "out", ExportSettings(**FAST), progress=False)


def test_cli_turns_errors_into_one_line(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from edge_smw.cli.main import main

    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edge-smw export: error:") and "\n" not in err


def test_too_small_calibration_sets(smiles_run: Path, smiles_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="at least 64"):
        export_model(smiles_run, tmp_path / "o", ExportSettings(int8=True, calib_size=10,
                                                                **FAST), progress=False)
    few = tmp_path / "few"
    few.mkdir()
    for path in sorted((smiles_dir / "smiling").iterdir())[:10]:
        shutil.copy(path, few / path.name)
    with pytest.raises(InputError, match="few: 10 photos, fewer than the 64 face crops"):
        export_model(smiles_run, tmp_path / "o2", ExportSettings(int8=True, calib_data=few,
                                                                 **FAST), progress=False)
    assert not (tmp_path / "o2").exists()


def test_interrupted_export_leaves_nothing(smiles_run: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_smw.export import quantize

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(quantize, "calibrate", interrupt)
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        export_model(smiles_run, out, ExportSettings(int8=True, calib_size=64, **FAST),
                     progress=False)
    assert not out.exists()  # the folder it made is gone too
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(KeyboardInterrupt):
        export_model(smiles_run, kept, ExportSettings(int8=True, calib_size=64, **FAST),
                     progress=False)
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]


def test_terminated_export_cleans_up_like_ctrl_c(smiles_run: Path, tmp_path: Path) -> None:
    """SIGTERM (``kill``, ``timeout``) unwinds like Ctrl-C: the staging folder goes, one line
    says so, exit 143 (it used to leave ``.export-*/model.onnx`` behind for good)."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    proc = subprocess.Popen([sys.executable, "-m", "edge_smw.cli.main", "export",
                             str(smiles_run), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob(".export-*/*")) and proc.poll() is None:
        assert time.monotonic() < deadline, "the export never started writing"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM); no partial files were kept" in err and "Traceback" not in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_reexport_leaves_only_its_own_models(smiles_run: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Exporting into a folder holding an earlier export: a failed run keeps every file; a
    successful one removes the models, reports and calibration it did not write (saying so),
    never the user's files, so no command can pick a stale model of another checkpoint."""
    from edge_smw.artifacts.folders import resolve_model_path
    from edge_smw.artifacts.formats import FP16, FP32, INT8_CPU, INT8_TENSORRT
    from edge_smw.cli.main import main
    from edge_smw.export import pipeline

    out = tmp_path / "out"
    out.mkdir()
    stale = sorted([INT8_CPU.file_name, INT8_TENSORRT.file_name, FP16.file_name])
    for name in [*stale, FP32.file_name, "export.json"]:
        (out / name).write_bytes(b"an earlier export of another checkpoint")
    (out / "notes.txt").write_text("mine")
    report = "quant_report.cpu.md"
    (out / report).write_text("the earlier int8 model's report")
    (out / "calibration").mkdir()
    (out / "calibration" / "crops.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "FP32_MAX_ABS_DIFF", -1.0)
        with pytest.raises(GateFailure):
            export_model(smiles_run, out, ExportSettings(val_limit=16, **FAST), progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert (out / "calibration" / "crops.json").is_file()
    assert main(["export", str(smiles_run), "--out", str(out), "--val-limit", "16",
                 "--quiet"]) == 0
    assert (f"removed {', '.join(stale)}, {report}, calibration: an earlier export's"
            in capsys.readouterr().out)
    assert sorted(p.name for p in out.iterdir()) == ["export.json", FP32.file_name,
                                                     "notes.txt"]
    assert resolve_model_path(out).name == FP32.file_name


def test_bad_calibration_data_fails_before_any_work(smiles_run: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_smw.export import pipeline

    def loaded(*args, **kwargs):
        raise AssertionError("the validation crops were loaded before --calib-data was checked")

    monkeypatch.setattr(pipeline, "validation_crops", loaded)
    with pytest.raises(InputError, match="--calib-data .*nowhere: not a folder"):
        export_model(smiles_run, tmp_path / "o", ExportSettings(
            int8=True, calib_data=tmp_path / "nowhere", **FAST), progress=False)
    assert not (tmp_path / "o").exists()


def test_gate_failure_and_force(smiles_run: Path, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An fp32 gate the export cannot meet: refused with the figures, or forced."""
    from edge_smw.export import pipeline

    monkeypatch.setattr(pipeline, "FP32_MAX_ABS_DIFF", -1.0)
    with pytest.raises(GateFailure, match="differs from torch.*nothing was written"):
        export_model(smiles_run, tmp_path / "o" / "nested", ExportSettings(**FAST),
                     progress=False)
    assert not (tmp_path / "o").exists()  # the parent it made is gone too
    result = export_model(smiles_run, tmp_path / "f", ExportSettings(force=True, **FAST),
                          progress=False)
    assert result.forced and (tmp_path / "f" / "model.onnx").is_file()
    summary = json.loads((tmp_path / "f" / "export.json").read_text())
    assert summary["forced"] and not summary["models"]["fp32"]["gate"]["passed"]


# -- profiles --------------------------------------------------------------------------------------
def test_shipped_profiles_load() -> None:
    from edge_smw.export.profiles import list_profiles
    from edge_smw.export.settings import resolve_settings

    profiles = {p.name: p for p in list_profiles()}
    assert profiles["cpu-int8"].flavours == ("cpu",) and not profiles["cpu-int8"].engine
    assert profiles["desktop-gpu-int8"].flavours == ("tensorrt",)
    assert profiles["jetson-orin-int8"].engine and profiles["jetson-nano-fp16"].precision == "fp16"
    vnni = resolve_settings("cpu-vnni-int8")  # the all-integer profile measured in RESULTS.md
    assert vnni.flavours == ("cpu",) and vnni.tune and vnni.target_cpu == "x86-vnni"
    assert vnni.equalize and not resolve_settings("cpu-int8").equalize
    assert not resolve_settings("cpu-int8").tune
    assert vnni.equalize_clipped
    # the GPU INT8 profiles: every step the all-integer tensorrt flavour was measured with,
    # mixed precision left as the fallback for a model that misses the target without it
    for name in ("desktop-gpu-int8", "jetson-orin-int8"):
        gpu = resolve_settings(name)
        assert gpu.flavours == ("tensorrt",) and gpu.max_mixed_steps > 0, name
        assert gpu.centre_activations and gpu.equalize_clipped and gpu.tune, name
    for profile in profiles.values():
        assert profile.description
        if profile.engine:
            assert 1 <= profile.values["batch_min"] <= profile.values["batch_max"]


def test_flags_override_profiles(tmp_path: Path) -> None:
    from edge_smw.export.settings import resolve_settings

    resolved = resolve_settings("cpu-int8", {"calib_size": 64, "target_agreement": 0.99,
                                             "report": None})
    assert resolved.int8 and resolved.flavours == ("cpu",) and resolved.calib_size == 64
    assert resolved.target_agreement == 0.99 and not resolved.engine and not resolved.report
    file = tmp_path / "mine.toml"
    file.write_text('precision = "fp16"\nengine = false\n[tensorrt]\nbatch_max = 4\n')
    resolved = resolve_settings(str(file))
    assert resolved.fp16 and not resolved.int8 and resolved.batch_max == 4


@pytest.mark.parametrize("text, match", [
    ('precision = "int4"\n', "precision"),
    ('colour = "red"\n', "unknown setting"),
    ('precision = "int8"\n[calibration]\nbins = 3\n', r"unknown \[calibration\]"),
    ("precision = \n", "not valid TOML"),
])
def test_bad_profiles(tmp_path: Path, text: str, match: str) -> None:
    from edge_smw.export.profiles import resolve_profile

    file = tmp_path / "bad.toml"
    file.write_text(text)
    with pytest.raises(InputError, match=match):
        resolve_profile(file)
    with pytest.raises(InputError, match="no such profile"):
        resolve_profile("no-such-profile")


# -- TensorRT -------------------------------------------------------------------------------------
def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


@pytest.mark.skipif(_has_tensorrt(), reason=machine_reason(
    "TensorRT is installed here: the missing-library message cannot be shown"))
def test_engine_without_tensorrt_says_what_to_install(smiles_run: Path, tmp_path: Path) -> None:
    from edge_smw.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match="JetPack.*TensorRT wheels.*--no-engine"):
        export_model(smiles_run, tmp_path / "o", ExportSettings(engine=True, **FAST),
                     progress=False)
    assert not (tmp_path / "o").exists()


def test_engine_cache_must_be_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_smw.export.tensorrt import engine_cache_dir

    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("EDGE_SMW_CACHE", str(blocker))
    with pytest.raises(InputError, match="not writable.*EDGE_SMW_CACHE"):
        engine_cache_dir()


def test_engine_cache_key_covers_what_changes_an_engine() -> None:
    from edge_smw.export.tensorrt import EngineSettings, GpuInfo, cache_key

    gpu = GpuInfo("NVIDIA Orin", "8.7")
    base = cache_key("a" * 64, "10.3.0", gpu, EngineSettings("int8"), "c" * 64)
    assert base != cache_key("b" * 64, "10.3.0", gpu, EngineSettings("int8"), "c" * 64)
    assert base != cache_key("a" * 64, "8.5.2", gpu, EngineSettings("int8"), "c" * 64)
    assert base != cache_key("a" * 64, "10.3.0", GpuInfo("NVIDIA Orin", "8.6"),
                             EngineSettings("int8"), "c" * 64)
    assert base != cache_key("a" * 64, "10.3.0", gpu, EngineSettings("fp16"), "c" * 64)
    assert base != cache_key("a" * 64, "10.3.0", gpu, EngineSettings("int8"), "d" * 64)
    assert gpu.slug == "orin"


@pytest.mark.skipif(not _has_tensorrt(), reason=machine_reason(
    "TensorRT is not installed: on a Jetson install JetPack, elsewhere NVIDIA's TensorRT wheels "
    "(pip install tensorrt)"))
def test_engine_builds_and_is_cached(exported: Path, tmp_path: Path) -> None:
    from edge_smw.export.tensorrt import EngineSettings, build_engine
    from edge_smw.metadata import ModelInfo, sidecar_path

    model = onnx.load_model(str(exported / "model.int8-trt.onnx"), load_external_data=False)
    info = ModelInfo.from_props({p.key: p.value for p in model.metadata_props})
    first = build_engine(exported / "model.int8-trt.onnx", EngineSettings("int8", 1, 1, 4),
                         info=info, out_dir=tmp_path)
    again = build_engine(exported / "model.int8-trt.onnx", EngineSettings("int8", 1, 1, 4),
                         info=info, out_dir=tmp_path)
    assert not first["from_cache"] and again["from_cache"]
    engine = tmp_path / first["file"]
    assert ModelInfo.from_sidecar(sidecar_path(engine)).contract == info.contract
