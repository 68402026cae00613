"""Write benchmarks/RESULTS.md from a bench.json (and the export's export.json).

    .venv/bin/python benchmarks/render_results.py BENCH_DIR [--export EXPORT_DIR]

The figures come straight from bench.json (rendered by the same code as bench.md); the INT8
steps the export took (agreement, accuracy and latency of each) from export.json, and the full
technique-by-technique trade-off table from ``python -m edge_smw.export.tradeoff``'s
tradeoff.md when ``--tradeoff`` names it. The plots are copied to benchmarks/figures/.
Hand-written notes between the ``<!-- notes -->`` and ``<!-- /notes -->`` markers of the
existing RESULTS.md are kept, and so is a trade-off section between ``<!-- tradeoff -->``
markers when no ``--tradeoff`` file is given, the notes on the trade-off tables (the earlier
tables, what each says) between ``<!-- tradeoff-notes -->`` markers, and the Ray engine's
section between ``<!-- ray -->`` markers (``benchmarks/ray_throughput.py``'s figures, written
by hand): a regenerated page loses no hand-written text.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path
from typing import Any

from edge_smw.atomic import write_text
from edge_smw.bench.report import gates_lines, markdown
from edge_smw.bench.results import BenchReport

HERE = Path(__file__).resolve().parent
NOTES = re.compile(r"<!-- notes -->.*?<!-- /notes -->", re.S)
TRADEOFF = re.compile(r"<!-- tradeoff -->.*?<!-- /tradeoff -->", re.S)
TRADEOFF_NOTES = re.compile(r"<!-- tradeoff-notes -->.*?<!-- /tradeoff-notes -->", re.S)
RAY = re.compile(r"<!-- ray -->.*?<!-- /ray -->", re.S)


def _kept(old: str, marker: re.Pattern[str]) -> str:
    found = marker.search(old)
    return found.group(0) if found else ""


def hand_sections(old: str, table: str | None = None) -> dict[str, str]:
    """The hand-written sections of the existing page, by marker, to carry into the new one;
    a new trade-off ``table`` replaces the old one (its notes stay)."""
    trade = (f"<!-- tradeoff -->\n{table.strip()}\n<!-- /tradeoff -->" if table is not None
             else _kept(old, TRADEOFF))
    return {"notes": _kept(old, NOTES) or "<!-- notes -->\n<!-- /notes -->",
            "tradeoff": trade, "tradeoff_notes": _kept(old, TRADEOFF_NOTES),
            "ray": _kept(old, RAY)}


def tradeoff(export: dict[str, Any]) -> str:
    """Issue 10's table: naive int8, each technique, mixed precision, per flavour."""
    flavours = (export.get("int8") or {}).get("flavours") or {}
    if not flavours:
        return "No INT8 steps recorded in export.json.\n"
    lines = []
    for name, info in flavours.items():
        lines += [f"**{name} flavour** (`{info.get('file')}`; settings "
                  f"`{json.dumps(info.get('settings', {}), sort_keys=True)}`)", "",
                  "| Step | Kept | Top-1 agreement | Accuracy | int8 ms p50 | fp32 ms p50 | Note |",
                  "|---|---|---|---|---|---|---|"]
        for s in info.get("steps", []):
            def pct(v: Any) -> str:
                return "-" if v is None else f"{100 * v:.1f}%"

            def ms(v: Any) -> str:
                return "-" if v is None else f"{v:.2f}"

            lines.append(f"| {s.get('step')} | {'yes' if s.get('kept') else 'no'} | "
                         f"{pct(s.get('agreement'))} | {pct(s.get('accuracy'))} | "
                         f"{ms(s.get('latency_ms_p50'))} | {ms(s.get('fp32_latency_ms_p50'))} | "
                         f"{s.get('note') or ''} |")
        lines.append("")
    data = export.get("parity_data") or {}
    lines.append(f"Measured by `edge-smw export` on {data.get('count', '?')} validation crops "
                 "(the bench's parity below uses the test split).")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_dir", type=Path, help="folder with bench.json and the plots")
    parser.add_argument("--export", type=Path, help="export folder with export.json")
    parser.add_argument("--tradeoff", type=Path,
                        help="tradeoff.md from `python -m edge_smw.export.tradeoff`")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--reproduce", default="benchmarks/reproduce.sh",
                        help="the command that made these figures")
    args = parser.parse_args()
    report = BenchReport.from_dict(
        json.loads((args.bench_dir / "bench.json").read_text(encoding="utf-8")))
    figures = args.out.parent / "figures"
    figures.mkdir(exist_ok=True)
    plots = []
    for name in report.plots or []:
        shutil.copyfile(args.bench_dir / name, figures / name)
        plots.append(f"figures/{name}")
    export = None
    if args.export and (args.export / "export.json").is_file():
        export = json.loads((args.export / "export.json").read_text(encoding="utf-8"))
    old = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
    hand = hand_sections(old, args.tradeoff.read_text(encoding="utf-8")
                         if args.tradeoff else None)
    m = report.machine
    body = markdown(report, plots).split("\n", 1)[1]  # drop bench.md's own title
    parts = [
        "# Benchmark results",
        "",
        f"Latest figures on this kind of machine: {m.cpu}, {m.cores_usable} usable "
        f"cores, load average {m.load_average_1_5_15} at the start and "
        f"{m.load_average_end} at the end (1, 5, 15 min), measured "
        f"{m.time_utc}. Reproduce with `{args.reproduce}`.",
        "",
        hand["notes"],
        "",
        "## Targets",
        "",
        "```",
        *gates_lines(report),
        "```",
        "",
    ]
    if export is not None:
        settings = json.dumps(export.get("settings", {}), sort_keys=True)
        parts += ["## INT8: what each step bought (export)", "",
                  f"Export settings: `{settings}`", "", tradeoff(export)]
    if hand["tradeoff"]:
        parts += ["## INT8 accuracy/speed trade-off, technique by technique", "",
                  hand["tradeoff"], ""]
    parts += [hand[key] + "\n" for key in ("tradeoff_notes", "ray") if hand[key]]
    parts.append(body)
    write_text(args.out, "\n".join(parts))
    print(f"wrote {args.out} ({len(plots)} figures in {figures})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
