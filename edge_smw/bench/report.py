"""bench.json, bench.md, the PNG plots and the console table, from one report dict.

bench.json is the stable interface (CI and scripts read it); bench.md and the table are for
people and may change shape. Every file goes through ``edge_smw.atomic``.

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
- ``gates`` and ``targets``: [{name, value, threshold, op, pass (true | false | null when
  no row could be judged), worst}]; ``passed``: no gate failed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edge_smw.atomic import atomic_path, write_json, write_text
from edge_smw.tables import text_table

SCHEMA_VERSION = 1
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

def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, backend): format, status, size, accuracy, MAE, batch-1 latency."""
    latency = [r for r in report["latency"] if r["scope"] == "network" and r["kind"] != "theirs"]
    batch = min((r["batch"] for r in latency if r.get("batch")), default=1)
    parity = {(r["model"], r["backend"]): r for r in report["parity"]}
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for r in latency:
        if r.get("batch") not in (batch, None):
            continue
        key = (r["model"], r["backend"])
        if key in seen:
            continue
        p = parity.get(key, {})
        status = r["status"] if r["status"] != "ok" else p.get("status", "ok")
        seen[key] = {
            "format": r.get("label") or r["model"], "model": r["model"], "backend": r["backend"],
            "status": status, "reason": r.get("reason") or p.get("reason"),
            "size_mb": r.get("size_mb"), "accuracy": p.get("accuracy"), "mae": p.get("mae"),
            "agreement": p.get("top1_agreement"), "p50_ms": r.get("p50_ms"),
            "p99_ms": r.get("p99_ms"), "fps": r.get("fps"), "batch": batch,
        }
    return list(seen.values())


def console_table(report: dict[str, Any]) -> str:
    rows = summary_rows(report)
    batch = rows[0]["batch"] if rows else 1
    body = [[
        r["format"], r["backend"], STATUS_MARK.get(r["status"], r["status"]),
        _f(r["size_mb"], 1), _f(r["accuracy"], pct=True), _f(r["mae"], 3),
        _f(r["agreement"], 1, pct=True), _f(r["p50_ms"]), _f(r["p99_ms"]), _f(r["fps"], 1),
    ] for r in rows]
    header = ["Format", "Backend", "Status", "Size (MB)", "Accuracy", "MAE", "Agree",
              f"ms/frame p50 (b{batch})", "p99", "FPS"]
    lines = [text_table(body, header)]
    lines += [f"  {line}" for line in not_run_lines(rows)]
    return "\n".join(lines)


def not_run_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per backend and reason, naming its models: a missing GPU provider skips every
    model alike, and says so once."""
    reasons: dict[tuple[str, str, str], list[str]] = {}
    for r in rows:
        if r["status"] != "ok":
            key = (r["status"], r["backend"], r.get("reason") or "no reason given")
            reasons.setdefault(key, []).append(r["model"])
    return [f"{STATUS_MARK.get(status, status)} {backend} ({', '.join(models)}): {reason}"
            for (status, backend, reason), models in reasons.items()]


def gates_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for g in report["gates"] + report.get("targets", []):
        kind = "target" if g.get("target") else "gate"
        if g["pass"] is None:
            verdict = "not judged" if str(g.get("note", "")).startswith("not judged") \
                else "skipped"
        else:
            verdict = "pass" if g["pass"] else ("FAIL" if kind == "gate" else "not met")
        value = "-" if g["value"] is None else f"{g['value']:.4g}"
        notes = [g["note"]] if g.get("note") else []
        if g.get("interval"):
            lo, hi = g["interval"]
            notes.append(f"n = {g['n']}, 95% interval {lo:.4g}-{hi:.4g}")
        where = f"  ({'; '.join(notes)})" if notes else ""
        worst = g.get("worst")
        who = f"  [{', '.join(f'{k}={v}' for k, v in worst.items())}]" if worst else ""
        lines.append(f"{kind:6} {g['name']:28} {value:>9} {g['op']} {g['threshold']:<8g} "
                     f"{verdict}{who}{where}")
    return lines


# -- bench.md --------------------------------------------------------------------------------

def detection_markdown(section: dict[str, Any]) -> list[str]:
    """The detection-set table: recall (false positives) per condition, one column per
    detector."""
    lines = ["", "## Face detection", ""]
    rows = section.get("rows") or []
    if not rows:
        return lines + [f"Not run: {section.get('note')}"]
    lines.append(f"{section['frames']} frames of {section['frame']['width']}x"
                 f"{section['frame']['height']} ({section['per_condition']} per condition) "
                 f"built from {section['crops']} real face crops; a face counts as found at "
                 f"IoU >= {section['match_iou']}. Cells: recall (false detections).")
    lines.append("")
    body = []
    for condition in section["conditions"]:
        cells = []
        for r in rows:
            c = r["conditions"].get(condition) or {}
            recall = "-" if c.get("recall") is None else f"{100 * c['recall']:.1f}%"
            cells.append(f"{recall} ({c.get('false_positives', 0)})")
        body.append([condition, *cells])
    body.append(["**overall**", *[f"**{100 * (r['overall']['recall'] or 0):.1f}%** "
                                  f"({r['overall']['false_positives']})" for r in rows]])
    body.append(["precision", *[_f(r["overall"].get("precision"), pct=True) for r in rows]])
    body.append(["detect p50 / p90 ms", *[
        f"{_f((r.get('detect_ms') or {}).get('p50'))} / {_f((r.get('detect_ms') or {}).get('p90'))}"
        for r in rows]])
    lines.append(_md_table(["Condition", *[f"{r['detector']} ({r['backend']})" for r in rows]],
                           body))
    return lines


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def markdown(report: dict[str, Any], plots: list[str]) -> str:
    m = report["machine"]
    lines = [
        "# edge-smw bench",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {m['cpu']} ({m['arch']}), {m['cores_usable']} usable cores of "
        f"{m['cores_logical']}, load average {m.get('load_average_1_5_15')} at the start, "
        f"{_f(m.get('memory_total_mb'), 0)} MiB; {m['platform']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        "",
        f"Suite `{report['suite']['name']}`; export `{report['export_dir']}`; reference: "
        f"{report['reference']}; data: {report['data'].get('source')} "
        f"(n = {report['data'].get('n')}).",
        "",
        "## Summary",
        "",
    ]
    rows = summary_rows(report)
    lines.append(_md_table(
        ["Format", "Backend", "Status", "Size (MB)", "Accuracy", "MAE", "Top-1 agreement",
         "ms p50", "ms p99", "FPS"],
        [[r["format"], r["backend"], STATUS_MARK.get(r["status"], r["status"]),
          _f(r["size_mb"], 1), _f(r["accuracy"], pct=True), _f(r["mae"], 3),
          _f(r["agreement"], 1, pct=True), _f(r["p50_ms"]), _f(r["p99_ms"]), _f(r["fps"], 1)]
         for r in rows]))
    skipped = not_run_lines(rows)
    if skipped:
        lines += [""] + [f"- {line}" for line in skipped]
    lines += ["", "## Gates and targets", "", "```", *gates_lines(report), "```", ""]

    lines += ["## Latency", "",
              "Network scope: a preprocessed batch in, probabilities out. Crop scope: a decoded "
              "BGR face crop in (resize, colour, normalise included). Candidates were timed "
              "interleaved, round-robin, in one process.", ""]
    lat = [r for r in report["latency"] if r["status"] == "ok"]
    lines.append(_md_table(
        ["Model", "Backend", "Kind", "Scope", "Batch", "Threads", "p50 ms", "p90 ms", "p99 ms",
         "FPS", "Runs", "Peak RSS MB (model's share)"],
        [[r["model"], r["backend"], r["kind"], r["scope"], r["batch"], r["threads"],
          _f(r["p50_ms"]), _f(r["p90_ms"]), _f(r["p99_ms"]), _f(r["fps"], 1), r["runs"],
          "-" if r.get("peak_rss_mb") is None else
          f"{r['peak_rss_mb']:.0f} ({_f(r.get('model_rss_mb'), 0)})"] for r in lat]))
    comps = report["comparisons"]
    if comps:
        lines += ["", "### Speed-ups (p50 of the other / p50 of ours)", ""]
        lines.append(_md_table(
            ["Model", "Backend", "Scope", "Batch", "Versus", "Ours ms", "Theirs ms", "Speed-up"],
            [[c["model"], c["backend"], c["scope"], c["batch"],
              f"{c['versus']} ({c['versus_model']})", _f(c["p50_ms"]),
              _f(c["versus_p50_ms"]), f"{c['speedup']:.2f}x"] for c in comps]))

    e2e = report["end_to_end"]
    lines += ["", "## End to end", ""]
    if e2e.get("rows"):
        frame = e2e.get("frame", {})
        lines.append(f"Frame: {frame.get('width')}x{frame.get('height')} JPEG, one real face "
                     f"crop pasted at {frame.get('face_side')} px (every detector found it: "
                     f"{frame.get('detected')}).")
        lines.append("")
        lines.append(_md_table(
            ["Model", "Backend", "Detector", "Mode", "ORT threads", "ORT spinning", "FPS",
             "Faces found", "Detect p50 / p90 ms", "Stages p50 ms"],
            [[r["model"], r["backend"], r.get("detector_settings", "haar"), r["mode"],
              r["threads"], {True: "on", False: "off"}.get(r.get("onnxruntime_spinning"), "-"),
              _f(r["fps"], 1),
              _f(r.get("faces_found_rate"), pct=True),
              "{} / {}".format(_f((r["stages"].get("detect") or {}).get("p50_ms")),
                               _f((r["stages"].get("detect") or {}).get("p90_ms"))),
              ", ".join(f"{k} {_f((v or {}).get('p50_ms'))}" for k, v in r["stages"].items())]
             for r in e2e["rows"]]))
    else:
        lines.append(f"Not run: {e2e.get('note')}")

    lines += detection_markdown(report.get("detection") or {})

    limit = report["limit"]
    lines += ["", "## Compute limit", ""]
    if limit.get("rows"):
        lines.append(
            f"{limit['model']}: {limit['gmacs']:.3f} GMACs ({limit['gflops']:.3f} GFLOPs) per "
            f"image, counted from the ONNX graph's {', '.join(limit['by_op'])} nodes. Machine "
            f"peak: {limit['peak_gflops']:.1f} GFLOP/s ({limit['peak_method']}; numpy's BLAS "
            f"{_f((limit.get('peak_detail') or {}).get('numpy_gflops'), 1)}), in this run.")
        lines.append("")
        lines.append(_md_table(
            ["Model", "Backend", "Batch", "Achieved GFLOP/s", "Fraction of fp32 peak"],
            [[r["model"], r["backend"], r["batch"], _f(r["achieved_gflops"], 1),
              _f(r["fraction_of_peak"], pct=True)] for r in limit["rows"]]))
    else:
        lines.append(f"Not computed: {limit.get('note')}")

    lines += ["", "## Parity", ""]
    par = [p for p in report["parity"] if p["status"] == "ok"]
    if par:
        lines.append(_md_table(
            ["Model", "Backend", "n", "Top-1 agree", "max abs dp", "mean abs dp", "p99 abs dp",
             "Tolerance", "Accuracy", "Δ acc (pts)", "MAE", "Δ MAE", "Spearman"],
            [[p["model"], p["backend"], p["n"], _f(p["top1_agreement"], 1, pct=True),
              f"{p['max_abs_prob_diff']:.2e}", f"{p['mean_abs_prob_diff']:.2e}",
              f"{p['p99_abs_prob_diff']:.2e}",
              ("pass" if p["within_tolerance"] else "FAIL")
              + f" ({p['tolerance']['stat']} atol {p['tolerance']['atol']:g})",
              _f(p.get("accuracy"), pct=True),
              _f(None if p.get("accuracy_delta") is None else 100 * p["accuracy_delta"]),
              _f(p.get("mae"), 3), _f(p.get("mae_delta"), 3), _f(p.get("spearman"), 3)]
             for p in par]))
        levels = list(next(iter(par)).get("per_level", {}))
        if levels:
            lines += ["", "Per level (accuracy, Δ vs reference, agreement):", ""]
            lines.append(_md_table(
                ["Model", "Backend", *levels],
                [[p["model"], p["backend"], *[
                    f"{_f(p['per_level'][lv]['accuracy'], pct=True)} "
                    f"({_f(None if p['per_level'][lv]['accuracy_delta'] is None else 100 * p['per_level'][lv]['accuracy_delta'])}), "  # noqa: E501
                    f"{_f(p['per_level'][lv]['top1_agreement'], pct=True)}" for lv in levels]]
                 for p in par]))

    rob = report["robustness"]
    summary = report.get("robustness_summary") or {}
    lines += ["", "## Fooling-image robustness", ""]
    if rob:
        lines.append(f"Sample: {summary.get('sample')}; PGD made on torch fp32, judged by each "
                     "model; Square (black-box) run on each exported model directly. Cells: "
                     "success rate (median L2 size of the successful perturbations, in pixel "
                     "units over the whole crop).")
        lines.append("")
        lines.append(_robustness_pivot(rob))
        med = summary.get("median_budget") or []
        if med:
            lines += ["", "Median budget to flip:", ""]
            lines.append(_md_table(
                ["Attack", "Model", "Backend", "Median /255", "Flipped at max budget"],
                [[r["attack"], r["model"], r["backend"],
                  _f(r["median_budget"], 0) if r["median_budget"] is not None else r["note"],
                  _f(r["flipped_at_max_budget"], pct=True)] for r in med]))
        masking = summary.get("gradient_masking") or []
        if masking:
            lines += ["", "Gradient-masking check (int8):", ""]
            lines.append(_md_table(
                ["Model", "Budget", "PGD transferred", "Black-box on int8", "Black-box on fp32",
                 "Worst case int8 / fp32", "Verdict"],
                [[r["model"], f"{r['budget']:g}", _f(r["pgd_transfer_success"], pct=True),
                  _f(r["blackbox_success"], pct=True), _f(r["fp32_blackbox_success"], pct=True),
                  f"{_f(r.get('int8_worst_case_success'), pct=True)} / "
                  f"{_f(r.get('fp32_worst_case_success'), pct=True)}",
                  r["verdict"]] for r in masking]))
    else:
        lines.append(f"Not run: {summary.get('note')}")
    if report.get("skipped_models"):
        lines += ["", "## Files not benched", ""]
        lines += [f"- {s['file']}: {s['reason']}" for s in report["skipped_models"]]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _cell(value: tuple[float, float | None] | None) -> str:
    if value is None:
        return "-"
    rate, l2 = value
    return _f(rate, pct=True) + ("" if l2 is None else f" (L2 {l2:.0f})")


def _robustness_pivot(rows: list[dict[str, Any]]) -> str:
    """Success rate per budget in columns: one line per (attack, model, backend)."""
    budgets = sorted({r["budget"] for r in rows})
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in rows:
        g = groups.setdefault((r["attack"], r["model"], r["backend"]),
                              {"n": r["n"], "by": {}, "clean": [], "match": []})
        g["by"][r["budget"]] = (r["success_rate"], r.get("median_l2"))
        if r.get("clean_success_rate") is not None:
            g["clean"].append(r["clean_success_rate"])
        if r.get("matches_torch") is not None:
            g["match"].append(r["matches_torch"])
    body = []
    for (attack, model, backend), g in groups.items():
        body.append([attack, model, backend, g["n"],
                     *[_cell(g["by"].get(b)) for b in budgets],
                     _f(max(g["clean"]) if g["clean"] else None, pct=True),
                     _f(min(g["match"]) if g["match"] else None, pct=True)])
    header = ["Attack", "Model", "Backend", "n", *[f"{b:g}/255" for b in budgets],
              "Goal met before attack", "Matches torch (min)"]
    return _md_table(header, body)


# -- plots -----------------------------------------------------------------------------------

def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def write_plots(report: dict[str, Any], out: Path) -> list[str]:
    """PNG figures (matplotlib, Agg); returns their file names. Skipped without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        return []
    names: list[str] = []
    lat = [r for r in report["latency"] if r["status"] == "ok" and r["scope"] == "network"]
    b1 = min((r["batch"] for r in lat), default=None)
    rows = [r for r in lat if r["batch"] == b1]
    if rows:
        fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(rows)))
        labels = [f"{r['model']} @ {r['backend']}" for r in rows]
        p50 = [r["p50_ms"] for r in rows]
        ax.barh(labels, p50, color=["#888" if r["kind"] != "ours" else "#3a7" for r in rows])
        ax.errorbar(p50, labels, xerr=[[0] * len(rows),
                                       [r["p99_ms"] - r["p50_ms"] for r in rows]],
                    fmt="none", ecolor="k", capsize=3)
        ax.invert_yaxis()
        ax.set_xlabel(f"ms per call at batch {b1} (bar p50, whisker p99)")
        ax.set_title("Latency (interleaved, one process)")
        _save(fig, out / "latency.png")
        plt.close(fig)
        names.append("latency.png")
    batches = sorted({r["batch"] for r in lat})
    if len(batches) > 1:
        fig, ax = plt.subplots(figsize=(7, 4))
        for key in sorted({(r["model"], r["backend"]) for r in lat}):
            pts = sorted((r["batch"], r["fps"]) for r in lat if (r["model"], r["backend"]) == key)
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
    rob = report["robustness"]
    attacks = sorted({r["attack"] for r in rob})
    if attacks:
        fig, axes = plt.subplots(1, len(attacks), figsize=(4.5 * len(attacks), 3.8),
                                 squeeze=False)
        for ax, attack in zip(axes[0], attacks, strict=True):
            sel = [r for r in rob if r["attack"] == attack]
            for key in sorted({(r["model"], r["backend"]) for r in sel}):
                pts = sorted((r["budget"], r["success_rate"]) for r in sel
                             if (r["model"], r["backend"]) == key)
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o",
                        label=" @ ".join(key))
            ax.set_xscale("log", base=2)
            ticks = sorted({r["budget"] for r in sel})
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
    e2e = [r for r in report["end_to_end"].get("rows", []) if r.get("fps")]
    if e2e:
        fig, ax = plt.subplots(figsize=(7, 0.6 + 0.5 * len(e2e)))
        labels = [f"{r['model']} {r['mode']}, {r['threads']} thr"
                  + ("" if r.get("onnxruntime_spinning", True) else ", no spin") for r in e2e]
        ax.barh(labels, [r["fps"] for r in e2e], color="#37a")
        ax.axvline(30, color="r", linestyle="--", label="30 frames/s target")
        ax.invert_yaxis()
        ax.set_xlabel("frames / s (640x480, decode -> detect -> crop -> preprocess -> infer)")
        ax.legend(fontsize=7)
        _save(fig, out / "end_to_end.png")
        plt.close(fig)
        names.append("end_to_end.png")
    return names


def write_report(report: dict[str, Any], out: Path, plots: bool = True) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    names = write_plots(report, out) if plots else []
    report["plots"] = names
    paths = {"json": write_json(out / "bench.json", report),
             "md": write_text(out / "bench.md", markdown(report, names))}
    for name in names:
        paths[name] = out / name
    return paths
