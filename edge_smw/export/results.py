"""What an export found, as typed objects (as Polygraphy's ``comparator/struct.py`` keeps
``RunResults`` / ``AccuracyResult``): figures cross module boundaries as these, and become
JSON only when ``export.json`` is written (``to_dict``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_smw.stats import CONFIDENCE, DecisionMargins, Proportion, family_confidence


@dataclass(frozen=True)
class Parity:
    """An exported model against the torch model on the same crops."""

    n: int
    disagreements: int
    max_abs_prob_diff: float
    mean_abs_prob_diff: float
    accuracy: float | None = None
    accuracy_torch: float | None = None
    mae: float | None = None
    mae_torch: float | None = None
    decision_margins: DecisionMargins | None = None

    @classmethod
    def measure(cls, probs: np.ndarray, reference: np.ndarray,
                true_levels: np.ndarray | None) -> Parity:
        """Top-1 agreement, probability differences, how near the decisions lie and, where
        labelled, accuracy and MAE."""
        pred, ref = probs.argmax(1), reference.argmax(1)
        diff = np.abs(probs - reference)
        labelled = true_levels is not None and len(true_levels) and bool(np.all(true_levels >= 0))
        extra: dict[str, float] = {}
        if labelled:
            extra = {"accuracy": float((pred == true_levels).mean()),
                     "accuracy_torch": float((ref == true_levels).mean()),
                     "mae": float(np.abs(pred - true_levels).mean()),
                     "mae_torch": float(np.abs(ref - true_levels).mean())}
        return cls(n=int(len(probs)), disagreements=int((pred != ref).sum()),
                   max_abs_prob_diff=float(diff.max()), mean_abs_prob_diff=float(diff.mean()),
                   decision_margins=DecisionMargins.measure(probs, reference), **extra)

    @property
    def agreement(self) -> Proportion:
        return Proportion(self.n - self.disagreements, self.n)

    def agreement_claim(self, compared: int = 1) -> Proportion:
        """The agreement as a claim about unseen crops when this model is the one kept of
        ``compared`` models measured on these crops: its interval is widened so that all of
        theirs hold together at 95% (``family_confidence``)."""
        return Proportion(self.n - self.disagreements, self.n,
                          family_confidence(CONFIDENCE, compared))

    @property
    def top1_agreement(self) -> float:
        return self.agreement.value

    @property
    def accuracy_delta(self) -> float | None:
        if self.accuracy is None or self.accuracy_torch is None:
            return None
        return self.accuracy - self.accuracy_torch

    @property
    def mae_delta(self) -> float | None:
        if self.mae is None or self.mae_torch is None:
            return None
        return self.mae - self.mae_torch

    def to_dict(self) -> dict[str, Any]:
        low, high = self.agreement.interval
        out: dict[str, Any] = {
            "n": self.n, "top1_agreement": self.top1_agreement,
            "top1_agreement_interval": [low, high], "disagreements": self.disagreements,
            "max_abs_prob_diff": self.max_abs_prob_diff,
            "mean_abs_prob_diff": self.mean_abs_prob_diff}
        if self.decision_margins is not None:
            out["decision_margins"] = self.decision_margins.to_dict()
        if self.accuracy is not None:
            out.update(accuracy=self.accuracy, accuracy_torch=self.accuracy_torch,
                       accuracy_delta=self.accuracy_delta, mae=self.mae,
                       mae_torch=self.mae_torch, mae_delta=self.mae_delta)
        return out


@dataclass(frozen=True)
class Gate:
    """A parity gate's verdict: ``pass``, ``fail`` or ``not judged`` (too few crops to show
    the threshold either way)."""

    what: str  # "max_abs_prob_diff" (at most) or "top1_agreement" (at least)
    threshold: float
    outcome: str
    claim: str  # one line: the figure, its interval, the verdict
    compared: int = 1  # models measured on the same crops to pick this one
    interval: tuple[float, float] | None = None  # the agreement claim's interval

    PASS = "pass"
    FAIL = "fail"
    NOT_JUDGED = "not judged"

    @property
    def passed(self) -> bool:
        return self.outcome == Gate.PASS

    @property
    def refused(self) -> bool:
        return self.outcome == Gate.FAIL

    @classmethod
    def max_diff(cls, parity: Parity, threshold: float) -> Gate:
        ok = parity.max_abs_prob_diff <= threshold
        return cls("max_abs_prob_diff", threshold, cls.PASS if ok else cls.FAIL,
                   f"max |probability difference| {parity.max_abs_prob_diff:.2e} on "
                   f"{parity.n} crops (gate {threshold:.0e})")

    @classmethod
    def min_agreement(cls, parity: Parity, threshold: float, compared: int = 1) -> Gate:
        """Judged on the 95% Wilson interval: a pass (its lower end reaches the threshold) is
        a claim that holds on unseen crops, not a point estimate. When the model was picked
        as the best of ``compared`` measured on the same crops (the export's steps), the
        interval is Bonferroni-widened so that the claim still holds at 95%. A model is
        refused (fail) only when the crops speak against it: observed below the threshold
        where they could show it. Observed at or above it but not shown (a small or
        straddling sample) is "not judged": written, and said so, never counted as a pass."""
        agreement = parity.agreement_claim(compared)
        shown = agreement.shows_at_least(threshold)
        low, high = agreement.interval
        if shown:
            outcome = cls.PASS
        elif agreement.value >= threshold or (shown is None and high >= threshold):
            outcome = cls.NOT_JUDGED
        else:
            outcome = cls.FAIL
        verdict = {cls.PASS: "shows", cls.FAIL: "does not show",
                   cls.NOT_JUDGED: "not judged: too few crops to show"}[outcome]
        picked = (f", the best of {compared} models measured on these crops: 95% for all "
                  "together, Bonferroni" if compared > 1 else "")
        return cls("top1_agreement", threshold, outcome,
                   f"top-1 agreement {agreement.describe()}{picked} {verdict} >= "
                   f"{100 * threshold:.0f}%", compared, (low, high))

    def to_dict(self) -> dict[str, Any]:
        key = "max_abs_prob_diff" if self.what == "max_abs_prob_diff" else "min_top1_agreement"
        out: dict[str, Any] = {key: self.threshold, "passed": self.passed,
                               "outcome": self.outcome, "claim": self.claim}
        if self.what == "top1_agreement":
            out["method"] = (f"lower end of the {100 * CONFIDENCE:.0f}% Wilson score interval"
                             + (f", Bonferroni-widened for the {self.compared} models measured "
                                "on the same crops to pick this one" if self.compared > 1
                                else ""))
            out["models_compared"] = self.compared
            if self.interval is not None:
                out["interval"] = list(self.interval)
        return out


@dataclass
class ModelEntry:
    """One written model file and how it compares with torch."""

    file: str
    precision: str
    sha256: str
    bytes: int
    parity: Parity
    gate: Gate | None = None
    flavour: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"file": self.file, "precision": self.precision, "sha256": self.sha256,
               "bytes": self.bytes, "parity": self.parity.to_dict(),
               "gate": self.gate.to_dict() if self.gate else None}
        if self.flavour is not None:
            out["flavour"] = self.flavour
        return out


@dataclass
class Figures:
    """A candidate INT8 model measured: parity on the validation crops and batch-1 latency
    against fp32, timed side by side."""

    parity: Parity
    latency_ms_p50: float | None = None
    fp32_latency_ms_p50: float | None = None
    path: Path | None = None
    # the model's probabilities on those crops, for a step that must not change them
    probabilities: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def agreement(self) -> float:
        return self.parity.top1_agreement

    @property
    def speedup(self) -> float | None:
        if not self.latency_ms_p50 or not self.fp32_latency_ms_p50:
            return None
        return self.fp32_latency_ms_p50 / self.latency_ms_p50

    def better_than(self, other: Figures) -> bool:
        """Whether this candidate should replace ``other``, both measured on the same crops:
        fewer flips expected from its error on every crop (``DecisionMargins``). The flip
        count itself is too coarse to rank models alike: at 99.5% agreement two of them differ
        by one or two flips, noise that reverted the step with the least error on unseen crops
        (benchmarks/RESULTS.md). Without margins (a ``Parity`` built by hand: ``measure``
        always adds them), or at the same expectation: fewer disagreements, then a smaller
        mean probability difference."""
        mine, theirs = self.parity, other.parity
        a, b = mine.decision_margins, theirs.decision_margins
        if a is not None and b is not None and a.n == b.n and a.expected != b.expected:
            return a.expected < b.expected
        if mine.disagreements != theirs.disagreements:
            return mine.disagreements < theirs.disagreements
        return mine.mean_abs_prob_diff < theirs.mean_abs_prob_diff

    @property
    def expected_flips(self) -> float | None:
        margins = self.parity.decision_margins
        return margins.expected if margins is not None else None

    def brief(self) -> dict[str, Any]:
        p = self.parity
        return {"top1_agreement": p.top1_agreement, "accuracy": p.accuracy,
                "accuracy_torch": p.accuracy_torch, "accuracy_delta": p.accuracy_delta,
                "mae_delta": p.mae_delta, "max_abs_prob_diff": p.max_abs_prob_diff}


@dataclass(frozen=True)
class SpeedRounds:
    """The kept INT8 model's batch-1 speed against fp32, in rounds of interleaved runs: the
    median ratio with its range, not one figure a busy moment of a shared CPU can move."""

    runs: int  # interleaved runs per model in each round
    fp32_p50_ms: tuple[float, ...]  # one per round
    int8_p50_ms: tuple[float, ...]

    @classmethod
    def from_latency(cls, timed: dict[str, dict[str, Any]], runs: int) -> SpeedRounds:
        """From ``parity.latency`` of the models named "fp32" and "int8"."""
        return cls(runs, tuple(timed["fp32"]["round_p50_ms"]),
                   tuple(timed["int8"]["round_p50_ms"]))

    @property
    def ratios(self) -> list[float]:
        return [f / i for f, i in zip(self.fp32_p50_ms, self.int8_p50_ms, strict=True)]

    @property
    def median(self) -> float:
        return float(np.median(self.ratios))

    def describe(self) -> str:
        ratios = self.ratios
        return (f"{self.median:.2f}x fp32 speed at batch 1 ({min(ratios):.2f}-"
                f"{max(ratios):.2f}x over {len(ratios)} rounds of {self.runs} interleaved runs, "
                "measured now on this machine; `edge-smw bench` measures it for quoting)")

    def to_dict(self) -> dict[str, Any]:
        return {"runs_per_round": self.runs, "fp32_p50_ms": list(self.fp32_p50_ms),
                "int8_p50_ms": list(self.int8_p50_ms), "ratios": self.ratios,
                "median": self.median}


@dataclass
class Step:
    """One INT8 step of the measured step table: what it did and whether it was kept."""

    name: str
    figures: Figures | None
    kept: bool
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def brief(self) -> str:
        """One entry of the console's step line: the figure, or why the step has none."""
        if self.figures is None:
            return f"{self.name} ({self.note})"
        return f"{self.name} {100 * self.figures.agreement:.1f}%" + (
            "" if self.kept else " (reverted)")

    def to_dict(self) -> dict[str, Any]:
        f = self.figures
        return {"step": self.name, "agreement": f.agreement if f else None,
                "accuracy": f.parity.accuracy if f else None,
                "expected_flips": f.expected_flips if f else None,
                "latency_ms_p50": f.latency_ms_p50 if f else None,
                "fp32_latency_ms_p50": f.fp32_latency_ms_p50 if f else None,
                "kept": self.kept, "note": self.note, **self.detail}


@dataclass
class FlavourResult:
    """Everything the export did for one INT8 flavour."""

    flavour: str
    file: str
    settings: dict[str, Any]
    steps: list[Step]
    final: Figures
    float_nodes: list[str] = field(default_factory=list)
    mixed_precision: dict[str, Any] | None = None
    unit_logit_noise: list[dict[str, Any]] = field(default_factory=list)
    aware_head: dict[str, Any] | None = None
    qdq: dict[str, Any] = field(default_factory=dict)
    report: dict[str, str] = field(default_factory=dict)
    speed: SpeedRounds | None = None  # the kept model, timed in rounds after its steps

    @property
    def speedup(self) -> float | None:
        """The kept model's speed against fp32: the rounds' median where it was timed so."""
        return self.speed.median if self.speed else self.final.speedup

    def _latency(self) -> dict[str, float | None]:
        if self.speed:
            return {"latency_ms_p50": float(np.median(self.speed.int8_p50_ms)),
                    "fp32_latency_ms_p50": float(np.median(self.speed.fp32_p50_ms))}
        return {"latency_ms_p50": self.final.latency_ms_p50,
                "fp32_latency_ms_p50": self.final.fp32_latency_ms_p50}

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "settings": self.settings,
                "steps": [s.to_dict() for s in self.steps],
                "mixed_precision": self.mixed_precision, "float_nodes": self.float_nodes,
                "unit_logit_noise": self.unit_logit_noise, "aware_head": self.aware_head,
                "qdq": self.qdq, **self._latency(), "speedup_vs_fp32": self.speedup,
                "speed_rounds": self.speed.to_dict() if self.speed else None,
                "report": self.report}


@dataclass
class Int8Result:
    calibration: dict[str, Any]
    flavours: dict[str, FlavourResult] = field(default_factory=dict)

    @property
    def calibration_sha256(self) -> str | None:
        return self.calibration.get("crops_sha256")

    def to_dict(self) -> dict[str, Any]:
        return {"calibration": self.calibration,
                "flavours": {k: v.to_dict() for k, v in self.flavours.items()}}


@dataclass
class ExportSummary:
    """``export.json``: what was exported, from what, with which settings and figures."""

    source: dict[str, Any]
    settings: dict[str, Any]
    versions: dict[str, str]
    machine: dict[str, Any]
    parity_data: dict[str, Any] = field(default_factory=dict)
    models: dict[str, ModelEntry] = field(default_factory=dict)
    int8: Int8Result | None = None
    engines: list[dict[str, Any]] = field(default_factory=list)
    forced: list[str] = field(default_factory=list)
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source, "settings": self.settings, "versions": self.versions,
            "machine": self.machine, "parity_data": self.parity_data,
            "models": {k: v.to_dict() for k, v in self.models.items()}, "forced": self.forced}
        if self.int8 is not None:
            out["int8"] = self.int8.to_dict()
        if self.engines:
            out["engines"] = self.engines
        if self.seconds is not None:
            out["seconds"] = self.seconds
        return out
