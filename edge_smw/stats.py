"""Proportions as statistical claims: a gate such as "int8 agrees with torch on >= 98% of
crops" is judged on a sample, so it carries an interval and a minimum sample size; and how
near a sample's decisions lie (``DecisionMargins``), which says why two samples differ.

The Wilson score interval is used (it behaves at proportions near 1 and at small n, where the
normal approximation claims certainty it does not have). One module, used by bench gates and
the export's INT8 gate alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from edge_smw.errors import InputError

CONFIDENCE = 0.95


def _z(confidence: float) -> float:
    """Two-sided standard-normal quantile for ``confidence`` (0.95 -> 1.96)."""
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence {confidence}: give a fraction in (0, 1), e.g. 0.95")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE
                    ) -> tuple[float, float]:
    """Wilson score interval for ``successes`` out of ``n``; (0, 1) when ``n`` is 0."""
    if n < 0 or not 0 <= successes <= n:
        raise InputError(f"a proportion needs 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def family_confidence(confidence: float, compared: int) -> float:
    """The confidence each of ``compared`` intervals needs so that all of them hold together
    with ``confidence`` (Bonferroni). A claim about the best of several models picked on the
    same crops is one of those intervals: the pick favours a model the crops flatter, and the
    plain interval of the winner holds less often than it says."""
    if compared < 1:
        raise InputError(f"{compared} models compared: give at least 1")
    return 1.0 - (1.0 - confidence) / compared


def min_n_to_show(threshold: float, confidence: float = CONFIDENCE) -> int:
    """The smallest sample on which even a perfect score would show a proportion of at
    least ``threshold`` (Wilson lower bound of n/n >= threshold): n >= z^2 t / (1 - t).

    Below it a claim such as ">= 98%" cannot be judged at all: one miss in 16 is 93.8%, and
    16 of 16 only shows >= 80.6%.
    """
    if not 0.0 < threshold < 1.0:
        raise InputError(f"threshold {threshold}: a proportion in (0, 1)")
    z = _z(confidence)
    n = max(1, math.floor(z * z * threshold / (1.0 - threshold)))
    while wilson_interval(n, n, confidence)[0] < threshold:
        n += 1
    return n


@dataclass(frozen=True)
class Proportion:
    """``successes`` of ``n`` (agreement, accuracy) with its interval."""

    successes: int
    n: int
    confidence: float = CONFIDENCE

    @classmethod
    def from_fraction(cls, fraction: float, n: int, confidence: float = CONFIDENCE
                      ) -> Proportion:
        return cls(int(round(fraction * n)), int(n), confidence)

    @property
    def value(self) -> float:
        return self.successes / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.n, self.confidence)

    def shows_at_least(self, threshold: float) -> bool | None:
        """True: the interval's lower bound reaches ``threshold``; False: it does not; None:
        ``n`` is too small for any result to show it (not judged)."""
        if self.n < min_n_to_show(threshold, self.confidence):
            return None
        return self.interval[0] >= threshold

    def describe(self) -> str:
        lo, hi = self.interval
        return (f"{100 * self.value:.2f}% of {self.n} ({100 * self.confidence:.4g}% Wilson "
                f"interval {100 * lo:.2f}-{100 * hi:.2f}%)")


def decision_gaps(scores: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per crop, the reference's *gap* (its top level's score minus its largest other) and the
    model's change to it (the model's score of that level minus the model's largest other,
    less the gap): a crop flips where gap + change < 0. Scores are logits or log-probabilities
    alike: only differences between levels count."""
    scores, reference = np.asarray(scores, np.float64), np.asarray(reference, np.float64)
    rows = np.arange(len(reference))
    top = reference.argmax(axis=1)

    def gap(values: np.ndarray) -> np.ndarray:
        others = values.copy()
        others[rows, top] = -np.inf
        return values[rows, top] - others.max(axis=1)

    base = gap(reference)
    return base, gap(scores) - base


@dataclass(frozen=True)
class DecisionMargins:
    """How near the reference's decisions lie and how far a model moves them: what decides how
    many crops a quantized model flips, and why two samples of the same model flip different
    shares (one split holds more crops near the decision than another).

    From ``decision_gaps``: ``error_sd`` is the spread of the model's change to the gap;
    ``near`` counts the crops whose gap is under it (one typical change can flip them);
    ``expected`` is the number of flips a normal error of that spread gives on these gaps: a
    yardstick, and more flips observed than expected say the error is larger near the
    decision.
    """

    n: int
    error_sd: float
    near: int
    expected: float

    @classmethod
    def from_gaps(cls, gap: np.ndarray, change: np.ndarray) -> DecisionMargins:
        sd = float(change.std()) if len(change) else 0.0
        cdf = NormalDist().cdf
        expected = sum(cdf(-g / sd) for g in gap) if sd > 0 else 0.0
        return cls(len(gap), sd, int((gap < sd).sum()), float(expected))

    @classmethod
    def measure(cls, probs: np.ndarray, reference: np.ndarray) -> DecisionMargins:
        """From probabilities (the outputs the bench and the export compare)."""
        if len(reference) == 0 or np.shape(reference)[1] < 2:
            return cls(len(reference), 0.0, 0, 0.0)
        logs = [np.log(np.clip(np.asarray(p, np.float64), 1e-12, 1.0)) for p in (probs, reference)]
        return cls.from_gaps(*decision_gaps(*logs))

    def describe(self) -> str:
        return (f"{self.near} of {self.n} crops lie within one error spread "
                f"({self.error_sd:.2f} log-odds) of the reference's decision; "
                f"{self.expected:.1f} flips expected at that spread")

    def to_dict(self) -> dict[str, float | int]:
        return {"n": self.n, "error_sd": self.error_sd, "near": self.near,
                "expected_flips": self.expected}

    @classmethod
    def from_dict(cls, data: dict[str, float | int]) -> DecisionMargins:
        return cls(int(data["n"]), float(data["error_sd"]), int(data["near"]),
                   float(data["expected_flips"]))
