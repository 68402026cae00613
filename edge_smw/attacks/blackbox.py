"""Square Attack (Andriushchenko et al. 2020, L-infinity), on output probabilities only.

No gradients and no torch: it needs only ``probs_fn(pixels_uint8_nhwc) -> probabilities``,
so it attacks what actually ships (an int8 or fp16 ONNX model through ``edge_smw.Runtime``)
as readily as the torch model. Hand-written: torchattacks' Square needs a torch module and
[0, 1] inputs; this one works on uint8 pixels with a budget in pixel units.

Each round changes one random square window of every unfinished crop to +-eps per colour
channel (around the original) and keeps the change only if it lowers the margin loss, so the
loss never rises. Loss, in log-probabilities: untargeted ``log p[label] - max_other log p``,
targeted ``max_other log p - log p[target]``; the goal is reached when it is below 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edge_smw.attacks.result import AttackResult, check_pixels, goal_levels, perturbation_norms
from edge_smw.errors import InputError, ModelError

ProbsFn = Callable[[np.ndarray], np.ndarray]
_TINY = 1e-12


def square_attack(
    probs_fn: ProbsFn,
    pixels_uint8_nhwc: np.ndarray,
    *,
    target: int | Sequence[int] | None = None,
    labels: Sequence[int] | None = None,
    eps: float = 4,
    iterations: int = 200,
    p_init: float = 0.05,
    seed: int = 0,
) -> list[AttackResult]:
    """Attack every crop with at most ``iterations`` query rounds; one result per crop.

    ``eps`` is in pixel units and is rounded down to a whole number (the images stay uint8);
    ``target`` None: untargeted, away from ``labels`` (default: the predicted level).
    ``steps`` in each result counts the rounds that crop took part in.
    """
    pixels = check_pixels(pixels_uint8_nhwc)
    step = int(math.floor(eps))
    if step < 1:
        raise InputError(f"eps must be at least 1 pixel unit for uint8 images, got {eps}")
    if iterations < 0 or not 0 < p_init <= 1:
        raise InputError("iterations must be >= 0 and p_init in (0, 1]")
    n, h, w, c = pixels.shape
    rng = np.random.default_rng(seed)
    x0 = pixels.astype(np.int16)

    probs0 = _query(probs_fn, pixels)
    before = probs0.argmax(1)
    tgt, label = goal_levels(n, target, labels, before, probs0.shape[1])
    queries = np.ones(n, dtype=np.int64)
    rounds = np.zeros(n, dtype=np.int64)

    best = pixels.copy()
    best_probs = probs0.copy()
    best_loss = _margin(probs0, tgt, label)
    # Vertical stripes of +-eps: the paper's start; kept only where it already helps.
    stripes = rng.choice([-step, step], size=(n, 1, w, c)).astype(np.int16)
    start = np.clip(x0 + stripes, 0, 255).astype(np.uint8)
    todo = np.flatnonzero(best_loss >= 0)
    if len(todo):
        _try(probs_fn, start, todo, best, best_probs, best_loss, tgt, label, queries)

    for i in range(iterations):
        todo = np.flatnonzero(best_loss >= 0)
        if len(todo) == 0:
            break
        rounds[todo] = i + 1
        side = int(round(math.sqrt(_p_schedule(p_init, i, iterations) * h * w)))
        side = min(max(side, 1), h - 1, w - 1)
        candidate = best.copy()
        for j in todo:
            y = int(rng.integers(0, h - side + 1))
            x = int(rng.integers(0, w - side + 1))
            signs = rng.choice([-step, step], size=(1, 1, c)).astype(np.int16)
            window = np.clip(x0[j, y : y + side, x : x + side] + signs, 0, 255)
            candidate[j, y : y + side, x : x + side] = window.astype(np.uint8)
        _try(probs_fn, candidate, todo, best, best_probs, best_loss, tgt, label, queries)

    out = []
    for j in range(n):
        linf, l2 = perturbation_norms(pixels[j], best[j])
        out.append(AttackResult(
            success=bool(best_loss[j] < 0), steps=int(rounds[j]), linf=linf, l2=l2,
            level_before=int(before[j]), level_after=int(best_probs[j].argmax()),
            probabilities_before=probs0[j], probabilities_after=best_probs[j].copy(),
            target=None if tgt is None else int(tgt[j]), label=int(label[j]),
            adversarial=best[j].copy(), queries=int(queries[j]),
        ))
    return out


def _try(probs_fn: ProbsFn, candidate: np.ndarray, todo: np.ndarray, best: np.ndarray,
         best_probs: np.ndarray, best_loss: np.ndarray, tgt: np.ndarray | None,
         label: np.ndarray, queries: np.ndarray) -> None:
    """Query the candidates of ``todo``; keep each one that lowers its crop's loss."""
    probs = _query(probs_fn, candidate[todo])
    loss = _margin(probs, None if tgt is None else tgt[todo], label[todo])
    queries[todo] += 1
    better = loss < best_loss[todo]
    keep = todo[better]
    best[keep] = candidate[keep]
    best_probs[keep] = probs[better]
    best_loss[keep] = loss[better]


def _margin(probs: np.ndarray, tgt: np.ndarray | None, label: np.ndarray) -> np.ndarray:
    logp = np.log(np.maximum(probs, _TINY))
    rows = np.arange(len(probs))
    own = tgt if tgt is not None else label
    mine = logp[rows, own]
    others = logp.copy()
    others[rows, own] = -np.inf
    best_other = others.max(1)
    return best_other - mine if tgt is not None else mine - best_other


def _p_schedule(p_init: float, i: int, iterations: int) -> float:
    """The paper's schedule: the window shrinks as the attack goes on (rescaled to 10k)."""
    it = int(i / max(iterations, 1) * 10000)
    for limit, divisor in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32),
                           (4000, 64), (6000, 128), (8000, 256)):
        if it <= limit:
            return p_init / divisor
    return p_init / 512


def _query(probs_fn: ProbsFn, pixels: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs_fn(pixels), dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != len(pixels):
        raise ModelError(f"probs_fn returned shape {probs.shape} for {len(pixels)} images; it "
                         "must return (N, levels) probabilities")
    if not np.all(np.isfinite(probs)):
        raise ModelError("probs_fn returned non-finite probabilities")
    return probs


def runtime_probs_fn(runtime: Any) -> ProbsFn:
    """``probs_fn`` over an ``edge_smw.Runtime`` (any backend, any precision): model pixels in
    the contract's colour order -> probabilities, scored whole (no face detection)."""
    color = "rgb" if runtime.contract.color_order == "RGB" else "bgr"

    def probs(pixels: np.ndarray) -> np.ndarray:
        faces = runtime.score_batch(list(check_pixels(pixels)), color=color)
        return np.stack([f.probabilities for f in faces])

    return probs
