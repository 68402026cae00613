"""Bench building blocks on small, exact inputs: gates, suites, tolerances, MAC counting,
interleaved timing, speed-up rows, golden files. No trained model, no timing assertions."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_smw.bench import latency as lat
from edge_smw.bench.config import Gate, Tolerance, load_gates, load_suite
from edge_smw.bench.data import stratified_sample
from edge_smw.bench.golden import check_compatible, load_golden, save_golden
from edge_smw.bench.parity import compare_outputs, parity_row
from edge_smw.bench.report import SummaryRow, not_run_lines, verdict_line
from edge_smw.bench.results import (
    BenchReport,
    GateVerdict,
    LatencyRow,
    ParityRow,
    RobustnessRow,
)
from edge_smw.contract import PreprocessContract
from edge_smw.errors import InputError, ModelError
from edge_smw.export.results import Parity as ExportParity
from edge_smw.stats import (
    DecisionMargins,
    Proportion,
    decision_gaps,
    family_confidence,
    min_n_to_show,
    wilson_interval,
)

LEVELS = ("low", "high")


# -- gates and suites ---------------------------------------------------------------------

def _report() -> dict:
    return {
        "parity": [
            {"model": "a.onnx", "backend": "cpu", "precision": "int8", "top1_agreement": 0.97,
             "status": "ok"},
            {"model": "b.onnx", "backend": "cpu", "precision": "int8", "top1_agreement": 0.995,
             "status": "ok"},
            {"model": "c.onnx", "backend": "gpu", "precision": "int8", "top1_agreement": 0.1,
             "status": "skipped"},
            {"model": "d.onnx", "backend": "cpu", "precision": "fp32", "top1_agreement": 1.0,
             "status": "ok"},
        ],
        "end_to_end": {"rows": [{"model": "a.onnx", "fps": 31.0, "deployable": True}]},
    }


def test_gate_takes_the_worst_matching_ok_row() -> None:
    gate = Gate(name="agree", section="parity", field="top1_agreement", op=">=",
                threshold=0.98, reduce="min", where={"precision": "int8"})
    result = gate.evaluate(_report())
    assert result.passed is False and result.failed
    assert result.value == pytest.approx(0.97)
    assert result.rows == 2  # the skipped row is not judged
    assert result.worst is not None and result.worst["model"] == "a.onnx"
    looser = Gate(name="agree", section="parity", field="top1_agreement", op=">=",
                  threshold=0.9, reduce="min", where={"precision": "int8"})
    assert looser.evaluate(_report()).passed is True


def test_gate_without_rows_is_skipped_not_passed() -> None:
    gate = Gate(name="fp16", section="parity", field="top1_agreement", op=">=", threshold=0.9,
                where={"precision": "fp16"})
    result = gate.evaluate(_report())
    assert result.passed is None and result.value is None and "skipped" in str(result.note)
    assert not result.failed and not result.not_judged


def _agreement_rows(*rows: tuple[float, int]) -> dict[str, Any]:
    return {"parity": [{"model": f"m{i}.onnx", "precision": "int8", "top1_agreement": a, "n": n,
                        "status": "ok"} for i, (a, n) in enumerate(rows)]}


def test_proportion_gate_on_a_small_sample_is_not_judged() -> None:
    """One differing crop of 16 is 93.8%: no verdict on 98% can come from 16 crops."""
    gate = Gate(name="agree", section="parity", field="top1_agreement", op=">=",
                threshold=0.98, statistic="proportion", where={"precision": "int8"})
    result = gate.evaluate(_agreement_rows((15 / 16, 16)))
    assert result.passed is None and result.min_n == 189 and result.not_judged
    assert str(result.note).startswith("not judged: n too small (n = 16;")
    assert "not judged" in verdict_line(result)


def test_proportion_gate_judges_by_the_interval_bound() -> None:
    gate = Gate(name="agree", section="parity", field="top1_agreement", op=">=",
                threshold=0.98, statistic="proportion", where={"precision": "int8"})
    clear = gate.evaluate(_agreement_rows((1475 / 1490, 1490)))  # 98.99%, lower bound 98.35%
    assert clear.passed is True and clear.interval is not None
    assert clear.interval[0] == pytest.approx(0.98346, abs=1e-4)
    # 98.1% of 300 is above the threshold, but the sample cannot show it: not a pass
    thin = gate.evaluate(_agreement_rows((294 / 300, 300), (1475 / 1490, 1490)))
    assert thin.passed is False and thin.worst == {"model": "m0.onnx"}
    # a row too small is left out, the others still judged
    mixed = gate.evaluate(_agreement_rows((0.5, 10), (1475 / 1490, 1490)))
    assert mixed.passed is True and mixed.unjudged_rows == 1


def test_min_n_gate_leaves_small_samples_unjudged() -> None:
    gate = Gate(name="drop", section="parity", field="drop", op="<=", threshold=1.0, min_n=200,
                reduce="max")
    rows = {"parity": [{"model": "a", "drop": 6.25, "n": 16, "status": "ok"}]}
    assert gate.evaluate(rows).passed is None
    rows["parity"].append({"model": "b", "drop": 0.5, "n": 400, "status": "ok"})
    assert gate.evaluate(rows).passed is True


def test_gate_verdict_is_written_with_pass_and_read_back() -> None:
    gate = Gate(name="agree", section="parity", field="top1_agreement", op=">=",
                threshold=0.98, reduce="min", where={"precision": "int8"})
    verdict = gate.evaluate(_report())
    written = verdict.to_dict()
    assert written["pass"] is False and "passed" not in written
    assert "interval" not in written  # a min/max gate has no interval to write
    assert GateVerdict.from_dict(written) == verdict
    with pytest.raises(InputError, match="unknown GateVerdict field"):
        GateVerdict.from_dict({**written, "verdict": "nope"})
    with pytest.raises(InputError, match="lacks 'name'"):
        GateVerdict.from_dict({k: v for k, v in written.items() if k != "name"})


def test_bench_json_of_another_schema_is_refused() -> None:
    with pytest.raises(InputError, match="schema_version 99"):
        BenchReport.from_dict({"schema_version": 99})
    with pytest.raises(InputError, match="must be an object"):
        LatencyRow.from_dict(["not", "a", "row"])  # type: ignore[arg-type]


def test_wilson_interval_and_minimum_sample() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert [min_n_to_show(t) for t in (0.95, 0.98, 0.99)] == [73, 189, 381]
    assert wilson_interval(189, 189)[0] >= 0.98 > wilson_interval(188, 188)[0]
    assert Proportion(15, 16).shows_at_least(0.98) is None
    assert "Wilson" in Proportion(1475, 1490).describe()


def test_family_confidence_is_bonferroni() -> None:
    assert family_confidence(0.95, 1) == 0.95
    assert family_confidence(0.95, 5) == pytest.approx(0.99)
    assert wilson_interval(1462, 1490, family_confidence(0.95, 6))[0] < \
        wilson_interval(1462, 1490)[0]
    assert "99.17% Wilson" in Proportion(1462, 1490, family_confidence(0.95, 6)).describe()
    with pytest.raises(InputError, match="at least 1"):
        family_confidence(0.95, 0)


def _two_levels(gaps: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Probabilities whose log-odds of level ``top`` over the other is ``gaps``."""
    p_top = 1.0 / (1.0 + np.exp(-gaps))
    probs = np.stack([p_top, 1.0 - p_top], axis=1)
    return np.where(top[:, None] == 0, probs, probs[:, ::-1])


def test_decision_gap_is_the_top_score_minus_the_best_other() -> None:
    reference = np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0], [2.0, 1.0, 0.0]])
    scores = np.array([[2.0, 0.5, 1.0], [0.0, 3.0, 2.5], [1.0, 1.5, 0.0]])
    gap, change = decision_gaps(scores, reference)
    assert np.allclose(gap, [1.0, 2.0, 1.0])
    # the model's gap for the reference's level: 1.0, 0.5 and -0.5 (a third level overtakes)
    assert np.allclose(change, [0.0, -1.5, -1.5])
    assert list(gap + change < 0) == [False, False, True]  # only the third crop flips


def test_decision_margins_measure_the_gap_and_its_change() -> None:
    gaps = np.array([0.05, 0.1, 0.5, 1.0, 3.0, 5.0])
    top = np.array([0, 1, 0, 1, 1, 0])  # the reference's decision, either level
    error = np.array([0.2, -0.2, 0.2, -0.2, 0.2, -0.2])
    margins = DecisionMargins.measure(_two_levels(gaps + error, top), _two_levels(gaps, top))
    assert margins.n == 6 and margins.error_sd == pytest.approx(0.2, abs=1e-6)
    assert margins.near == 2  # the gaps 0.05 and 0.1 lie under one error spread
    normal = [0.5 * math.erfc(g / 0.2 / math.sqrt(2)) for g in gaps]
    assert margins.expected == pytest.approx(sum(normal), rel=1e-4)
    assert DecisionMargins.from_dict(margins.to_dict()) == margins
    assert "2 of 6 crops" in margins.describe()
    # a model equal to the reference moves nothing and expects no flip
    same = DecisionMargins.measure(_two_levels(gaps, top), _two_levels(gaps, top))
    assert (same.error_sd, same.near, same.expected) == (0.0, 0, 0.0)
    # bench.json keeps them with the parity row
    row = parity_row("m", "cpu", "int8", _two_levels(gaps + error, top), _two_levels(gaps, top),
                     None, LEVELS, Tolerance(0.05), reference="torch")
    assert ParityRow.from_dict(row.to_dict()).decision_margins == row.decision_margins
    # and the export's parity (export.json, the gate's lines) the same figures
    exported = ExportParity.measure(_two_levels(gaps + error, top), _two_levels(gaps, top), None)
    assert exported.to_dict()["decision_margins"] == margins.to_dict()


def test_unavailable_backends_collapse_to_one_line_each() -> None:
    def row(model: str, backend: str, status: str, reason: str | None) -> SummaryRow:
        return SummaryRow(format=model, model=model, backend=backend, status=status,
                          reason=reason, size_mb=None, accuracy=None, mae=None, agreement=None,
                          p50_ms=None, p99_ms=None, fps=None, batch=1)

    rows = [row(m, "onnxruntime-cuda", "skipped",
                "CUDAExecutionProvider is not in this onnxruntime")
            for m in ("model.onnx", "model.int8.onnx", "model.fp16.onnx")]
    rows.append(row("model.onnx", "onnxruntime-cpu", "ok", None))
    lines = not_run_lines(rows)
    assert lines == ["❎ onnxruntime-cuda (model.onnx, model.int8.onnx, model.fp16.onnx): "
                     "CUDAExecutionProvider is not in this onnxruntime"]


def test_gate_reads_sections_that_hold_rows_in_a_dict() -> None:
    gate = Gate(name="fps", section="end_to_end", field="fps", op=">=", threshold=30.0,
                reduce="max", where={"deployable": True})
    assert gate.evaluate(_report()).passed is True


def test_speed_gates_judge_only_timings_of_enough_runs() -> None:
    """A p50 of the quick suite's few runs is too short to judge (measured: int8 0.76x fp32
    over the parity suite's few runs, 1.4x over 200 interleaved runs the same hour): its
    speed gates are "not judged", the full suite's are judged."""
    loaded = load_gates()
    gates = {g.name: g for g in loaded.gates + loaded.targets}
    row = {"model": "m", "precision": "int8", "versus": "fp32", "batch": 1, "intended": True,
           "status": "ok", "speedup": 0.76}
    for name in ("int8_faster_than_fp32", "int8_vs_onnxruntime_fp32"):
        gate = gates[name]
        few = gate.evaluate({"comparisons": [{**row, "n": load_suite("quick").max_runs}]})
        assert few.passed is None and str(few.note).startswith("not judged: n too small")
        enough = gate.evaluate({"comparisons": [{**row, "n": load_suite("full").min_runs}]})
        assert enough.passed is False


def test_a_speed_up_counts_the_runs_of_the_less_timed_side() -> None:
    def timed(precision: str, runs: int, p50: float) -> LatencyRow:
        return LatencyRow(model=f"{precision}.onnx", backend="onnxruntime-cpu",
                          precision=precision, flavour=None, kind="ours", intended=True,
                          batch=1, scope="network", p50_ms=p50, runs=runs)

    row = lat._compare(timed("int8", 40, 2.0), timed("fp32", 35, 3.0), "fp32", "network", 1)
    assert row.n == 35 and row.speedup == pytest.approx(1.5)


def test_default_gates_and_suites_load() -> None:
    gates = load_gates()
    names = {g.name for g in gates.gates}
    assert {"fp32_parity", "int8_top1_agreement", "int8_accuracy_drop",
            "int8_faster_than_fp32"} <= names
    fp32 = next(g for g in gates.gates if g.name == "fp32_parity")
    assert fp32.threshold == pytest.approx(1e-4) and fp32.op == "<="
    assert gates.tolerance("fp32").atol == pytest.approx(1e-4)
    assert load_suite("quick").batches == [1]
    assert load_suite("full").batches == [1, 8, 32]
    # benchmarks/ holds the same files (links into the package)
    repo = Path(__file__).resolve().parents[1]
    assert load_gates(repo / "benchmarks" / "gates.toml").to_dict()["tolerances"] == \
        gates.to_dict()["tolerances"]
    for extra in (repo / "benchmarks" / "suites").glob("*.toml"):  # every shipped suite loads
        assert load_suite(extra).name == extra.stem
    parity = load_suite(repo / "benchmarks" / "suites" / "parity.toml")
    assert parity.parity_max == 0 and parity.robust_n == 0 and parity.e2e_frames == 0
    agreement = load_suite(repo / "benchmarks" / "suites" / "agreement.toml")
    assert agreement.parity_max == 0 and agreement.robust_n == load_suite("full").robust_n
    assert agreement.e2e_frames == 0 and agreement.detection_frames == 0


def test_the_bench_rechecks_the_exports_int8_agreement_threshold() -> None:
    """One threshold for the INT8 claim, the export's and the bench's (parity.py is
    torch-side, so only this part needs torch)."""
    pytest.importorskip("torch")
    from edge_smw.export.parity import INT8_MIN_AGREEMENT

    int8 = next(g for g in load_gates().gates if g.name == "int8_top1_agreement")
    assert int8.threshold == INT8_MIN_AGREEMENT and int8.statistic == "proportion"


def test_bad_gate_and_suite_files_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "gates.toml"
    bad.write_text(textwrap.dedent("""
        [[gate]]
        name = "x"
        section = "parity"
        field = "top1_agreement"
        op = "=>"
        threshold = 1
    """))
    with pytest.raises(InputError, match="op must be one of"):
        load_gates(bad)
    bad.write_text("[[gate]]\nname = 'x'\nsection = 'nowhere'\nfield = 'a'\nop = '<'\n"
                   "threshold = 1\n")
    with pytest.raises(InputError, match="section must be one of"):
        load_gates(bad)
    with pytest.raises(InputError, match="not found"):
        load_gates(tmp_path / "missing.toml")
    suite = tmp_path / "suite.toml"
    suite.write_text('base = "quick"\nrobust_n = 0\nbogus = 1\n')
    with pytest.raises(InputError, match="unknown suite field"):
        load_suite(suite)
    suite.write_text('base = "quick"\nrobust_n = 0\nbatches = [1, 4]\n')
    custom = load_suite(suite)
    assert custom.robust_n == 0 and custom.batches == [1, 4] and custom.warmup == \
        load_suite("quick").warmup
    with pytest.raises(InputError, match="quick"):
        load_suite("medium")
    suite.write_text('base = "quick"\ncalls_per_turn = 0\n')
    with pytest.raises(InputError, match="calls_per_turn must be >= 1"):
        load_suite(suite)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(InputError, match="gates file .*bin.toml is not UTF-8 text"):
        load_gates(binary)
    with pytest.raises(InputError, match="suite .*bin.toml is not UTF-8 text"):
        load_suite(binary)


def test_an_older_bench_json_suite_reads_as_the_per_call_round_robin() -> None:
    """bench.json files written before turns have no turn fields: they timed every call."""
    from edge_smw.bench.results import _suite

    written = load_suite("full").to_dict()
    assert (written["calls_per_turn"], written["rewarm_calls"]) == (10, 1)
    older = {k: v for k, v in written.items() if k not in ("calls_per_turn", "rewarm_calls")}
    suite = _suite(older)
    assert (suite.calls_per_turn, suite.rewarm_calls) == (1, 0)
    assert _suite(written) == load_suite("full")


# -- parity tolerances (Polygraphy's rule) -------------------------------------------------

def test_compare_outputs_follows_polygraphy() -> None:
    ref = np.array([[0.9, 0.1], [0.5, 0.5]])
    out = ref + np.array([[0.0, 2e-4], [1e-5, -1e-5]])
    tight = compare_outputs(out, ref, Tolerance(atol=1e-4, stat="max"))
    assert not tight.within_tolerance
    assert tight.max_abs_prob_diff == pytest.approx(2e-4)
    # rtol rescues it: |d|/|ref| = 2e-4 / 0.1 = 2e-3 <= 1e-2 (fails only if both fail)
    assert compare_outputs(out, ref, Tolerance(atol=1e-4, rtol=1e-2, stat="max")
                           ).within_tolerance
    # the mean is within 1e-4 even though the max is not
    assert compare_outputs(out, ref, Tolerance(atol=1e-4, stat="mean")).within_tolerance
    elem = compare_outputs(out, ref, Tolerance(atol=1e-4, stat="elemwise"))
    assert not elem.within_tolerance and elem.elements_outside_tolerance == 1


def test_parity_row_agreement_and_accuracy_deltas() -> None:
    ref = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    out = np.array([[0.7, 0.3], [0.3, 0.7], [0.4, 0.6], [0.1, 0.9]])  # crop 2 flips
    labels = np.array([0, 1, 0, 1])
    row = parity_row("m", "cpu", "int8", out, ref, labels, LEVELS, Tolerance(0.05),
                     reference="torch")
    assert row.top1_agreement == pytest.approx(0.75) and row.disagreements == 1
    assert row.accuracy == pytest.approx(0.75)
    labelled, diff = row.labelled, row.diff
    assert labelled is not None and diff is not None
    assert labelled.reference_accuracy == pytest.approx(1.0)
    assert labelled.accuracy_drop_points == pytest.approx(25.0)
    assert labelled.per_level["low"].accuracy_delta == pytest.approx(-0.5)
    assert labelled.per_level["high"].top1_agreement == pytest.approx(1.0)
    assert diff.max_abs_prob_diff == pytest.approx(0.2)
    assert not diff.within_tolerance
    # bench.json's row is flat: the nested figures are written into it
    written = row.to_dict()
    assert written["accuracy_drop_points"] == pytest.approx(25.0)
    assert written["per_level"]["low"]["accuracy_delta"] == pytest.approx(-0.5)
    assert written["tolerance"]["atol"] == pytest.approx(0.05)
    assert not written["within_tolerance"] and "is_reference" not in written
    # without true levels the row has no accuracy figures at all
    unlabelled = parity_row("m", "cpu", "int8", out, ref, None, LEVELS, Tolerance(0.05),
                            reference="golden")
    assert unlabelled.accuracy is None and "accuracy" not in unlabelled.to_dict()


def test_stratified_sample_keeps_every_level() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    idx = stratified_sample(labels, 10)
    assert len(idx) == 10 and set(labels[idx]) == {0, 1}
    assert list(stratified_sample(labels, 0)) == list(range(100))


# -- MAC counting from an ONNX graph ---------------------------------------------------------

def test_count_macs_on_a_known_graph(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from edge_smw.bench.flops import count_macs

    w1 = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w1")
    w2 = numpy_helper.from_array(np.zeros((8, 1, 3, 3), np.float32), "w2")  # depthwise
    fc = numpy_helper.from_array(np.zeros((8, 5), np.float32), "fc")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=8),
        helper.make_node("GlobalAveragePool", ["c2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        initializer=[w1, w2, fc])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    counted = count_macs(path)
    conv1 = 8 * 16 * 16 * 3 * 3 * 3  # out elements x (C_in/group x k x k)
    conv2 = 8 * 16 * 16 * 1 * 3 * 3
    gemm = 5 * 8
    assert counted.by_op == {"Conv": conv1 + conv2, "Gemm": gemm}
    assert counted.macs == conv1 + conv2 + gemm
    assert counted.uncounted_nodes == []


# -- interleaved timing ------------------------------------------------------------------------

def test_measure_interleaved_times_everyone_and_survives_a_failure() -> None:
    calls: list[str] = []

    def fast(x: object) -> None:
        calls.append("fast")

    def slow(x: object) -> None:
        calls.append("slow")
        sum(range(2000))

    def broken(x: object) -> None:
        raise RuntimeError("boom")

    cands = [lat.Candidate("a", "cpu", "fp32", fast), lat.Candidate("b", "cpu", "int8", slow),
             lat.Candidate("c", "cpu", "fp16", broken)]
    rows = lat.measure_interleaved(cands, [0, 1], 1, warmup=2, min_runs=5, max_runs=7,
                                   seconds=0.001, calls_per_turn=2, rewarm_calls=1)
    assert [r.model for r in rows] == ["a", "b", "c"]
    a, b, c = rows
    assert c.status == "error" and "boom" in str(c.reason) and c.p50_ms is None
    assert not c.measured and "mean_ms" not in c.to_dict()
    for r in (a, b):
        assert r.status == "ok" and r.measured and 5 <= r.runs <= 7
        assert r.p50_ms is not None and r.p90_ms is not None and r.p99_ms is not None
        assert 0 < r.p50_ms <= r.p90_ms <= r.p99_ms
        assert r.fps is not None and r.fps > 0
        assert "reason" not in r.to_dict()
    after_warmup = calls[4:]  # after 2 warm-up calls each
    # in turns: each round, each live candidate makes one untimed call then up to two timed
    # calls back to back; the candidate that starts rotates
    expected, done, order = [], 0, ["fast", "slow"]
    while done < a.runs:
        calls = min(2, a.runs - done)
        expected += [name for name in order for _ in range(1 + calls)]
        order, done = order[::-1], done + calls
    assert after_warmup == expected


def test_a_turn_times_warm_calls_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call right after another candidate's (cold: its caches were evicted) is the untimed
    one of its turn; every timed call is warm. A fake clock makes it exact."""
    now = [0]

    class Clock:
        @staticmethod
        def perf_counter_ns() -> int:
            return now[0]

        @staticmethod
        def perf_counter() -> float:
            return now[0] / 1e9

    last: list[str] = [""]

    def model(name: str):
        def call(x: object) -> None:
            now[0] += 1_000_000 if last[0] == name else 5_000_000  # warm 1 ms, cold 5 ms
            last[0] = name
        return call

    monkeypatch.setattr(lat, "time", Clock)
    cands = [lat.Candidate(n, "cpu", "fp32", model(n)) for n in ("a", "b", "c")]
    for turn in (1, 4):
        rows = lat.measure_interleaved(cands, [0], 1, warmup=1, min_runs=9, max_runs=9,
                                       seconds=1.0, calls_per_turn=turn,
                                       rewarm_calls=1)
        for r in rows:
            assert r.runs == 9 and r.p50_ms == r.p99_ms == r.min_ms == 1.0, (turn, r)
    # the per-call round robin (one timed call, none untimed) times every call cold
    rows = lat.measure_interleaved(cands, [0], 1, warmup=1, min_runs=9, max_runs=9,
                                   seconds=1.0, calls_per_turn=1, rewarm_calls=0)
    assert all(r.p50_ms == r.min_ms == 5.0 for r in rows)


def test_comparisons_give_speedups_on_the_same_backend() -> None:
    def row(model: str, backend: str, precision: str, p50: float,
            kind: str = "ours") -> LatencyRow:
        return LatencyRow(model=model, backend=backend, precision=precision, batch=1,
                          kind=kind, p50_ms=p50)

    rows = [row("m.onnx", "onnxruntime-cpu", "fp32", 15.0),
            row("m.int8.onnx", "onnxruntime-cpu", "int8", 10.0),
            row("torch", "torch-eager", "fp32", 30.0, kind="baseline"),
            row("m.onnx", "onnxruntime-default", "fp32", 16.0, kind="theirs")]
    comps = lat.comparisons(rows)
    int8 = {c.versus: c.speedup for c in comps if c.model == "m.int8.onnx"}
    assert int8["fp32"] == pytest.approx(1.5)
    assert int8["torch-eager"] == pytest.approx(3.0)
    fp32 = {c.versus: c.speedup for c in comps if c.model == "m.onnx"}
    assert fp32["onnxruntime-default"] == pytest.approx(16 / 15, rel=1e-3)
    assert "fp32" not in fp32  # fp32 is not compared with itself


def test_another_cpu_runtime_is_also_judged_against_onnxruntime_fp32() -> None:
    def row(model: str, backend: str, precision: str, p50: float) -> LatencyRow:
        return LatencyRow(model=model, backend=backend, precision=precision, batch=1,
                          kind="ours", p50_ms=p50)

    rows = [row("m.onnx", "onnxruntime-cpu", "fp32", 16.0),
            row("m.int8.onnx", "onnxruntime-cpu", "int8", 10.0),
            row("m.onnx", "openvino-cpu", "fp32", 12.0),
            row("m.int8.onnx", "openvino-cpu", "int8", 8.0)]
    comps = {(c.model, c.backend, c.versus): c for c in lat.comparisons(rows)}
    assert comps[("m.int8.onnx", "openvino-cpu", "fp32")].speedup == pytest.approx(1.5)
    cross = comps[("m.int8.onnx", "openvino-cpu", "onnxruntime-cpu fp32")]
    assert cross.speedup == pytest.approx(2.0) and cross.versus_backend == "onnxruntime-cpu"
    assert comps[("m.onnx", "openvino-cpu", "onnxruntime-cpu fp32")].speedup == \
        pytest.approx(16 / 12, rel=1e-3)
    # onnxruntime's own rows are not compared with themselves under the cross-runtime name
    assert not [k for k in comps if k[1] == "onnxruntime-cpu" and k[2].startswith("onnxrun")]


# -- golden files ---------------------------------------------------------------------------------

def test_golden_round_trip_and_mismatches(tmp_path: Path) -> None:
    contract = PreprocessContract(levels=LEVELS, input_size=16)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    probs = rng.dirichlet([1, 1], 3)
    path = save_golden(tmp_path / "g.npz", pixels, np.array([0, 1, 1]), probs, np.log(probs),
                       contract, "abc123", torch_version="x")
    golden = load_golden(path)
    assert np.array_equal(golden.pixels, pixels) and np.allclose(golden.probabilities, probs)
    assert golden.levels == LEVELS and golden.checkpoint_sha256 == "abc123"
    assert golden.meta["torch_version"] == "x"
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind
    check_compatible(golden, path, contract, "abc123", "m.onnx")
    with pytest.raises(ModelError, match="checkpoint"):
        check_compatible(golden, path, contract, "other", "m.onnx")
    with pytest.raises(ModelError, match="contract"):
        check_compatible(golden, path, PreprocessContract(levels=LEVELS, input_size=32),
                         "abc123", "m.onnx")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="bad.npz"):
        load_golden(tmp_path / "bad.npz")
    with pytest.raises(InputError, match="not found"):
        load_golden(tmp_path / "none.npz")


@pytest.mark.parametrize("content", [b"", b"hello text\n", b"\x93NUMPY not an npz"])
def test_a_file_that_is_no_golden_file_says_so(tmp_path: Path, content: bytes) -> None:
    """Empty, text, anything but save_golden's .npz: one line, not numpy's EOFError or its
    allow_pickle advice."""
    path = tmp_path / "g.onnx"
    path.write_bytes(content)
    with pytest.raises(InputError, match=r"g.onnx is not a golden file written by .*--golden "
                                         "save") as refused:
        load_golden(path)
    assert "pickle" not in str(refused.value)


# -- the gradient-masking verdict (torch-side module: its import needs torch) --------------------

def test_masking_verdict_uses_the_worst_case_over_attacks() -> None:
    pytest.importorskip("torch")
    from edge_smw.bench.robustness import Judge, _masking_check

    def rows(transfer: float, direct: float, fp32_direct: float, torch_pgd: float) -> list:
        def r(model: str, backend: str, attack: str, rate: float) -> RobustnessRow:
            return RobustnessRow(model=model, backend=backend, precision="-", flavour=None,
                                 attack=attack, crafted_on="-", transfer=False, target=None,
                                 budget=4.0, n=10, success_rate=rate)
        return [r("torch", "torch-eager", "pgd-untargeted", torch_pgd),
                r("q.onnx", "cpu", "pgd-untargeted", transfer),
                r("q.onnx", "cpu", "square-untargeted", direct),
                r("f.onnx", "cpu", "square-untargeted", fp32_direct)]

    judges = [Judge("f.onnx", "cpu", "fp32", None, None, runtime=object()),
              Judge("q.onnx", "cpu", "int8", None, None, runtime=object())]
    # transferred images fool int8 as often as torch: a weaker black-box score is no robustness
    (v,) = _masking_check(rows(1.0, 0.4, 0.8, 1.0), judges)
    assert v.int8_worst_case_success == 1.0 and v.fp32_worst_case_success == 1.0
    assert "as easy to fool" in v.verdict and "not robustness" in v.verdict
    # transfer drops but the direct attack still wins: the transfer gap is not robustness
    (v,) = _masking_check(rows(0.3, 0.9, 0.9, 1.0), judges)
    assert "transfer gap is not robustness" in v.verdict
    # every attack does worse on int8: only then is int8 called harder to fool
    (v,) = _masking_check(rows(0.3, 0.3, 0.9, 1.0), judges)
    assert v.verdict.startswith("int8 harder to fool")


def test_features_section_round_trips_and_its_suite_loads() -> None:
    from edge_smw.bench.results import FeaturePassRow, FeaturePassSection

    section = FeaturePassSection(
        rows=[FeaturePassRow("torch eager", 64, 8.0, 8.0, 7.5, 8.5, "torch"),
              FeaturePassRow("edge-smw feature pass", 64, 2.0, 32.0, 30.0, 34.0, "onnxruntime")],
        speedup=4.0, rounds=4, what="pooled", threads=2, detect=False, note="from files")
    written = section.to_dict()
    assert FeaturePassSection.from_dict(written) == section
    assert FeaturePassSection(note="not requested").to_dict() == {"rows": [],
                                                                  "note": "not requested"}
    repo = Path(__file__).resolve().parents[1]
    suite = load_suite(repo / "benchmarks" / "suites" / "features.toml")
    assert suite.features_crops == 512 and suite.detection_frames == 0 and suite.robust_n == 0


class _FaceOnFirstCalls:
    """A detector that finds a face on its first ``calls`` frames only."""

    name = "fake"

    def __init__(self, calls: int) -> None:
        self.left = calls

    def detect(self, image: np.ndarray, max_faces: int = 1) -> list[Any]:
        from types import SimpleNamespace

        self.left -= 1
        return [SimpleNamespace(box=(0, 0, 8, 8), eyes=None)] if self.left >= 0 else []


def test_pipelined_end_to_end_counts_faces_on_measured_frames_only() -> None:
    """The warm-up frame fills the pipeline; a face found there is not a measured frame's
    (it made every pipelined row read 103.3% faces found, and could hide misses)."""
    from types import SimpleNamespace

    from edge_smw.bench import endtoend

    runtime = SimpleNamespace(
        detector=_FaceOnFirstCalls(2), max_faces=1,
        contract=SimpleNamespace(crop_face=lambda image, box, eyes: image[:8, :8]),
        score_batch=lambda crops: [object() for _ in crops])
    jpeg = endtoend.encode_frame(np.zeros((48, 64, 3), np.uint8))
    chunk = endtoend.pipelined(runtime, jpeg, frames=4, warmup=2)
    assert chunk.frames == 4 and chunk.found == 0
    runtime.detector = _FaceOnFirstCalls(3)
    assert endtoend.pipelined(runtime, jpeg, frames=4, warmup=2).found == 1


def test_end_to_end_frame_is_chosen_on_what_the_rows_decode() -> None:
    """A detector must find the face in the JPEG-decoded frame the rows time, not only in the
    frame before encoding."""
    from edge_smw.bench import endtoend

    crops = [np.full((32, 32, 3), 40 * i, np.uint8) for i in range(1, 4)]

    class OnlyExactFrames:
        name = "exact"

        def detect(self, image: np.ndarray, max_faces: int = 1) -> list[int]:
            exact = any(np.array_equal(image, endtoend.make_frame(c, seed=i))
                        for i, c in enumerate(crops))
            return [1] if exact else []

    class Always:
        name = "always"

        def detect(self, image: np.ndarray, max_faces: int = 1) -> list[int]:
            return [1]

    assert endtoend.pick_frame(crops, [OnlyExactFrames()])[1] == -1  # JPEG changed the frame
    assert endtoend.pick_frame(crops, [Always()])[1] == 0


def test_bench_crops_come_from_every_level(tmp_path: Path) -> None:
    """The crops pasted into the end-to-end frame and the detection set, and timed at crop
    scope, are a seeded shuffle of the data, not its first files (the data is ordered by
    level: the first 400 were all one level)."""
    import cv2

    from edge_smw.bench.data import BenchData
    from edge_smw.bench.run import Bench

    paths, labels = [], []
    for level in (0, 1):
        for i in range(10):
            path = tmp_path / f"{level}-{i}.png"
            cv2.imwrite(str(path), np.full((16, 16, 3), 200 * level, np.uint8))
            paths.append(str(path))
            labels.append(level)
    bench = object.__new__(Bench)  # only the data crops_bgr reads
    bench.contract = None
    bench.data = BenchData(np.zeros((20, 4, 4, 3), np.uint8), np.array(labels), paths,
                           ("a", "b"), "test", detect=False)
    crops = bench.crops_bgr(6)
    assert len(crops) == 6 and {int(c[0, 0, 0]) for c in crops} == {0, 200}
    assert [c.tolist() for c in crops] == [c.tolist() for c in bench.crops_bgr(6)]  # seeded
