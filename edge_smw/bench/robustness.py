"""Fooling images after quantization: made on torch fp32, judged by every exported model.

Three questions, three measurements:
- Does the export behave like torch on adversarial inputs? PGD images made on torch fp32 are
  judged by onnxruntime fp32; success must match torch's (``matches_torch``).
- Does quantization change how easily a face is fooled? The same images, transferred to
  each int8 model.
- Is a lower success on int8 real robustness or only a broken gradient path (gradient
  masking)? A black-box attack that needs only the int8 model's outputs (Square) attacks it
  directly; if it fools int8 as often as fp32, the transfer gap was not robustness.

Budgets are L-infinity in pixel units (4 means 4/255), on the contract's uint8 model pixels,
so every image judged is one that could be saved as a PNG. Torch-side (PGD needs gradients).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_smw.attacks.blackbox import runtime_probs_fn, square_attack
from edge_smw.attacks.pgd import pgd_attack
from edge_smw.bench.config import Suite
from edge_smw.bench.data import stratified_sample
from edge_smw.bench.results import (
    MaskingCheck,
    MedianBudget,
    RobustnessRow,
    RobustnessSample,
    RobustnessSummary,
)

log = logging.getLogger("edge_smw.bench")


@dataclass
class Judge:
    """A model that judges adversarial images: probabilities from uint8 model pixels."""

    model: str
    backend: str
    precision: str
    flavour: str | None
    probs: Any  # callable: uint8 NHWC -> (N, K) probabilities
    runtime: Any = None  # edge_smw.Runtime for exported models (black-box target)


def pick_sample(labels: np.ndarray, ref_probs: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Crops the torch model gets right (a wrong one is "fooled" before any attack)."""
    correct = np.flatnonzero(ref_probs.argmax(1) == labels)
    if len(correct) == 0:
        return correct
    keep = stratified_sample(labels[correct], n, seed)
    return correct[keep]


def _goal_met(pred: np.ndarray, target: int | None, labels: np.ndarray) -> np.ndarray:
    return pred == target if target is not None else pred != labels


def run_robustness(pixel_model: Any, torch_judge: Judge, judges: list[Judge],
                   pixels: np.ndarray, labels: np.ndarray, ref_probs: np.ndarray,
                   levels: tuple[str, ...], suite: Suite,
                   ) -> tuple[list[RobustnessRow], RobustnessSummary]:
    """Rows of success rates, and a summary: median budgets to flip, the gradient-masking
    check."""
    sample = pick_sample(labels, ref_probs, suite.robust_n)
    if len(sample) == 0:
        return [], RobustnessSummary(note="the torch model got no sampled crop right")
    top = len(levels) - 1
    crops, crop_labels = pixels[sample], labels[sample]
    attacks: list[tuple[str, int | None, np.ndarray]] = [("pgd-untargeted", None, np.arange(
        len(sample)))]
    below_top = np.flatnonzero(crop_labels != top)
    if len(below_top):
        attacks.append(("pgd-targeted", top, below_top))
    everyone = [torch_judge, *judges]
    rows: list[RobustnessRow] = []
    # success[(attack, model@backend)] -> (n_crops, n_budgets) bool
    success: dict[tuple[str, str], np.ndarray] = {}
    for attack, target, idx in attacks:
        x, y = crops[idx], crop_labels[idx]
        clean = {j.model + "@" + j.backend: _goal_met(j.probs(x).argmax(1), target, y)
                 for j in everyone}
        for b, budget in enumerate(suite.budgets):
            log.info("robustness: %s at %g/255 on %d crops", attack, budget, len(idx))
            results = pgd_attack(pixel_model, x, target=target, eps=budget,
                                 steps=suite.pgd_steps, labels=y)
            adv = np.stack([r.adversarial for r in results])
            torch_success = np.array([r.success for r in results])
            for judge in everyone:
                key = judge.model + "@" + judge.backend
                if judge is torch_judge:
                    ok = torch_success
                else:
                    ok = _goal_met(judge.probs(adv).argmax(1), target, y)
                success.setdefault((attack, key), np.zeros((len(idx), len(suite.budgets)),
                                                           bool))[:, b] = ok
                rows.append(RobustnessRow(
                    model=judge.model, backend=judge.backend, precision=judge.precision,
                    flavour=judge.flavour, attack=attack, crafted_on="torch fp32",
                    transfer=judge is not torch_judge,
                    target=None if target is None else levels[target],
                    budget=budget, n=int(len(idx)), success_rate=float(ok.mean()),
                    clean_success_rate=float(clean[key].mean()),
                    median_l2=_median_l2(results, ok), steps=suite.pgd_steps,
                    matches_torch=float((ok == torch_success).mean())
                    if judge.precision == "fp32" and judge is not torch_judge else None))
    # Black-box, straight on each exported model's outputs (int8 first; fp32 for reference).
    bb_targets = [j for j in judges if j.runtime is not None and j.precision in ("int8", "fp32")]
    # the levels in the sample's proportions, as the PGD rows the masking check compares with
    bb_idx = (stratified_sample(crop_labels, suite.blackbox_n) if suite.blackbox_n
              else np.arange(0))
    if suite.blackbox_n and suite.blackbox_budgets and len(bb_idx):
        x, y = crops[bb_idx], crop_labels[bb_idx]
        for judge in bb_targets:
            key = judge.model + "@" + judge.backend
            probs_fn = runtime_probs_fn(judge.runtime)
            for b, budget in enumerate(suite.blackbox_budgets):
                log.info("robustness: square attack on %s at %g/255", key, budget)
                # One seed for every budget: the budgets differ in size, not in luck.
                results = square_attack(probs_fn, x, labels=y, eps=budget,
                                        iterations=suite.blackbox_iterations, seed=0)
                ok = np.array([r.success for r in results])
                success.setdefault(("square-untargeted", key),
                                   np.zeros((len(bb_idx), len(suite.blackbox_budgets)),
                                            bool))[:, b] = ok
                rows.append(RobustnessRow(
                    model=judge.model, backend=judge.backend, precision=judge.precision,
                    flavour=judge.flavour, attack="square-untargeted",
                    crafted_on="itself (black-box)", transfer=False, target=None,
                    budget=budget, n=int(len(bb_idx)), success_rate=float(ok.mean()),
                    median_l2=_median_l2(results, ok),
                    mean_queries=float(np.mean([r.queries for r in results])),
                    iterations=suite.blackbox_iterations))
    summary = RobustnessSummary(
        sample=RobustnessSample(n=int(len(sample)), levels={
            name: int((crop_labels == i).sum()) for i, name in enumerate(levels)}),
        budgets=suite.budgets, blackbox_budgets=suite.blackbox_budgets,
        median_budget=_median_budgets(success, suite),
        gradient_masking=_masking_check(rows, judges))
    return rows, summary


def _median_l2(results: list[Any], ok: np.ndarray) -> float | None:
    """Median L2 size (pixel units) of the perturbations that worked: finer than the budget,
    which for uint8 images cannot go below 1/255."""
    sizes = [r.l2 for r, good in zip(results, ok, strict=True) if good]
    return float(np.median(sizes)) if sizes else None


def _median_budgets(success: dict[tuple[str, str], np.ndarray],
                    suite: Suite) -> list[MedianBudget]:
    """Per (model, attack): the median over crops of the smallest budget that flipped it."""
    out = []
    for (attack, key), table in success.items():
        budgets = np.array(suite.blackbox_budgets if attack.startswith("square")
                           else suite.budgets)
        first = np.where(table.any(1), budgets[np.argmax(table, axis=1)], np.inf)
        median = float(np.median(first))
        model, backend = key.split("@", 1)
        out.append(MedianBudget(
            model=model, backend=backend, attack=attack,
            median_budget=None if not np.isfinite(median) else median,
            flipped_at_max_budget=float(table[:, -1].mean()),
            note=None if np.isfinite(median) else f"> {budgets[-1]:g}/255 (fewer than half "
                                                  "flipped within the budgets)"))
    return out


def _masking_check(rows: list[RobustnessRow], judges: list[Judge]) -> list[MaskingCheck]:
    """Is int8 harder to fool than fp32, or only harder to attack through torch's gradients?

    Robustness is the worst case over attacks, so each model's success rate at a budget is the
    best of what was tried on it: for int8, PGD images transferred from torch and the direct
    black-box attack; for fp32, PGD on torch itself and the same black-box attack. A gap in
    the transferred rate alone is not robustness; the direct attack is there to show it.
    """
    def rate(model: str, backend: str, attack: str, budget: float) -> float | None:
        for r in rows:
            if (r.model, r.backend, r.attack, r.budget) == (model, backend, attack, budget):
                return r.success_rate
        return None

    fp32 = next((j for j in judges if j.precision == "fp32" and j.runtime is not None), None)
    out = []
    for judge in judges:
        if judge.precision != "int8" or judge.runtime is None:
            continue
        for r in rows:
            if r.attack != "square-untargeted" or r.model != judge.model or \
                    r.backend != judge.backend:
                continue
            budget = r.budget
            transfer = rate(judge.model, judge.backend, "pgd-untargeted", budget)
            direct = r.success_rate
            torch_pgd = rate("torch", "torch-eager", "pgd-untargeted", budget)
            fp32_bb = None if fp32 is None else rate(fp32.model, fp32.backend,
                                                     "square-untargeted", budget)
            int8_worst = max(v for v in (transfer, direct) if v is not None)
            fp32_cands = [v for v in (torch_pgd, fp32_bb) if v is not None]
            fp32_worst = max(fp32_cands) if fp32_cands else None
            if fp32_worst is not None and int8_worst + 0.1 < fp32_worst:
                verdict = "int8 harder to fool than fp32 by every attack tried at this budget"
            elif transfer is not None and direct > transfer + 0.1:
                verdict = ("as easy to fool as fp32: the direct attack beats the transferred "
                           "images, so the transfer gap is not robustness")
            elif direct + 0.1 < (fp32_bb if fp32_bb is not None else direct):
                verdict = ("as easy to fool as fp32 (transferred images work); the black-box "
                           "attack does worse on int8's stepwise outputs, which is not "
                           "robustness")
            else:
                verdict = "as easy to fool as fp32"
            out.append(MaskingCheck(
                model=judge.model, backend=judge.backend, budget=budget,
                pgd_transfer_success=transfer, blackbox_success=direct,
                fp32_blackbox_success=fp32_bb, torch_pgd_success=torch_pgd,
                int8_worst_case_success=int8_worst, fp32_worst_case_success=fp32_worst,
                verdict=verdict))
    return out
