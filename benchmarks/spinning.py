"""Intra-op spinning, side by side: what ``SessionSettings.spinning`` buys and costs.

    .venv/bin/python benchmarks/spinning.py EXPORT_DIR [--runs 400] [--rounds 3] [--threads 2]

Why: onnxruntime's threads either sleep between the parallel steps of a run (spinning off:
a wake-up at every layer) or spin-wait for the next step. Its default keeps them spinning
after the run returns too, which steals the cores from whatever runs next (another model, the
face detector, a decode thread); edge-smw's sessions spin inside a run and stop when it
returns (``session.force_spinning_stop``). Every model of the export folder (``model.onnx``,
``model.int8.onnx``, ...) is opened twice, spinning off and on, and all sessions are timed at
batch 1 in one process, in the bench's turns (``export.parity.latency``: the full suite's
turn). Each round prints p50 per session; the table gives the median over rounds. Then, per
setting and onnxruntime's default, the CPU time the process burns in the 0.3 s after a call
(what the next model loses).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from edge_smw.artifacts.sessions import SessionSettings, load_session
from edge_smw.cpu import cpu_flags, cpu_model
from edge_smw.errors import EdgeSmwError
from edge_smw.export.parity import latency
from edge_smw.metadata import INPUT_NAME, ModelInfo

SETTINGS = {"off": False, "on": True}
IDLE_SECONDS = 0.3


def idle_cpu_seconds(session: object, feed: dict[str, np.ndarray]) -> float:
    """CPU time this process uses in the ``IDLE_SECONDS`` after one call."""
    session.run(None, feed)
    start = time.process_time()
    time.sleep(IDLE_SECONDS)
    return time.process_time() - start


def onnxruntime_default(path: Path, threads: int) -> object:
    """A session with onnxruntime's own spinning (on, also after the run): the comparison."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    try:
        run()
    except EdgeSmwError as exc:  # a bad folder, model or --threads: one line, no traceback
        raise SystemExit(f"error: {exc}") from None


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--runs", type=int, default=400, help="timed calls per session and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.runs < 1 or args.rounds < 1:
        raise SystemExit(f"--runs ({args.runs}) and --rounds ({args.rounds}) must be >= 1")
    models = sorted(p for p in args.export_dir.glob("model*.onnx"))
    if not models:
        raise SystemExit(f"{args.export_dir}: no model*.onnx here; pass an `edge-smw export` "
                         "folder")
    flags = " ".join(name for name, present in cpu_flags().items() if present)
    print(f"{cpu_model()}, CPU flags: {flags}; {args.threads} threads, batch 1")
    names = {f"{m.name} spinning {label}": (m, SessionSettings(threads=args.threads,
                                                              spinning=spinning))
             for m in models for label, spinning in SETTINGS.items()}
    size = ModelInfo.from_file(models[0]).contract.input_size
    timed = latency({name: m for name, (m, _) in names.items()}, size, runs=args.runs,
                    threads=args.threads, rounds=args.rounds,
                    settings={name: how for name, (_, how) in names.items()})
    per_round = {name: t["round_p50_ms"] for name, t in timed.items()}
    for r in range(args.rounds):
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[r]:.2f} ms" for n, v in per_round.items()))
    p50 = {name: statistics.median(v) for name, v in per_round.items()}
    print("\n| model | p50 spinning off | p50 spinning on (edge-smw) | on vs off |")
    print("|---|---|---|---|")
    for m in models:
        off, on = p50[f"{m.name} spinning off"], p50[f"{m.name} spinning on"]
        print(f"| {m.name} | {off:.2f} ms | {on:.2f} ms | {off / on:.2f}x |")
    reference = "model.onnx" if args.export_dir / "model.onnx" in models else models[0].name
    for m in models:
        if m.name == reference:
            continue
        ratios = []
        for label in SETTINGS:
            each = [a / b for a, b in zip(per_round[f"{reference} spinning {label}"],
                                          per_round[f"{m.name} spinning {label}"], strict=True)]
            ratios.append(f"spinning {label}: {statistics.median(each):.2f}x "
                          f"(rounds {min(each):.2f}-{max(each):.2f}x)")
        print(f"{m.name} vs {reference} (its speed-up): " + ", ".join(ratios))
    print(f"\nCPU seconds the process burns in the {IDLE_SECONDS} s after one call:")
    feed = {INPUT_NAME: np.zeros((1, 3, size, size), np.float32)}
    for m in models:
        ours = idle_cpu_seconds(load_session(m, SessionSettings(threads=args.threads)), feed)
        theirs = idle_cpu_seconds(onnxruntime_default(m, args.threads), feed)
        print(f"  {m.name}: edge-smw spinning on {ours:.3f}, onnxruntime's default {theirs:.3f}")


if __name__ == "__main__":
    main()
