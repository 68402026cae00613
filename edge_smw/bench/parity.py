"""Does the exported model judge faces as the torch model does? Figures per model and backend.

Two kinds of figure, because they answer different questions: probability differences
(max / mean / p99, checked against Polygraphy-style tolerances) say whether the numbers are
the same; top-1 agreement, accuracy and MAE (overall and per level, with their deltas to
the reference) say whether the *decisions* are, which is what a user sees. Torch-free: it
compares arrays, whoever produced them (the live torch model or a golden file).
"""

from __future__ import annotations

import numpy as np

from edge_smw.bench.config import Tolerance
from edge_smw.bench.results import LabelledParity, LevelParity, ParityRow, ProbabilityDiff
from edge_smw.evaluate import compute_metrics
from edge_smw.stats import DecisionMargins


def compare_outputs(out: np.ndarray, ref: np.ndarray, tol: Tolerance) -> ProbabilityDiff:
    """Polygraphy's rule: fail when stat(|d|) > atol and stat(|d| / |ref|) > rtol."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    absdiff = np.abs(out - ref)
    safe = np.where(ref == 0, np.finfo(np.float64).eps, np.abs(ref))
    reldiff = absdiff / safe
    stats = {
        "max": (absdiff.max(), reldiff.max()),
        "mean": (absdiff.mean(), reldiff.mean()),
        "median": (np.median(absdiff), np.median(reldiff)),
        "quantile": (np.quantile(absdiff, tol.quantile), np.quantile(reldiff, tol.quantile)),
    }
    if tol.stat == "elemwise":
        bad = ((absdiff > tol.atol) | np.isnan(absdiff)) & ((reldiff > tol.rtol)
                                                          | np.isnan(reldiff))
        failed = bool(bad.any())
        mismatched = int(bad.sum())
    else:
        a, r = stats[tol.stat]
        failed = bool((np.isnan(a) or a > tol.atol) and (np.isnan(r) or r > tol.rtol))
        mismatched = int(((absdiff > tol.atol) & (reldiff > tol.rtol)).sum())
    return ProbabilityDiff(
        within_tolerance=not failed,
        tolerance=tol,
        max_abs_prob_diff=float(absdiff.max()),
        mean_abs_prob_diff=float(absdiff.mean()),
        median_abs_prob_diff=float(np.median(absdiff)),
        p99_abs_prob_diff=float(np.quantile(absdiff, 0.99)),
        max_rel_prob_diff=float(reldiff.max()),
        elements_outside_tolerance=mismatched,
    )


def parity_row(model: str, backend: str, precision: str, probs: np.ndarray,
               ref_probs: np.ndarray, labels: np.ndarray | None, levels: tuple[str, ...],
               tol: Tolerance, *, reference: str, flavour: str | None = None,
               intended: bool = True) -> ParityRow:
    """Every parity figure of one (model, backend) against the reference outputs."""
    probs = np.asarray(probs, dtype=np.float64)
    ref_probs = np.asarray(ref_probs, dtype=np.float64)
    if probs.shape != ref_probs.shape:
        return ParityRow(model=model, backend=backend, precision=precision, status="error",
                         reason=f"output shape {probs.shape} differs from the reference's "
                                f"{ref_probs.shape}")
    pred, ref_pred = probs.argmax(1), ref_probs.argmax(1)
    expected = probs @ np.arange(1, probs.shape[1] + 1)
    ref_expected = ref_probs @ np.arange(1, probs.shape[1] + 1)
    return ParityRow(
        model=model, backend=backend, precision=precision, flavour=flavour, intended=intended,
        reference=reference, n=int(len(probs)), status="ok",
        top1_agreement=float((pred == ref_pred).mean()),
        disagreements=int((pred != ref_pred).sum()),
        diff=compare_outputs(probs, ref_probs, tol),
        max_abs_expected_score_diff=float(np.abs(expected - ref_expected).max()),
        decision_margins=DecisionMargins.measure(probs, ref_probs),
        labelled=None if labels is None else _labelled(probs, ref_probs, pred, ref_pred,
                                                       labels, levels))


def _labelled(probs: np.ndarray, ref_probs: np.ndarray, pred: np.ndarray, ref_pred: np.ndarray,
              labels: np.ndarray, levels: tuple[str, ...]) -> LabelledParity:
    """Accuracy, MAE and Spearman overall and per level, with their deltas to the reference."""
    ours = compute_metrics(labels, probs, levels)
    theirs = compute_metrics(labels, ref_probs, levels)
    return LabelledParity(
        accuracy=ours["accuracy"], mae=ours["mae"], spearman=ours["spearman"],
        reference_accuracy=theirs["accuracy"], reference_mae=theirs["mae"],
        accuracy_delta=ours["accuracy"] - theirs["accuracy"],
        accuracy_drop_points=100.0 * (theirs["accuracy"] - ours["accuracy"]),
        mae_delta=ours["mae"] - theirs["mae"],
        confusion=ours["confusion"],
        per_level={
            name: LevelParity(
                accuracy=stats["accuracy"], mae=stats["mae"], count=stats["count"],
                accuracy_delta=_delta(stats["accuracy"], theirs["per_level"][name]["accuracy"]),
                mae_delta=_delta(stats["mae"], theirs["per_level"][name]["mae"]),
                top1_agreement=_agreement(pred, ref_pred, labels == i))
            for i, (name, stats) in enumerate(ours["per_level"].items())
        })


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _agreement(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float | None:
    return float((pred[mask] == ref[mask]).mean()) if mask.any() else None
