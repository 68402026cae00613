"""`edge-smw bench` end to end on a small real export (trained on real face crops).

The quick suite runs once per module; tests read its bench.json. No wall-clock assertions:
figures must be present and sane (positive, ordered, within their ranges), not fast.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_smw.cli.main import main

REPO = Path(__file__).resolve().parents[1]
LATENCY_KEYS = {"model", "backend", "precision", "batch", "p50_ms", "p90_ms", "p99_ms", "fps",
                "threads", "size_mb", "peak_rss_mb"}
PARITY_KEYS = {"model", "backend", "top1_agreement", "max_abs_prob_diff", "mean_abs_prob_diff",
               "p99_abs_prob_diff", "accuracy", "mae", "accuracy_delta", "mae_delta",
               "per_level"}


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["bench", *argv])
    return code, out.getvalue(), err.getvalue()


def _add_int8(run: Path, folder: Path) -> str | None:
    """Write the export pipeline's int8 models (both flavours) into ``folder`` with the
    quantizer's own functions, calibrated on 64 real training crops. Returns why not, or None.
    """
    try:
        import onnx

        from edge_smw.bench.data import load_items
        from edge_smw.data.datasets import SplitManifest
        from edge_smw.export.crops import CropSet
        from edge_smw.export.onnx import model_info, save_model, set_metadata
        from edge_smw.export.quantize import (
            Flavour,
            calibrate,
            decide_reduce_range,
            flavour_spec,
            quantize,
        )
        from edge_smw.train.checkpoint import load_checkpoint
    except ImportError as exc:
        return f"the int8 quantizer is not importable here ({exc})"
    checkpoint = load_checkpoint(run)
    items = SplitManifest.load(run / "split.json").items("train")
    data = load_items(items, checkpoint.contract, detect=checkpoint.detect, source="train",
                      limit=64)
    crops = CropSet(data.pixels, data.labels, data.paths, "train split")
    fp32 = folder / "model.onnx"
    calibration = calibrate(fp32, crops, checkpoint.contract, progress=False)
    for flavour in (Flavour.CPU, Flavour.TENSORRT):
        reduce_range, _ = decide_reduce_range(flavour)
        model = quantize(onnx.load(str(fp32)), calibration,
                         flavour_spec(flavour, reduce_range=reduce_range))
        info = model_info(checkpoint, precision="int8")
        info.flavour = flavour.value
        set_metadata(model, info)
        save_model(model, folder / flavour.file_name)
    return None


@pytest.fixture(scope="module")
def bench_export(smiles_run: Path, smiles_onnx: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32 (with feature map) + int8 cpu + int8 tensorrt, and a stray non-model file."""
    folder = tmp_path_factory.mktemp("bench_export")
    shutil.copy(smiles_onnx, folder / "model.onnx")
    (folder / "notes.onnx").write_bytes(b"not a model")  # must be skipped with its reason
    why_not = _add_int8(smiles_run, folder)
    if why_not:
        (folder / "no-int8.txt").write_text(why_not)
    return folder


@pytest.fixture(scope="module")
def quick(bench_export: Path, smiles_run: Path,
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One `edge-smw bench --suite quick` run (a fresh process, as users run it: torch is not
    imported before the bench sets up its thread pools) that also saves golden outputs."""
    out = tmp_path_factory.mktemp("bench_out")
    golden = out / "golden.npz"
    done = subprocess.run(
        [sys.executable, "-m", "edge_smw.cli.main", "bench", str(bench_export), "--checkpoint",
         str(smiles_run), "--suite", "quick", "--out", str(out), "--golden", "save",
         str(golden)], capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    assert (out / "bench.json").exists(), done.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    return {"code": done.returncode, "stdout": done.stdout, "stderr": done.stderr, "out": out,
            "report": report, "golden": golden}


def _int8_or_skip(bench_export: Path) -> None:
    note = bench_export / "no-int8.txt"
    if note.exists():
        pytest.skip(note.read_text())


def _tiny_suite(folder: Path) -> Path:
    """Parity and latency only: for tests about gates and golden files."""
    path = folder / "tiny.toml"
    path.write_text(textwrap.dedent("""
        base = "quick"
        parity_max = 8
        theirs = false
        memory = "none"
        robust_n = 0
        blackbox_n = 0
        e2e_frames = 0
        peak_matmul = 128
        peak_repeats = 1
        features_crops = 0
    """))
    return path


def test_quick_bench_writes_every_section(quick: dict[str, Any]) -> None:
    report = quick["report"]
    # exit status follows the gates: 0 when every gate passed, 1 when one failed
    assert quick["code"] == (0 if report["passed"] else 1), quick["stderr"]
    for key in ("machine", "latency", "end_to_end", "parity", "robustness", "limit", "gates",
                "comparisons", "targets", "models"):
        assert key in report, key
    machine = report["machine"]
    assert machine["cores_usable"] >= 1 and machine["cpu"] and "onnxruntime" in \
        machine["versions"]
    assert report["models"][0]["model"] == "model.onnx"  # fp32 first
    assert report["skipped_models"][0]["file"] == "notes.onnx"
    for name in ("bench.json", "bench.md", "latency.png", "robustness.png", "end_to_end.png"):
        assert (quick["out"] / name).stat().st_size > 0, name


def test_quick_bench_times_the_training_feature_pass(quick: dict[str, Any]) -> None:
    """The `features` row: torch eager and edge-smw's feature pass, side by side, from the
    same crop files (the README quotes this row, not a hand-measured figure)."""
    feats = quick["report"]["features"]
    rows = {r["candidate"]: r for r in feats["rows"]}
    assert set(rows) == {"torch eager", "edge-smw feature pass"}
    for r in rows.values():
        assert r["crops"] == 32 and r["seconds"] > 0
        assert 0 < r["crops_per_s_min"] <= r["crops_per_s"] <= r["crops_per_s_max"]
    ratio = rows["edge-smw feature pass"]["crops_per_s"] / rows["torch eager"]["crops_per_s"]
    assert feats["speedup"] == pytest.approx(ratio, rel=1e-2)
    assert "## Training feature pass" in (quick["out"] / "bench.md").read_text()


def test_feature_pass_row_times_each_file_once(smiles_run: Path, smiles_test_items) -> None:
    """The features row reads every file of the data (not only the parity sample) and times
    each once: edge-smw's pass computes a file's features once however often it is listed,
    so a repeated file must not count as a crop (it made a 3.5x pass read 11.8x)."""
    from edge_smw.bench.data import load_items
    from edge_smw.bench.features import measure_feature_pass
    from edge_smw.train.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(smiles_run)
    items = list(smiles_test_items[:12])
    data = load_items(items, checkpoint.contract, detect=False, source="test", limit=4)
    assert len(data) < len(items) and data.files == [str(i.path) for i in items]
    section = measure_feature_pass(checkpoint, data.files[:8] * 4, crops=32, rounds=2)
    assert [r.crops for r in section.rows] == [8, 8]
    assert "held 8 files, fewer than the 32 asked for" in (section.note or "")


def test_quick_bench_latency_rows_are_sane(quick: dict[str, Any]) -> None:
    rows = quick["report"]["latency"]
    ok = [r for r in rows if r["status"] == "ok"]
    backends = {r["backend"] for r in ok}
    assert {"torch-eager", "onnxruntime-cpu", "onnxruntime-default"} <= backends
    for r in ok:
        assert LATENCY_KEYS <= set(r), r
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"], r
        assert r["fps"] > 0 and r["runs"] >= 3 and r["batch"] == 1
    ours = next(r for r in ok if r["backend"] == "onnxruntime-cpu" and r["scope"] == "network")
    assert ours["threads"] >= 1 and ours["size_mb"] > 1
    assert ours["peak_rss_mb"] > ours["model_rss_mb"] > 0  # measured in a child process
    # GPU backends are listed with the reason they cannot run here, not silently dropped
    for r in rows:
        if r["status"] == "skipped":
            assert r["reason"] and r["backend"] in ("onnxruntime-cuda", "onnxruntime-tensorrt")
    crop = {r["backend"] for r in ok if r["scope"] == "crop"}
    assert "edge-smw Runtime.score_crop" in crop and "torchvision+torch-eager" in crop
    versus = {(c["model"], c["versus"]) for c in quick["report"]["comparisons"]}
    assert ("model.onnx", "torch-eager") in versus
    assert ("model.onnx", "onnxruntime-default") in versus
    assert all(c["speedup"] > 0 for c in quick["report"]["comparisons"])


def test_quick_bench_end_to_end_limit_parity_robustness(quick: dict[str, Any],
                                                      smiles_test_items) -> None:
    report = quick["report"]
    e2e = report["end_to_end"]
    assert e2e["frame"]["width"] == 640 and e2e["frame"]["height"] == 480
    assert {r["mode"] for r in e2e["rows"]} == {"single-threaded", "pipelined"}
    configs = {(r["mode"], r["onnxruntime_spinning"]) for r in e2e["rows"]}
    assert ("single-threaded", True) in configs and ("pipelined", True) in configs
    if report["threads"] > 1:  # the variant with onnxruntime's idle threads asleep
        assert ("single-threaded", False) in configs
    for r in e2e["rows"]:
        assert r["fps"] > 0 and r["frames"] == 8
        # warm-up frames are not counted; a row that missed faces is marked and not judged
        assert 0 <= r["faces_found_rate"] <= 1
        assert (r["status"] == "ok") == (r["faces_found_rate"] == 1), r
    single = next(r for r in e2e["rows"] if r["mode"] == "single-threaded")
    assert set(single["stages"]) == {"decode", "detect", "preprocess", "infer", "total"}
    if e2e["frame"]["detected"]:
        assert single["faces_found_rate"] > 0 and single["stages"]["infer"] is not None

    limit = report["limit"]
    assert 0.2 < limit["gmacs"] < 1.0  # EfficientNet-Lite0 at 224: about 0.39 GMACs
    assert limit["gflops"] == pytest.approx(2 * limit["gmacs"])
    assert limit["peak_gflops"] > 0
    assert all(r["achieved_gflops"] > 0 and r["fraction_of_peak"] > 0 for r in limit["rows"])

    parity = {(r["model"], r["backend"]): r for r in report["parity"]}
    onnx = parity[("model.onnx", "onnxruntime-cpu")]
    assert PARITY_KEYS <= set(onnx)
    assert onnx["top1_agreement"] == 1.0 and onnx["max_abs_prob_diff"] < 1e-4
    assert onnx["mean_abs_prob_diff"] <= onnx["p99_abs_prob_diff"] <= onnx["max_abs_prob_diff"]
    assert 0.5 <= onnx["accuracy"] <= 1 and 0 <= onnx["mae"] <= 1
    # the quick suite judges parity on up to parity_max crops: here the whole small test split
    assert onnx["n"] == report["data"]["n"] == min(report["suite"]["parity_max"],
                                                   len(smiles_test_items))
    assert set(onnx["per_level"]) == {"not_smiling", "smiling"}
    assert parity[("torch", "torch-eager")]["accuracy"] == pytest.approx(onnx["accuracy"])

    rob = report["robustness"]
    assert {r["attack"] for r in rob} >= {"pgd-untargeted", "square-untargeted"}
    assert {r["budget"] for r in rob if r["attack"] == "pgd-untargeted"} == {2.0, 8.0}
    assert all(0 <= r["success_rate"] <= 1 for r in rob)
    torch_pgd = [r for r in rob if r["model"] == "torch" and r["attack"] == "pgd-untargeted"]
    ort_pgd = [r for r in rob if r["model"] == "model.onnx" and r["attack"] == "pgd-untargeted"]
    assert torch_pgd and ort_pgd and all(r["matches_torch"] >= 0.5 for r in ort_pgd)
    # success can only grow with the budget on the model the images were made on
    rates = [r["success_rate"] for r in sorted(torch_pgd, key=lambda r: r["budget"])]
    assert rates == sorted(rates)
    assert report["robustness_summary"]["median_budget"]

    gates = {g["name"]: g for g in report["gates"]}
    assert gates["fp32_parity"]["pass"] is True and gates["fp32_parity"]["value"] < 1e-4
    for g in report["gates"]:
        assert {"name", "value", "threshold", "pass"} <= set(g)
    assert report["passed"] == all(g["pass"] is not False for g in report["gates"])


def test_quick_bench_judges_the_int8_models(quick: dict[str, Any],
                                            bench_export: Path) -> None:
    _int8_or_skip(bench_export)
    report = quick["report"]
    parity = {r["model"]: r for r in report["parity"] if r["backend"] == "onnxruntime-cpu"}
    for name in ("model.int8.onnx", "model.int8-trt.onnx"):
        row = parity[name]
        assert row["precision"] == "int8" and 0 <= row["top1_agreement"] <= 1
        assert row["accuracy_drop_points"] == pytest.approx(
            100 * (row["reference_accuracy"] - row["accuracy"]))
        assert row["max_abs_prob_diff"] > 0  # int8 is not bit-exact with torch
    assert parity["model.int8.onnx"]["intended"] is True  # U8S8 is made for onnxruntime CPU
    assert parity["model.int8-trt.onnx"]["intended"] is False  # made for TensorRT
    comps = [c for c in report["comparisons"] if c["model"] == "model.int8.onnx"
             and c["scope"] == "network"]
    assert {c["versus"] for c in comps} >= {"fp32", "torch-eager", "onnxruntime-default"}
    assert all(1 <= c["n"] <= 10 for c in comps)  # the quick suite's 3-10 interleaved runs
    gates = {g["name"]: g for g in report["gates"]}
    # too few runs to judge a speed-up: reported, never a FAIL (the full suite judges it)
    speed = gates["int8_faster_than_fp32"]
    assert speed["pass"] is None and speed["note"].startswith("not judged: n too small")
    n = report["data"]["n"]
    agreement = gates["int8_top1_agreement"]
    if n < agreement["min_n"]:  # the fixture's small test split: no verdict, never a FAIL
        assert agreement["pass"] is None and agreement["note"].startswith("not judged")
    else:
        assert agreement["pass"] is not None and agreement["value"] == pytest.approx(
            min(parity[m]["top1_agreement"] for m in ("model.int8.onnx", "model.int8-trt.onnx")))
    drop = gates["int8_accuracy_drop"]
    assert (drop["pass"] is None) == (n < drop["min_n"]), drop
    square = [r for r in report["robustness"] if r["attack"] == "square-untargeted"]
    assert {r["model"] for r in square} >= {"model.onnx", "model.int8.onnx"}
    masking = report["robustness_summary"]["gradient_masking"]
    assert {r["model"] for r in masking} == {"model.int8.onnx", "model.int8-trt.onnx"}
    assert all(r["verdict"] for r in masking)
    deployable = [r for r in report["end_to_end"]["rows"] if r["deployable"]]
    assert deployable and all(r["model"] == "model.int8.onnx" for r in deployable)


def test_quick_bench_prints_a_benchmark_table(quick: dict[str, Any]) -> None:
    text = quick["stdout"]
    for word in ("Format", "Status", "Size (MB)", "Accuracy", "MAE", "p99", "FPS",
                 "ONNX fp32", "PyTorch fp32", "onnxruntime-cuda"):
        assert word in text, word
    assert "fp32_parity" in text


def test_golden_check_round_trips_without_torch(quick: dict[str, Any], bench_export: Path,
                                                tmp_path: Path) -> None:
    """--golden check runs in a process where importing torch is impossible."""
    golden = quick["golden"]
    assert golden.stat().st_size > 0
    out = tmp_path / "check"
    script = textwrap.dedent(f"""
        import sys

        class NoTorch:  # any `import torch` (or torchvision, timm) now fails
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "torchvision", "timm"):
                    raise ImportError(f"{{name}} is blocked in this test")
                return None

        sys.meta_path.insert(0, NoTorch())
        from edge_smw.cli.main import main
        code = main(["bench", {str(bench_export)!r}, "--golden", "check", {str(golden)!r},
                     "--suite", {str(_tiny_suite(tmp_path))!r}, "--out", {str(out)!r},
                     "--no-plots"])
        assert "torch" not in sys.modules
        sys.exit(code)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, env=dict(os.environ), timeout=300, check=False)
    assert (out / "bench.json").exists(), done.stderr[-2000:]
    report = json.loads((out / "bench.json").read_text())
    assert done.returncode == (0 if report["passed"] else 1), done.stderr[-2000:]
    assert report["reference"].startswith("golden outputs")
    row = next(r for r in report["parity"] if r["model"] == "model.onnx")
    assert row["reference"] == "golden" and row["top1_agreement"] == 1.0
    assert row["max_abs_prob_diff"] < 1e-4 and row["n"] == quick["report"]["data"]["n"]
    assert next(g for g in report["gates"] if g["name"] == "fp32_parity")["pass"] is True
    # same pixels, same models: the golden check reproduces the live run's figures exactly
    live = {r["model"]: r for r in quick["report"]["parity"]
            if r["backend"] == "onnxruntime-cpu"}
    for r in report["parity"]:
        if r["backend"] == "onnxruntime-cpu":
            assert r["top1_agreement"] == live[r["model"]]["top1_agreement"], r["model"]
            assert r["accuracy"] == pytest.approx(live[r["model"]]["accuracy"])
    assert not any(r["backend"] == "torch-eager" for r in report["latency"])
    assert "torch" in report["robustness_summary"]["note"]


def test_golden_check_catches_a_perturbed_model(quick: dict[str, Any], bench_export: Path,
                                                tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    broken = tmp_path / "broken_export"
    broken.mkdir()
    model = onnx.load(str(bench_export / "model.onnx"))
    # Nudge the largest Conv weight by 2%: a subtly wrong engine, not an obviously broken one.
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    init = max((i for i in model.graph.initializer if i.name in conv_weights),
               key=lambda i: int(np.prod(i.dims)))
    array = numpy_helper.to_array(init).copy()
    init.CopyFrom(numpy_helper.from_array(array * 1.02, init.name))
    onnx.save(model, str(broken / "model.onnx"))
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(str(broken), "--golden", "check", str(quick["golden"]),
                                   "--suite", str(_tiny_suite(tmp_path)), "--out", str(out),
                                   "--no-plots")
    assert code == 1, stdout + stderr
    assert "fp32_parity" in stderr
    report = json.loads((out / "bench.json").read_text())
    row = next(r for r in report["parity"] if r["model"] == "model.onnx")
    assert row["max_abs_prob_diff"] > 1e-4 and not row["within_tolerance"]
    assert next(g for g in report["gates"] if g["name"] == "fp32_parity")["pass"] is False


def test_failing_gate_exits_non_zero(bench_export: Path, smiles_run: Path,
                                     tmp_path: Path) -> None:
    gates = tmp_path / "gates.toml"
    gates.write_text(textwrap.dedent("""
        [[gate]]
        name = "impossible_agreement"
        section = "parity"
        where = { precision = "fp32" }
        field = "top1_agreement"
        reduce = "min"
        op = ">"
        threshold = 1.0
    """))
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(str(bench_export), "--checkpoint", str(smiles_run),
                                   "--suite", str(_tiny_suite(tmp_path)), "--gates", str(gates),
                                   "--backends", "onnxruntime-cpu", "--out", str(out),
                                   "--no-plots", "--json")
    assert code == 1
    assert "impossible_agreement" in stderr
    report = json.loads((out / "bench.json").read_text())
    assert json.loads(stdout)["gates"] == report["gates"]  # --json prints bench.json
    assert report["passed"] is False
    assert report["gates"][0]["pass"] is False and report["gates"][0]["value"] == 1.0
    # --backends limits what runs: no torch baseline, no GPU rows
    assert {r["backend"] for r in report["latency"]} == {"onnxruntime-cpu"}


def test_bench_finds_the_checkpoint_through_export_json(bench_export: Path, smiles_run: Path,
                                                        tmp_path: Path) -> None:
    """export.json (written by `edge-smw export`) names the checkpoint; bench checks its hash."""
    from edge_smw.cache import file_sha256

    folder = tmp_path / "export"
    shutil.copytree(bench_export, folder)
    checkpoint = smiles_run / "checkpoint.pt"
    summary = {"source": {"path": str(smiles_run), "checkpoint": str(checkpoint),
                          "checkpoint_sha256": file_sha256(checkpoint)}}
    (folder / "export.json").write_text(json.dumps(summary))
    suite = str(_tiny_suite(tmp_path))
    code, _, stderr = run_cli(str(folder), "--suite", suite, "--backends", "onnxruntime-cpu",
                              "--out", str(tmp_path / "out"), "--no-plots")
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert str(checkpoint) in report["reference"], stderr
    assert code == (0 if report["passed"] else 1)
    # a different checkpoint (retrained since the export) is refused, not compared
    other = tmp_path / "other.pt"
    other.write_bytes(checkpoint.read_bytes() + b"\0")
    code, _, stderr = run_cli(str(folder), "--checkpoint", str(other), "--suite", suite,
                              "--out", str(tmp_path / "out2"))
    assert code == 2 and "not the checkpoint these models were exported from" in stderr


def test_bench_json_round_trips_through_the_typed_report(quick: dict[str, Any]) -> None:
    """bench.json read back as a ``BenchReport`` writes the same JSON and the same bench.md:
    the typed objects hold every field the file has, and the file is their ``to_dict``."""
    from edge_smw.bench.report import markdown
    from edge_smw.bench.results import BenchReport, GateVerdict, LatencyRow, ParityRow

    data = quick["report"]
    report = BenchReport.from_dict(data)
    assert report.to_dict() == data
    assert json.loads(json.dumps(report.to_dict())) == data
    assert all(isinstance(r, LatencyRow) for r in report.latency)
    assert all(isinstance(r, ParityRow) for r in report.parity)
    assert all(isinstance(g, GateVerdict) for g in [*report.gates, *report.targets])
    assert report.passed is data["passed"]
    assert [g.name for g in report.failed_gates] == \
        [g["name"] for g in data["gates"] if g["pass"] is False]
    written = (quick["out"] / "bench.md").read_text(encoding="utf-8")
    assert markdown(report, report.plots or []) == written


def test_run_bench_returns_a_typed_report(bench_export: Path, smiles_run: Path,
                                          tmp_path: Path) -> None:
    """The library boundary: ``run_bench`` gives typed rows; ``write_report`` writes their
    ``to_dict`` as bench.json."""
    from edge_smw.bench.report import write_report
    from edge_smw.bench.results import (
        BenchReport,
        DetectionSection,
        EndToEndSection,
        GateVerdict,
        LatencyRow,
        LimitRow,
        Machine,
        ParityRow,
    )
    from edge_smw.bench.run import BenchOptions, run_bench

    report = run_bench(BenchOptions(
        export_dir=bench_export, checkpoint=str(smiles_run), backends=["onnxruntime-cpu"],
        suite=str(_tiny_suite(tmp_path)), sections=("latency", "limit", "parity")))
    assert isinstance(report, BenchReport) and isinstance(report.machine, Machine)
    assert report.latency and all(isinstance(r, LatencyRow) for r in report.latency)
    assert {r.backend for r in report.latency} == {"onnxruntime-cpu"}
    assert all(isinstance(r, LimitRow) for r in report.limit.rows) and report.limit.rows
    fp32 = next(r for r in report.parity if r.model == "model.onnx")
    assert isinstance(fp32, ParityRow) and fp32.diff is not None
    assert fp32.diff.max_abs_prob_diff < 1e-4 and fp32.n == report.data.n
    assert report.gates and all(isinstance(g, GateVerdict) for g in report.gates)
    assert report.passed == (not any(g.passed is False for g in report.gates))
    # sections not asked for say so, in the same typed form
    assert isinstance(report.end_to_end, EndToEndSection) and not report.end_to_end.rows
    assert isinstance(report.detection, DetectionSection)
    assert report.detection.note == "not requested" and report.robustness == []
    paths = write_report(report, tmp_path / "out", plots=False)
    written = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert written == report.to_dict() and written["plots"] == []
    assert BenchReport.from_dict(written).to_dict() == written


def test_bench_bad_input_is_one_clear_line(tmp_path: Path, smiles_run: Path,
                                           bench_export: Path) -> None:
    code, _, stderr = run_cli(str(tmp_path / "nowhere"))
    assert code == 2 and "not a folder" in stderr and "Traceback" not in stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, stderr = run_cli(str(empty))
    assert code == 2 and "holds no edge-smw model" in stderr
    code, _, stderr = run_cli(str(bench_export), "--backends", "cuda-please")
    assert code == 2 and "unknown backend" in stderr
    # no export.json and no --checkpoint: say what to pass
    code, _, stderr = run_cli(str(bench_export), "--suite", str(_tiny_suite(tmp_path)))
    assert code == 2 and "--checkpoint" in stderr


def test_quick_bench_compares_face_detectors(quick: dict[str, Any]) -> None:
    """End-to-end rows per detector, and the detection set's recall per condition."""
    report = quick["report"]
    by_detector = {r["detector"] for r in report["end_to_end"]["rows"]}
    assert by_detector == {"haar", "blazeface-short"}
    for row in report["end_to_end"]["rows"]:
        assert row["stages"]["detect"]["p50_ms"] > 0 and row["faces_found_rate"] > 0
    section = report["detection"]
    assert [r["name"] for r in section["rows"]] == ["haar", "blazeface-short"]
    for row in section["rows"]:
        assert set(row["conditions"]) == set(section["conditions"])
        assert 0 <= row["overall"]["recall"] <= 1 and row["detect_ms"]["p50"] > 0
    assert section["rows"][1]["overall"]["recall"] >= 0.8  # the DNN detector finds most faces
    markdown = (quick["out"] / "bench.md").read_text()
    assert "## Face detection" in markdown and "rotated 20-30 deg" in markdown
    names = {t["name"] for t in report["targets"]}
    assert {"end_to_end_dnn_detector_30fps_single_threaded",
            "end_to_end_dnn_detector_60fps_pipelined"} <= names


def test_an_int8_model_whose_weights_do_not_suit_this_cpu_is_not_run(
        smiles_int8: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """8-bit cpu-flavour weights on an x86 without VNNI: onnxruntime's U8S8 sums saturate, so
    the bench does not time or judge that model there; it lists it as not run, with the
    runtime's reason (measured: the tensorrt flavour on OpenVINO on an AVX2-only EPYC agreed
    on 79.7% and failed the parity gate of every bench that ran it)."""
    from types import SimpleNamespace

    import edge_smw.cpu as cpu
    from edge_smw.bench.models import discover_models
    from edge_smw.bench.run import open_sessions
    from tests.runtime_helpers import with_int8_settings

    folder = tmp_path / "export"
    folder.mkdir()
    with_int8_settings(smiles_int8, folder / "model.int8.onnx", reduce_range=False,
                       target_cpu="x86-vnni")
    models, _ = discover_models(folder)
    options = SimpleNamespace(backends=["onnxruntime-cpu"])
    monkeypatch.setattr(cpu, "cpu_kind", lambda features=None: "x86-avx2")
    sessions, skipped = open_sessions(models, options, threads=1)
    assert not sessions and len(skipped) == 1
    assert skipped[0].status == "skipped" and skipped[0].reason.startswith(
        "not run on this CPU: this INT8 model has 8-bit weights")
    monkeypatch.setattr(cpu, "cpu_kind", lambda features=None: "x86-vnni")
    sessions, skipped = open_sessions(models, options, threads=1)
    assert len(sessions) == 1 and not skipped
    sessions[0].runtime.close()


def test_bench_output_and_gates_problems_are_said_before_any_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only export folder (default --out EXPORT_DIR/bench), a --golden save FILE that is
    a folder and a missing --gates file: one line naming the option, before the bench's work
    (an empty folder here, so any work at all would fail on its missing models instead)."""
    from tests.test_cli import read_only

    export = tmp_path / "export"
    export.mkdir()
    read_only(monkeypatch, export)
    code, _, stderr = run_cli(str(export), "--no-plots")
    assert code == 2 and stderr.count("\n") == 1
    assert f"cannot write into {export / 'bench'}: Read-only file system" in stderr
    assert "pass --out" in stderr and not (export / "bench").exists()
    out = ["--out", str(tmp_path / "out")]
    code, _, stderr = run_cli(str(export), *out, "--golden", "save", str(tmp_path))
    assert code == 2 and "is a folder, not a file; give a file path for --golden save" in stderr
    code, _, stderr = run_cli(str(export), *out, "--gates", str(tmp_path / "nonexist.toml"))
    assert code == 2 and f"--gates {tmp_path / 'nonexist.toml'}: file not found" in stderr


def test_bench_data_that_yields_nothing_gets_advice_about_data(tmp_path: Path) -> None:
    """--data given: the advice is about that data, not to pass --data."""
    from edge_smw.bench.data import load_bench_data
    from edge_smw.contract import PreprocessContract
    from edge_smw.errors import DataError

    for level in ("a", "b"):
        (tmp_path / "badlv" / level).mkdir(parents=True)
        (tmp_path / "badlv" / level / "x.jpg").write_text("not an image")
    with pytest.raises(DataError) as caught:
        load_bench_data(str(tmp_path / "badlv"), PreprocessContract(levels=("a", "b")),
                        run_dir=None, trained_detect=False, limit=0)
    message = str(caught.value)
    assert "none of 2 images could be used" in message and "pass --data" not in message
    assert f"check that --data {tmp_path / 'badlv'} holds readable images" in message
