"""Latency, measured side by side: every candidate in one process, in turns, round-robin.

On a shared machine the load drifts by the second. Timing model A for a minute and then
model B for a minute folds that drift into the A/B ratio; timing them in short turns, every
candidate once per round, exposes both to the same drift, so their ratio holds even when the
absolute figures wobble. A turn is what a deployment does, calls of one model back to back:
the suite's ``rewarm_calls`` untimed calls first re-warm the caches, weights and thread pool
the candidates before took (a camera never runs another model between two frames; timing the
first call measured the previous candidate's footprint, heavier on the smaller, faster model),
then its ``calls_per_turn`` timed calls. One timed call and none untimed is the plain
per-call round robin. Each candidate is warmed up first (first calls pay for
allocation, thread start-up and kernel selection), and the number of rounds is chosen from
the warm-up so a batch size takes about the suite's time budget.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_smw.artifacts.formats import CPU_BACKENDS
from edge_smw.bench.results import ComparisonRow, LatencyRow

log = logging.getLogger("edge_smw.bench")


@dataclass
class Candidate:
    """One thing to time: ``fn(x)`` where ``x`` is what ``make_input(batch)`` returns."""

    model: str
    backend: str
    precision: str
    fn: Callable[[Any], Any]
    scope: str = "network"  # "network": preprocessed batch in; "crop": a BGR crop in
    flavour: str | None = None
    kind: str = "ours"  # "ours", "baseline" (torch eager) or "theirs" (what users write)
    size_mb: float | None = None
    threads: int | str | None = None
    intended: bool = True
    label: str | None = None  # how the summary table names it

    @property
    def key(self) -> str:
        return f"{self.model}@{self.backend}"


def percentiles(times_ms: np.ndarray) -> dict[str, float]:
    p50, p90, p99 = np.percentile(times_ms, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "mean_ms": float(times_ms.mean()), "min_ms": float(times_ms.min()),
            "std_ms": float(times_ms.std())}


def measure_interleaved(candidates: list[Candidate], inputs: list[Any], batch: int, *,
                        warmup: int, min_runs: int, max_runs: int, seconds: float,
                        calls_per_turn: int = 1, rewarm_calls: int = 0) -> list[LatencyRow]:
    """Time every candidate on the same ``inputs`` (cycled), in turns (the module's doc):
    each round, each live candidate makes ``rewarm_calls`` untimed calls and then
    ``calls_per_turn`` timed ones; the candidate that starts rotates every round. ``runs``
    counts timed calls.

    Returns one row per candidate (``status`` ok, or error with the reason).
    """
    alive: list[Candidate] = []
    rows: dict[str, LatencyRow] = {}
    estimate: dict[str, float] = {}
    for cand in candidates:
        try:
            t0 = time.perf_counter()
            for i in range(max(1, warmup)):
                cand.fn(inputs[i % len(inputs)])
            estimate[cand.key] = (time.perf_counter() - t0) / max(1, warmup)
            alive.append(cand)
        except Exception as exc:  # noqa: BLE001 - a failing candidate must not stop the others
            log.warning("latency: %s failed at batch %d: %s", cand.key, batch, exc)
            rows[cand.key] = _row(cand, batch, None, status="error", reason=str(exc))
    turn = max(1, calls_per_turn)
    per_timed_call = sum(estimate.values()) * (turn + rewarm_calls) / turn  # untimed too
    runs = min_runs if per_timed_call <= 0 else int(seconds / per_timed_call)
    runs = max(min_runs, min(max_runs, runs))
    times = timed_turns({c.key: c.fn for c in alive}, inputs, runs,
                        calls_per_turn=turn, rewarm_calls=rewarm_calls)
    for cand in alive:
        rows[cand.key] = _row(cand, batch, times[cand.key])
    return [rows[c.key] for c in candidates]


def timed_turns(fns: Mapping[str, Callable[[Any], Any]], inputs: list[Any], runs: int, *,
                calls_per_turn: int, rewarm_calls: int) -> dict[str, np.ndarray]:
    """The timing loop (the module's doc): ``runs`` timed calls of every function, in turns
    whose first function rotates every round; milliseconds, in call order."""
    names = list(fns)
    turn = max(1, calls_per_turn)
    times = {name: np.empty(runs, dtype=np.float64) for name in names}
    clock = time.perf_counter_ns
    done = 0
    for r in range(-(-runs // turn)):
        calls = min(turn, runs - done)
        shift = r % max(1, len(names))
        for name in names[shift:] + names[:shift]:
            fn = fns[name]
            for _ in range(rewarm_calls):
                fn(inputs[done % len(inputs)])
            for i in range(done, done + calls):
                x = inputs[i % len(inputs)]
                t0 = clock()
                fn(x)
                times[name][i] = (clock() - t0) / 1e6
        done += calls
    return times


def _row(cand: Candidate, batch: int, times_ms: np.ndarray | None, *, status: str = "ok",
         reason: str | None = None) -> LatencyRow:
    row = LatencyRow(
        model=cand.model, backend=cand.backend, precision=cand.precision, flavour=cand.flavour,
        batch=batch, scope=cand.scope, kind=cand.kind, intended=cand.intended,
        threads=cand.threads, size_mb=None if cand.size_mb is None else round(cand.size_mb, 3),
        status=status, reason=reason or None, label=cand.label)
    if times_ms is not None:
        exact = percentiles(times_ms)
        stats = {k: round(v, 4) for k, v in exact.items()}
        row.p50_ms, row.p90_ms, row.p99_ms = stats["p50_ms"], stats["p90_ms"], stats["p99_ms"]
        row.mean_ms, row.min_ms, row.std_ms = stats["mean_ms"], stats["min_ms"], stats["std_ms"]
        row.fps = round(batch * 1000.0 / exact["mean_ms"], 2)
        row.runs = int(len(times_ms))
    return row


def skipped_row(model: str, backend: str, precision: str, batch: int | None, reason: str, *,
                flavour: str | None = None, size_mb: float | None = None,
                kind: str = "ours", status: str = "skipped",
                label: str | None = None) -> LatencyRow:
    """A row for a backend that cannot run here: it stays in the table with its reason."""
    return LatencyRow(model=model, backend=backend, precision=precision, flavour=flavour,
                      batch=batch, kind=kind, intended=False,
                      size_mb=None if size_mb is None else round(size_mb, 3), status=status,
                      reason=reason, label=label)


def comparisons(rows: list[LatencyRow]) -> list[ComparisonRow]:
    """Speed-ups from the network-scope rows: each model vs fp32 ONNX on the same backend
    (and, on another CPU runtime, vs fp32 on onnxruntime-cpu), vs torch eager, vs a plain
    onnxruntime session; and crop-scope ours vs theirs."""
    ok = [r for r in rows if r.measured]
    out: list[ComparisonRow] = []
    by_batch: dict[tuple[str, int], list[LatencyRow]] = {}
    for r in ok:
        by_batch.setdefault((r.scope, r.batch), []).append(r)  # type: ignore[arg-type]
    for (scope, batch), group in sorted(by_batch.items()):
        ours = [r for r in group if r.kind == "ours"]
        if scope == "network":
            torch_rows = [r for r in group if r.backend == "torch-eager"]
            plain = [r for r in group if r.kind == "theirs"]
            for r in ours:
                refs: list[tuple[str, LatencyRow]] = []
                fp32 = [f for f in ours if f.backend == r.backend
                        and f.precision == "fp32" and f is not r]
                if fp32 and r.precision != "fp32":
                    refs.append(("fp32", fp32[0]))
                if r.backend in CPU_BACKENDS and r.backend != "onnxruntime-cpu":
                    # another CPU runtime is judged against the one every install has
                    refs += [("onnxruntime-cpu fp32", f) for f in ours
                             if f.backend == "onnxruntime-cpu" and f.precision == "fp32"]
                refs += [("torch-eager", t) for t in torch_rows]
                refs += [("onnxruntime-default", p) for p in plain
                         if p.model == r.model and r.backend == "onnxruntime-cpu"]
                for versus, ref in refs:
                    out.append(_compare(r, ref, versus, scope, batch))
        else:
            for r in ours:
                for ref in (g for g in group if g.kind == "theirs"):
                    out.append(_compare(r, ref, ref.backend, scope, batch))
    return out


def _compare(r: LatencyRow, ref: LatencyRow, versus: str, scope: str,
             batch: int) -> ComparisonRow:
    assert r.p50_ms and ref.p50_ms  # only measured rows are compared
    return ComparisonRow(
        model=r.model, backend=r.backend, precision=r.precision, flavour=r.flavour,
        intended=r.intended, batch=batch, scope=scope, versus=versus, versus_model=ref.model,
        versus_backend=ref.backend, p50_ms=r.p50_ms, versus_p50_ms=ref.p50_ms,
        speedup=round(ref.p50_ms / r.p50_ms, 3), n=min(r.runs, ref.runs))


# -- peak resident memory, one child process per model -------------------------------------

def measure_memory(spec: dict[str, Any], batches: list[int], timeout: float = 300) -> dict:
    """Peak RSS of a fresh process that loads one model and runs it at each batch size.

    In one process every model's memory piles up; a child per model gives each its own
    figure. ``spec``: {"kind": "onnx", "path", "backend", "threads"} or {"kind": "torch",
    "checkpoint", "threads"}.
    """
    cmd = [sys.executable, "-m", "edge_smw.bench.latency", json.dumps(spec),
           ",".join(str(b) for b in batches)]
    env = dict(os.environ)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"memory probe timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"memory probe failed: {last}"}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": "memory probe printed no result"}


def _memory_child(spec: dict[str, Any], batches: list[int]) -> dict[str, Any]:
    from edge_smw.bench.machine import current_rss_mb, peak_rss_mb

    threads = spec.get("threads") or None
    if spec["kind"] == "torch":
        import torch  # noqa: F401 - imported before the baseline: the model's cost is the rest

        from edge_smw.bench.models import TorchReference

        base = current_rss_mb()
        ref = TorchReference(Path(spec["checkpoint"]), threads=threads)
        size = ref.contract.input_size
        run = ref.forward
    else:
        import onnxruntime  # noqa: F401

        from edge_smw.runtime import Runtime

        base = current_rss_mb()
        rt = Runtime(spec["path"], backend=spec["backend"], threads=threads, warmup=False,
                     backend_options=spec.get("options") or {})
        size = rt.contract.input_size
        run = rt.infer
    out: dict[str, Any] = {"baseline_rss_mb": round(base, 2), "peak_rss_mb": {}}
    rng = np.random.default_rng(0)
    for b in sorted(batches):
        x = rng.standard_normal((b, 3, size, size)).astype(np.float32)
        for _ in range(3):
            run(x)
        out["peak_rss_mb"][str(b)] = round(peak_rss_mb(), 2)
    return out


if __name__ == "__main__":  # the memory probe's child process
    print(json.dumps(_memory_child(json.loads(sys.argv[1]),
                                   [int(b) for b in sys.argv[2].split(",")])))
