"""Bench suites and gates: TOML files, validated up front so a typo fails before minutes of work.

The defaults ship inside the package (``edge_smw/bench/config``; ``benchmarks/`` links to
them) so ``edge-smw bench`` works from an installed wheel; ``--suite`` and ``--gates`` take
any other file of the same form.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_smw.bench.results import GateVerdict
from edge_smw.contract import DEFAULT_DETECTOR
from edge_smw.errors import InputError
from edge_smw.export.profiles import read_toml
from edge_smw.stats import CONFIDENCE, Proportion, min_n_to_show

CONFIG_DIR = Path(__file__).resolve().parent / "config"
DEFAULT_GATES = CONFIG_DIR / "gates.toml"
SUITE_NAMES = ("quick", "full")
OPS = {
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
}
REDUCE = ("min", "max", "mean")
STATISTICS = ("value", "proportion")
STATS = ("max", "mean", "median", "quantile", "elemwise")
SECTIONS = ("latency", "comparisons", "parity", "robustness", "end_to_end", "limit",
            "detection")


@dataclass
class Suite:
    """How long and how wide a bench runs. Every field is required in the TOML."""

    name: str
    batches: list[int]
    warmup: int
    min_runs: int
    max_runs: int
    seconds_per_batch: float
    calls_per_turn: int  # timed calls back to back per candidate and round (latency)
    rewarm_calls: int  # untimed calls opening each turn (0: every call timed)
    threads: int
    theirs: bool
    memory: str
    parity_max: int
    robust_n: int
    budgets: list[float]
    pgd_steps: int
    blackbox_n: int
    blackbox_budgets: list[float]
    blackbox_iterations: int
    e2e_frames: int
    e2e_models: str
    peak_matmul: int
    peak_repeats: int
    features_crops: int  # crops for the training feature-pass row (0 = skip it)
    # Face detectors compared in the end-to-end rows and on the detection set.
    detectors: list[str] = field(default_factory=lambda: ["haar", DEFAULT_DETECTOR])
    detection_frames: int = 0  # detection-set frames per condition (0: no detection section)
    source: str = ""

    def __post_init__(self) -> None:
        where = self.source or self.name
        for name in ("batches",):
            values = getattr(self, name)
            if not values or any(not isinstance(b, int) or b < 1 for b in values):
                raise InputError(f"suite {where}: {name} must be whole numbers >= 1, got {values}")
        for name in ("budgets", "blackbox_budgets"):
            values = getattr(self, name)
            if any(not isinstance(b, (int, float)) or not b > 0 for b in values):
                raise InputError(f"suite {where}: {name} must be positive pixel units, got "
                                 f"{values}")
            setattr(self, name, sorted(float(b) for b in values))
        for name in ("warmup", "min_runs", "max_runs", "threads", "parity_max", "robust_n",
                     "pgd_steps", "blackbox_n", "blackbox_iterations", "e2e_frames",
                     "peak_matmul", "peak_repeats", "features_crops", "detection_frames",
                     "calls_per_turn", "rewarm_calls"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"suite {where}: {name} must be a whole number >= 0, got "
                                 f"{value!r}")
        if self.calls_per_turn < 1:
            raise InputError(f"suite {where}: calls_per_turn must be >= 1")
        if self.min_runs < 1 or self.max_runs < self.min_runs:
            raise InputError(f"suite {where}: need 1 <= min_runs <= max_runs")
        if not (self.seconds_per_batch > 0 and math.isfinite(self.seconds_per_batch)):
            raise InputError(f"suite {where}: seconds_per_batch must be positive")
        if self.memory not in ("all", "onnx", "none"):
            raise InputError(f"suite {where}: memory must be all, onnx or none")
        if self.e2e_models not in ("deployable", "all"):
            raise InputError(f"suite {where}: e2e_models must be deployable or all")
        if not self.detectors or not all(isinstance(d, str) and d for d in self.detectors):
            raise InputError(f"suite {where}: detectors must be a list of detector names, got "
                             f"{self.detectors!r}")
        if self.peak_matmul < 64:
            raise InputError(f"suite {where}: peak_matmul must be >= 64")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_suite(spec: str | Path) -> Suite:
    """``quick``, ``full`` or a path to a suite TOML (``base = "quick"`` inherits a preset)."""
    text = str(spec)
    if text in SUITE_NAMES:
        path = CONFIG_DIR / f"{text}.toml"
    else:
        path = Path(text)
        if not path.suffix == ".toml":
            raise InputError(f"--suite must be one of {list(SUITE_NAMES)} or a .toml file, got "
                             f"{text!r}")
    data = read_toml(path, "suite")
    base = data.pop("base", None)
    if base is not None:
        if base not in SUITE_NAMES:
            raise InputError(f"{path}: base must be one of {list(SUITE_NAMES)}, got {base!r}")
        merged = read_toml(CONFIG_DIR / f"{base}.toml")
        merged.update(data)
        data = merged
    known = {f.name for f in dataclasses.fields(Suite)} - {"source"}
    unknown = sorted(set(data) - known)
    missing = sorted(known - set(data))
    if unknown:
        raise InputError(f"{path}: unknown suite field(s) {unknown}; known: {sorted(known)}")
    if missing:
        raise InputError(f"{path}: missing suite field(s) {missing} (or set base = \"quick\")")
    try:
        return Suite(**data, source=str(path))
    except TypeError as exc:
        raise InputError(f"{path}: {exc}") from None


@dataclass
class Tolerance:
    """Polygraphy-style: fails when stat(abs) > atol and stat(rel) > rtol."""

    atol: float
    rtol: float = 0.0
    stat: str = "max"
    quantile: float = 0.99

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Gate:
    """One figure of bench.json against one threshold."""

    name: str
    section: str
    field: str
    op: str
    threshold: float
    reduce: str = "min"
    where: dict[str, Any] = field(default_factory=dict)
    help: str = ""
    target: bool = False  # a stated goal: reported, never fails the run
    # "proportion": the field is a fraction of the row's ``n`` items (agreement, accuracy),
    # judged by its Wilson interval: ">=" passes when the lower bound reaches the threshold,
    # and a row too small for any result to show that is "not judged", never a FAIL.
    statistic: str = "value"
    min_n: int = 0  # rows judged on fewer items than this are "not judged: n too small"

    def select(self, report: dict[str, Any]) -> list[dict[str, Any]]:
        """The section's judged rows in bench.json's form (``BenchReport.to_dict()``): gates
        are configured by its field names."""
        rows = report.get(self.section) or []
        if isinstance(rows, dict):
            rows = rows.get("rows", [])
        out = []
        for row in rows:
            if row.get("status", "ok") != "ok":
                continue
            if all(row.get(k) == v for k, v in self.where.items()) and row.get(self.field) \
                    is not None:
                out.append(row)
        return out

    def evaluate(self, report: dict[str, Any]) -> GateVerdict:
        """Judge bench.json's form of a report (``BenchReport.to_dict()``)."""
        rows = self.select(report)
        verdict = GateVerdict(
            name=self.name, help=self.help, section=self.section, field=self.field,
            where=self.where, op=self.op, threshold=self.threshold, reduce=self.reduce,
            target=self.target, value=None)
        if not rows:
            verdict.note = f"skipped: no {self.section} rows with {self.where or 'any fields'}"
            return verdict
        needed = self.needed_n()
        judged = [r for r in rows if int(r.get("n") or 0) >= needed] if needed else rows
        verdict.min_n = needed
        if not judged:
            sizes = sorted({int(r.get("n") or 0) for r in rows})
            verdict.note = (f"not judged: n too small (n = {', '.join(map(str, sizes))}; "
                            f"{self.rule()} needs n >= {needed})")
            return verdict
        verdict.rows = len(judged)
        verdict.unjudged_rows = len(rows) - len(judged)
        if self.statistic == "proportion":
            self._judge_proportions(judged, verdict)
            return verdict
        values = [float(r[self.field]) for r in judged]
        value = {"min": min, "max": max, "mean": lambda v: sum(v) / len(v)}[self.reduce](values)
        worst = judged[values.index(min(values) if self.op.startswith(">") else max(values))]
        verdict.value = value
        verdict.passed = bool(OPS[self.op](value, self.threshold))
        verdict.worst = _subject(worst)
        return verdict

    def needed_n(self) -> int:
        """Items a row needs before this gate judges it."""
        if self.statistic != "proportion":
            return self.min_n
        shown = self.threshold if self.op.startswith(">") else 1.0 - self.threshold
        return max(self.min_n, min_n_to_show(shown))

    def rule(self) -> str:
        if self.statistic == "proportion":
            return (f"showing {self.field} {self.op} {self.threshold:g} with "
                    f"{100 * CONFIDENCE:.0f}% confidence (Wilson)")
        return f"judging {self.field}"

    def _judge_proportions(self, rows: list[dict[str, Any]], verdict: GateVerdict) -> None:
        """Each row by its interval; the gate reports the row whose bound is worst."""
        at_least = self.op.startswith(">")
        scored = []
        for row in rows:
            prop = Proportion.from_fraction(float(row[self.field]), int(row["n"]))
            lo, hi = prop.interval
            bound = lo if at_least else hi
            scored.append((bound, row, prop))
        bound, worst, prop = (min if at_least else max)(scored, key=lambda t: t[0])
        verdict.value = prop.value
        verdict.interval = list(prop.interval)
        verdict.n = prop.n
        verdict.bound = bound
        verdict.passed = bool(OPS[self.op](bound, self.threshold))
        verdict.worst = _subject(worst)


def _subject(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in ("model", "backend", "batch", "attack", "versus")
            if row.get(k) is not None}


@dataclass
class GateSet:
    gates: list[Gate]
    targets: list[Gate]
    tolerances: dict[str, Tolerance]
    source: str

    def tolerance(self, precision: str) -> Tolerance:
        return self.tolerances.get(precision) or self.tolerances.get("fp32") or Tolerance(1e-4)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source,
                "tolerances": {k: v.to_dict() for k, v in self.tolerances.items()}}


def load_gates(path: str | Path | None = None) -> GateSet:
    path = Path(path) if path is not None else DEFAULT_GATES
    data = read_toml(path, "gates file")
    unknown = sorted(set(data) - {"tolerances", "gate", "target"})
    if unknown:
        raise InputError(f"{path}: unknown top-level key(s) {unknown}; expected [tolerances], "
                         "[[gate]] and [[target]]")
    tolerances = {}
    for precision, spec in (data.get("tolerances") or {}).items():
        if not isinstance(spec, dict):
            raise InputError(f"{path}: tolerances.{precision} must be a table")
        try:
            tol = Tolerance(**spec)
        except TypeError as exc:
            raise InputError(f"{path}: tolerances.{precision}: {exc}") from None
        if tol.stat not in STATS or tol.atol < 0 or tol.rtol < 0 or not 0 < tol.quantile <= 1:
            raise InputError(f"{path}: tolerances.{precision}: stat must be one of {STATS}, "
                             "atol/rtol >= 0, quantile in (0, 1]")
        tolerances[precision] = tol
    gates = [_gate(path, spec, False) for spec in data.get("gate", [])]
    targets = [_gate(path, spec, True) for spec in data.get("target", [])]
    names = [g.name for g in gates + targets]
    if len(set(names)) != len(names):
        raise InputError(f"{path}: gate names must be unique, got {names}")
    return GateSet(gates, targets, tolerances, str(path))


def _gate(path: Path, spec: Any, target: bool) -> Gate:
    if not isinstance(spec, dict):
        raise InputError(f"{path}: each [[gate]] must be a table")
    try:
        gate = Gate(**spec, target=target)
    except TypeError as exc:
        raise InputError(f"{path}: gate {spec.get('name', '?')}: {exc}") from None
    where = f"{path}: gate {gate.name!r}"
    if gate.section not in SECTIONS:
        raise InputError(f"{where}: section must be one of {list(SECTIONS)}")
    if gate.op not in OPS:
        raise InputError(f"{where}: op must be one of {list(OPS)}")
    if gate.reduce not in REDUCE:
        raise InputError(f"{where}: reduce must be one of {list(REDUCE)}")
    if not isinstance(gate.threshold, (int, float)) or not math.isfinite(gate.threshold):
        raise InputError(f"{where}: threshold must be a finite number")
    if gate.statistic not in STATISTICS:
        raise InputError(f"{where}: statistic must be one of {list(STATISTICS)}")
    if gate.statistic == "proportion" and not 0 < gate.threshold < 1:
        raise InputError(f"{where}: a proportion gate needs a threshold in (0, 1)")
    if not isinstance(gate.min_n, int) or gate.min_n < 0:
        raise InputError(f"{where}: min_n must be a whole number >= 0")
    if not isinstance(gate.where, dict):
        raise InputError(f"{where}: where must be a table, e.g. {{ precision = \"int8\" }}")
    return gate
