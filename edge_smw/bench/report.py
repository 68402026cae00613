"""bench.json, bench.md, the PNG plots and the console table, from one ``BenchReport``.

bench.json (``BenchReport.to_dict()``, read back by ``BenchReport.from_dict``) is the stable
interface (CI and scripts read it); bench.md and the table are for people and may change
shape. Every file goes through ``edge_smw.atomic``.

bench.json (``schema_version`` 1), the fields scripts may rely on:

- ``machine``: cpu, cores_usable, cpu_flags, load_average_1_5_15 (and _end), versions, env.
- ``latency``: rows {model, backend, precision, flavour, batch, scope ("network" | "crop"),
  kind ("ours" | "baseline" | "theirs"), intended, status ("ok" | "skipped" | "error"),
  reason, p50_ms, p90_ms, p99_ms, mean_ms, fps, runs, threads, size_mb, peak_rss_mb,
  model_rss_mb}.
- ``comparisons``: rows {model, backend, precision, batch, scope, versus, versus_model,
  p50_ms, versus_p50_ms, speedup (theirs p50 / ours p50), intended}.
- ``end_to_end``: {frame, rows: [{model, backend, mode, threads, fps, faces_found_rate,
  detector, detector_settings, detector_backend, stages: {stage: {p50_ms, p90_ms, p99_ms,
  mean_ms}} (``detect`` in both modes), deployable}]}.
- ``detection``: {frames, per_condition, match_iou, conditions, rows: [{detector, name,
  backend, conditions: {condition: {frames, faces, found, recall, false_positives,
  mean_iou}}, overall: {... , precision}, detect_ms: {p50, p90}}]}.
- ``limit``: {model, macs, gmacs, gflops, by_op, peak_gflops, peak_method, rows: [{model,
  backend, batch, achieved_gflops, fraction_of_peak}]}.
- ``parity``: rows {model, backend, precision, reference, n, top1_agreement,
  max/mean/median/p99_abs_prob_diff, within_tolerance, tolerance, accuracy, mae, spearman,
  accuracy_delta, accuracy_drop_points, mae_delta, per_level: {level: {accuracy, mae,
  count, accuracy_delta, mae_delta, top1_agreement}}, confusion}.
- ``robustness``: rows {model, backend, attack, budget (pixel units /255), n, success_rate,
  clean_success_rate, median_l2, matches_torch (fp32 exports)}; ``robustness_summary``:
  {sample, median_budget: [...], gradient_masking: [...]}.
- ``features``: the training feature pass, {rows: [{candidate ("torch eager" | "edge-smw
  feature pass"), crops, seconds, crops_per_s, crops_per_s_min, crops_per_s_max, runtime}],
  speedup (ours / torch eager), rounds, what, threads, detect, note}.
- ``gates`` and ``targets``: [{name, value, threshold, op, pass (true | false | null when
  no row could be judged), worst}]; ``passed``: no gate failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_smw.atomic import atomic_path, write_json, write_text
from edge_smw.bench.results import (
    FACES_MISSED,
    BenchReport,
    DetectionSection,
    GateVerdict,
    ParityRow,
    RobustnessRow,
)
from edge_smw.tables import text_table

STATUS_MARK = {"ok": "✅", "skipped": "❎", "error": "❌"}


def _f(value: Any, digits: int = 2, pct: bool = False) -> str:
    """Numbers for tables; percentages with one decimal unless ``digits`` < 2 asks for more
    (agreement: 98.99% must not print as 99.0% beside a 99% target)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if pct:
        return f"{100 * value:.{1 if digits >= 2 else 2}f}%"
    return f"{value:.{digits}f}"


# -- the table printed like `yolo benchmark` ----------------------------------------------

@dataclass
class SummaryRow:
    """One (model, backend) of the summary table: its latency row beside its parity row."""

    format: str
    model: str
    backend: str
    status: str
    reason: str | None
    size_mb: float | None
    accuracy: float | None
    mae: float | None
    agreement: float | None
    p50_ms: float | None
    p99_ms: float | None
    fps: float | None
    batch: int


def summary_rows(report: BenchReport) -> list[SummaryRow]:
    """One row per (model, backend): format, status, size, accuracy, MAE, batch-1 latency."""
    latency = [r for r in report.latency if r.scope == "network" and r.kind != "theirs"]
    batch = min((r.batch for r in latency if r.batch), default=1)
    parity = {r.key: r for r in report.parity}
    seen: dict[tuple[str, str], SummaryRow] = {}
    for r in latency:
        if r.batch not in (batch, None) or r.key in seen:
            continue
        p: ParityRow | None = parity.get(r.key)
        status = r.status if r.status != "ok" else (p.status if p else "ok")
        seen[r.key] = SummaryRow(
            format=r.label or r.model, model=r.model, backend=r.backend, status=status,
            reason=r.reason or (p.reason if p else None), size_mb=r.size_mb,
            accuracy=p.accuracy if p else None, mae=p.mae if p else None,
            agreement=p.top1_agreement if p else None, p50_ms=r.p50_ms, p99_ms=r.p99_ms,
            fps=r.fps, batch=batch)
    return list(seen.values())


def console_table(report: BenchReport) -> str:
    rows = summary_rows(report)
    batch = rows[0].batch if rows else 1
    body = [[
        r.format, r.backend, STATUS_MARK.get(r.status, r.status), _f(r.size_mb, 1),
        _f(r.accuracy, pct=True), _f(r.mae, 3), _f(r.agreement, 1, pct=True), _f(r.p50_ms),
        _f(r.p99_ms), _f(r.fps, 1),
    ] for r in rows]
    header = ["Format", "Backend", "Status", "Size (MB)", "Accuracy", "MAE", "Agree",
              f"ms/frame p50 (b{batch})", "p99", "FPS"]
    lines = [text_table(body, header)]
    lines += [f"  {line}" for line in not_run_lines(rows)]
    return "\n".join(lines)


def not_run_lines(rows: list[SummaryRow]) -> list[str]:
    """One line per backend and reason, naming its models: a missing GPU provider skips every
    model alike, and says so once."""
    reasons: dict[tuple[str, str, str], list[str]] = {}
    for r in rows:
        if r.status != "ok":
            key = (r.status, r.backend, r.reason or "no reason given")
            reasons.setdefault(key, []).append(r.model)
    return [f"{STATUS_MARK.get(status, status)} {backend} ({', '.join(models)}): {reason}"
            for (status, backend, reason), models in reasons.items()]


def gates_lines(report: BenchReport) -> list[str]:
    return [verdict_line(g) for g in [*report.gates, *report.targets]]


def verdict_line(g: GateVerdict) -> str:
    kind = "target" if g.target else "gate"
    if g.passed is None:
        verdict = "not judged" if g.not_judged else "skipped"
    else:
        verdict = "pass" if g.passed else ("FAIL" if kind == "gate" else "not met")
    value = "-" if g.value is None else f"{g.value:.4g}"
    notes = [g.note] if g.note else []
    if g.interval:
        lo, hi = g.interval
        notes.append(f"n = {g.n}, 95% interval {lo:.4g}-{hi:.4g}")
    where = f"  ({'; '.join(notes)})" if notes else ""
    who = f"  [{', '.join(f'{k}={v}' for k, v in g.worst.items())}]" if g.worst else ""
    return (f"{kind:6} {g.name:28} {value:>9} {g.op} {g.threshold:<8g} "
            f"{verdict}{who}{where}")


# -- bench.md --------------------------------------------------------------------------------

def detection_markdown(section: DetectionSection) -> list[str]:
    """The detection-set table: recall (false positives) per condition, one column per
    detector."""
    lines = ["", "## Face detection", ""]
    rows = section.rows
    if not rows:
        return lines + [f"Not run: {section.note}"]
    frame = section.frame
    lines.append(f"{section.frames} frames of {frame.width if frame else None}x"
                 f"{frame.height if frame else None} ({section.per_condition} per condition) "
                 f"built from {section.crops} real face crops; a face counts as found at "
                 f"IoU >= {section.match_iou}. Cells: recall (false detections).")
    lines.append("")
    body = []
    for condition in section.conditions or []:
        cells = []
        for r in rows:
            c = r.conditions.get(condition)
            recall = "-" if c is None or c.recall is None else f"{100 * c.recall:.1f}%"
            cells.append(f"{recall} ({c.false_positives if c else 0})")
        body.append([condition, *cells])
    body.append(["**overall**", *[f"**{100 * (r.overall.recall or 0):.1f}%** "
                                  f"({r.overall.false_positives})" for r in rows]])
    body.append(["precision", *[_f(r.overall.precision, pct=True) for r in rows]])
    body.append(["detect p50 / p90 ms", *[
        f"{_f(r.detect_ms.p50 if r.detect_ms else None)} / "
        f"{_f(r.detect_ms.p90 if r.detect_ms else None)}" for r in rows]])
    lines.append(_md_table(["Condition", *[f"{r.detector} ({r.backend})" for r in rows]],
                           body))
    return lines


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _points(value: float | None) -> float | None:
    return None if value is None else 100 * value


def markdown(report: BenchReport, plots: list[str]) -> str:
    m = report.machine
    lines = [
        "# edge-smw bench",
        "",
        f"Command: `{report.command}`",
        "",
        f"Machine: {m.cpu} ({m.arch}), {m.cores_usable} usable cores of "
        f"{m.cores_logical}, load average {m.load_average_1_5_15} at the start, "
        f"{_f(m.memory_total_mb, 0)} MiB; {m.platform}; "
        + ", ".join(f"{k} {v}" for k, v in m.versions.items()) + ".",
        "",
        f"Suite `{report.suite.name}`; export `{report.export_dir}`; reference: "
        f"{report.reference}; data: {report.data.source} (n = {report.data.n}).",
        "",
        "## Summary",
        "",
    ]
    rows = summary_rows(report)
    lines.append(_md_table(
        ["Format", "Backend", "Status", "Size (MB)", "Accuracy", "MAE", "Top-1 agreement",
         "ms p50", "ms p99", "FPS"],
        [[r.format, r.backend, STATUS_MARK.get(r.status, r.status), _f(r.size_mb, 1),
          _f(r.accuracy, pct=True), _f(r.mae, 3), _f(r.agreement, 1, pct=True), _f(r.p50_ms),
          _f(r.p99_ms), _f(r.fps, 1)]
         for r in rows]))
    skipped = not_run_lines(rows)
    if skipped:
        lines += [""] + [f"- {line}" for line in skipped]
    lines += ["", "## Gates and targets", "", "```", *gates_lines(report), "```", ""]

    lines += ["## Latency", "",
              "Network scope: a preprocessed batch in, probabilities out. Crop scope: a decoded "
              "BGR face crop in (resize, colour, normalise included). Candidates were timed "
              f"in one process, {report.interleaving}.", ""]
    lat = [r for r in report.latency if r.status == "ok"]
    lines.append(_md_table(
        ["Model", "Backend", "Kind", "Scope", "Batch", "Threads", "p50 ms", "p90 ms", "p99 ms",
         "FPS", "Runs", "Peak RSS MB (model's share)"],
        [[r.model, r.backend, r.kind, r.scope, r.batch, r.threads,
          _f(r.p50_ms), _f(r.p90_ms), _f(r.p99_ms), _f(r.fps, 1), r.runs,
          "-" if r.peak_rss_mb is None else
          f"{r.peak_rss_mb:.0f} ({_f(r.model_rss_mb, 0)})"] for r in lat]))
    comps = report.comparisons
    if comps:
        lines += ["", "### Speed-ups (p50 of the other / p50 of ours)", ""]
        lines.append(_md_table(
            ["Model", "Backend", "Scope", "Batch", "Versus", "Ours ms", "Theirs ms", "Speed-up"],
            [[c.model, c.backend, c.scope, c.batch, f"{c.versus} ({c.versus_model})",
              _f(c.p50_ms), _f(c.versus_p50_ms), f"{c.speedup:.2f}x"] for c in comps]))

    e2e = report.end_to_end
    lines += ["", "## End to end", ""]
    if e2e.rows:
        frame = e2e.frame
        lines.append(f"Frame: {frame.width if frame else None}x"
                     f"{frame.height if frame else None} JPEG, one real face crop pasted at "
                     f"{frame.face_side if frame else None} px (every detector found it: "
                     f"{frame.detected if frame else None}).")
        lines.append("")
        body = []
        for r in e2e.rows:
            t = r.timing
            stages = t.stages if t else {}
            detect = stages.get("detect")
            body.append([
                r.model, r.backend, r.detector_settings, t.mode if t else None, r.threads,
                {True: "on", False: "off"}.get(r.onnxruntime_spinning, "-"), _f(r.fps, 1),
                _f(t.faces_found_rate if t else None, pct=True),
                f"{_f(detect.p50_ms if detect else None)} / "
                f"{_f(detect.p90_ms if detect else None)}",
                ", ".join(f"{k} {_f(v.p50_ms if v else None)}" for k, v in stages.items())])
        lines.append(_md_table(
            ["Model", "Backend", "Detector", "Mode", "ORT threads", "ORT spinning", "FPS",
             "Faces found", "Detect p50 / p90 ms", "Stages p50 ms"], body))
        if any(r.status == FACES_MISSED for r in e2e.rows):
            lines += ["", "Rows below 100% faces found skipped scoring on the frames their "
                          "detector missed: they time less work, and gates and targets skip "
                          "them."]
    else:
        lines.append(f"Not run: {e2e.note}")

    lines += detection_markdown(report.detection)

    limit = report.limit
    lines += ["", "## Compute limit", ""]
    if limit.rows and limit.counted:
        counted, peak = limit.counted, limit.peak_detail
        lines.append(
            f"{limit.model}: {counted.gmacs:.3f} GMACs ({counted.gflops:.3f} GFLOPs) per "
            f"image, counted from the ONNX graph's {', '.join(counted.by_op)} nodes. Machine "
            f"peak: {limit.peak_gflops:.1f} GFLOP/s ({limit.peak_method}; numpy's BLAS "
            f"{_f(peak.numpy_gflops if peak else None, 1)}), in this run.")
        lines.append("")
        lines.append(_md_table(
            ["Model", "Backend", "Batch", "Achieved GFLOP/s", "Fraction of fp32 peak"],
            [[r.model, r.backend, r.batch, _f(r.achieved_gflops, 1),
              _f(r.fraction_of_peak, pct=True)] for r in limit.rows]))
    else:
        lines.append(f"Not computed: {limit.note}")

    lines += ["", "## Parity", ""]
    par = [p for p in report.parity if p.status == "ok" and p.diff is not None]
    if par:
        lines.append(_md_table(
            ["Model", "Backend", "n", "Top-1 agree", "Near decision (error sd; flips "
             "expected)", "max abs dp", "mean abs dp", "p99 abs dp", "Tolerance", "Accuracy",
             "Δ acc (pts)", "MAE", "Δ MAE", "Spearman"],
            [_parity_cells(p) for p in par]))
        lines += ["", "Near decision: crops whose reference top-two log-odds gap is under the "
                  "spread (sd) of the model's change to it; flips expected: what a normal "
                  "error of that spread gives on these crops (`edge_smw.stats.DecisionMargins`)."]
        first = par[0].labelled
        levels = list(first.per_level) if first else []
        if levels:
            lines += ["", "Per level (accuracy, Δ vs reference, agreement):", ""]
            lines.append(_md_table(
                ["Model", "Backend", *levels],
                [[p.model, p.backend, *[_level_cell(p, lv) for lv in levels]] for p in par]))

    feats = report.features
    lines += ["", "## Training feature pass", ""]
    if feats.rows:
        lines.append(f"Crops/s from the crop files ({feats.note}), {feats.threads} threads, "
                     f"{feats.rounds} alternating chunks; features: {feats.what}.")
        lines.append("")
        lines.append(_md_table(
            ["Candidate", "Runtime", "Crops", "Crops/s", "Per-chunk range"],
            [[r.candidate, r.runtime, r.crops, _f(r.crops_per_s, 1),
              f"{_f(r.crops_per_s_min, 1)}-{_f(r.crops_per_s_max, 1)}"] for r in feats.rows]))
        if feats.speedup is not None:
            lines += ["", f"edge-smw's pass / torch eager: {feats.speedup:.2f}x"]
    else:
        lines.append(f"Not run: {feats.note or 'not requested'}")

    rob = report.robustness
    summary = report.robustness_summary
    lines += ["", "## Fooling-image robustness", ""]
    if rob:
        sample = summary.sample.to_dict() if summary.sample else None
        lines.append(f"Sample: {sample}; PGD made on torch fp32, judged by each "
                     "model; Square (black-box) run on each exported model directly. Cells: "
                     "success rate (median L2 size of the successful perturbations, in pixel "
                     "units over the whole crop).")
        lines.append("")
        lines.append(_robustness_pivot(rob))
        med = summary.median_budget or []
        if med:
            lines += ["", "Median budget to flip:", ""]
            lines.append(_md_table(
                ["Attack", "Model", "Backend", "Median /255", "Flipped at max budget"],
                [[r.attack, r.model, r.backend,
                  _f(r.median_budget, 0) if r.median_budget is not None else r.note,
                  _f(r.flipped_at_max_budget, pct=True)] for r in med]))
        masking = summary.gradient_masking or []
        if masking:
            lines += ["", "Gradient-masking check (int8):", ""]
            lines.append(_md_table(
                ["Model", "Budget", "PGD transferred", "Black-box on int8", "Black-box on fp32",
                 "Worst case int8 / fp32", "Verdict"],
                [[r.model, f"{r.budget:g}", _f(r.pgd_transfer_success, pct=True),
                  _f(r.blackbox_success, pct=True), _f(r.fp32_blackbox_success, pct=True),
                  f"{_f(r.int8_worst_case_success, pct=True)} / "
                  f"{_f(r.fp32_worst_case_success, pct=True)}",
                  r.verdict] for r in masking]))
    else:
        lines.append(f"Not run: {summary.note}")
    if report.skipped_models:
        lines += ["", "## Files not benched", ""]
        lines += [f"- {s.file}: {s.reason}" for s in report.skipped_models]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _parity_cells(p: ParityRow) -> list[Any]:
    d, lab = p.diff, p.labelled
    assert d is not None
    margins = p.decision_margins
    near = ("-" if margins is None else
            f"{margins.near} ({margins.error_sd:.2f}; {margins.expected:.1f})")
    return [p.model, p.backend, p.n, _f(p.top1_agreement, 1, pct=True), near,
            f"{d.max_abs_prob_diff:.2e}", f"{d.mean_abs_prob_diff:.2e}",
            f"{d.p99_abs_prob_diff:.2e}",
            ("pass" if d.within_tolerance else "FAIL")
            + f" ({d.tolerance.stat} atol {d.tolerance.atol:g})",
            _f(p.accuracy, pct=True), _f(_points(lab.accuracy_delta if lab else None)),
            _f(p.mae, 3), _f(lab.mae_delta if lab else None, 3),
            _f(lab.spearman if lab else None, 3)]


def _level_cell(p: ParityRow, level: str) -> str:
    assert p.labelled is not None
    stats = p.labelled.per_level[level]
    return (f"{_f(stats.accuracy, pct=True)} ({_f(_points(stats.accuracy_delta))}), "
            f"{_f(stats.top1_agreement, pct=True)}")


def _cell(value: tuple[float, float | None] | None) -> str:
    if value is None:
        return "-"
    rate, l2 = value
    return _f(rate, pct=True) + ("" if l2 is None else f" (L2 {l2:.0f})")


@dataclass
class _PivotLine:
    n: int
    by_budget: dict[float, tuple[float, float | None]]
    clean: list[float]
    match: list[float]


def _robustness_pivot(rows: list[RobustnessRow]) -> str:
    """Success rate per budget in columns: one line per (attack, model, backend)."""
    budgets = sorted({r.budget for r in rows})
    groups: dict[tuple[str, str, str], _PivotLine] = {}
    for r in rows:
        g = groups.setdefault((r.attack, r.model, r.backend), _PivotLine(r.n, {}, [], []))
        g.by_budget[r.budget] = (r.success_rate, r.median_l2)
        if r.clean_success_rate is not None:
            g.clean.append(r.clean_success_rate)
        if r.matches_torch is not None:
            g.match.append(r.matches_torch)
    body = []
    for (attack, model, backend), g in groups.items():
        body.append([attack, model, backend, g.n,
                     *[_cell(g.by_budget.get(b)) for b in budgets],
                     _f(max(g.clean) if g.clean else None, pct=True),
                     _f(min(g.match) if g.match else None, pct=True)])
    header = ["Attack", "Model", "Backend", "n", *[f"{b:g}/255" for b in budgets],
              "Goal met before attack", "Matches torch (min)"]
    return _md_table(header, body)


# -- plots -----------------------------------------------------------------------------------

def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def write_plots(report: BenchReport, out: Path) -> list[str]:
    """PNG figures (matplotlib, Agg); returns their file names. Skipped without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        return []
    names: list[str] = []
    lat = [r for r in report.latency if r.status == "ok" and r.scope == "network"]
    b1 = min((r.batch for r in lat if r.batch is not None), default=None)
    rows = [r for r in lat if r.batch == b1]
    if rows:
        fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(rows)))
        labels = [f"{r.model} @ {r.backend}" for r in rows]
        p50 = [r.p50_ms for r in rows]
        ax.barh(labels, p50, color=["#888" if r.kind != "ours" else "#3a7" for r in rows])
        ax.errorbar(p50, labels, xerr=[[0] * len(rows),
                                       [r.p99_ms - r.p50_ms for r in rows]],  # type: ignore[operator]
                    fmt="none", ecolor="k", capsize=3)
        ax.invert_yaxis()
        ax.set_xlabel(f"ms per call at batch {b1} (bar p50, whisker p99)")
        ax.set_title("Latency (interleaved, one process)")
        _save(fig, out / "latency.png")
        plt.close(fig)
        names.append("latency.png")
    batches = sorted({r.batch for r in lat if r.batch is not None})
    if len(batches) > 1:
        fig, ax = plt.subplots(figsize=(7, 4))
        for key in sorted({r.key for r in lat}):
            pts = sorted((r.batch, r.fps) for r in lat if r.key == key)  # type: ignore[type-var]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=" @ ".join(key))
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_xlabel("batch")
        ax.set_ylabel("images / s")
        ax.set_title("Throughput vs batch size")
        ax.legend(fontsize=7)
        _save(fig, out / "throughput.png")
        plt.close(fig)
        names.append("throughput.png")
    rob = report.robustness
    attacks = sorted({r.attack for r in rob})
    if attacks:
        fig, axes = plt.subplots(1, len(attacks), figsize=(4.5 * len(attacks), 3.8),
                                 squeeze=False)
        for ax, attack in zip(axes[0], attacks, strict=True):
            sel = [r for r in rob if r.attack == attack]
            for key in sorted({(r.model, r.backend) for r in sel}):
                pts = sorted((r.budget, r.success_rate) for r in sel
                             if (r.model, r.backend) == key)
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o",
                        label=" @ ".join(key))
            ax.set_xscale("log", base=2)
            ticks = sorted({r.budget for r in sel})
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
            ax.set_xlabel("L-inf budget (/255)")
            ax.set_ylabel("success rate (%)")
            ax.set_ylim(-3, 103)
            ax.set_title(attack)
            ax.legend(fontsize=6)
        fig.suptitle("Fooling images: success vs budget", y=1.03)
        _save(fig, out / "robustness.png")
        plt.close(fig)
        names.append("robustness.png")
    e2e = [r for r in report.end_to_end.rows if r.fps and r.timing]
    if e2e:
        fig, ax = plt.subplots(figsize=(7, 0.6 + 0.5 * len(e2e)))
        labels = [f"{r.model} {r.timing.mode}, {r.threads} thr"  # type: ignore[union-attr]
                  + ("" if r.onnxruntime_spinning else ", no spin") for r in e2e]
        ax.barh(labels, [r.fps for r in e2e], color="#37a")
        ax.axvline(30, color="r", linestyle="--", label="30 frames/s target")
        ax.invert_yaxis()
        ax.set_xlabel("frames / s (640x480, decode -> detect -> crop -> preprocess -> infer)")
        ax.legend(fontsize=7)
        _save(fig, out / "end_to_end.png")
        plt.close(fig)
        names.append("end_to_end.png")
    return names


def write_report(report: BenchReport, out: Path, plots: bool = True) -> dict[str, Path]:
    """bench.json, bench.md and the plots in ``out``; records the plots' names in the report."""
    out.mkdir(parents=True, exist_ok=True)
    names = write_plots(report, out) if plots else []
    report.plots = names
    paths = {"json": write_json(out / "bench.json", report.to_dict()),
             "md": write_text(out / "bench.md", markdown(report, names))}
    for name in names:
        paths[name] = out / name
    return paths
