"""What one attack on one crop did, in pixel units. Torch-free (the black-box attack uses it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class AttackResult:
    """One crop's attack. Norms are of ``adversarial - original`` in uint8 pixel units."""

    success: bool  # the uint8 ``adversarial`` reaches the goal (target level / another level)
    steps: int  # gradient steps (PGD) or accepted-or-not query rounds (black-box) used
    linf: float
    l2: float
    level_before: int  # 0-based
    level_after: int
    probabilities_before: np.ndarray
    probabilities_after: np.ndarray
    target: int | None  # None: untargeted (away from ``label``)
    label: int  # the level being moved away from (untargeted) or the start level
    adversarial: np.ndarray  # uint8 HxWx3 model pixels (contract colour order)
    rounding_broke: bool = False  # the float iterate reached the goal, its uint8 rounding not
    queries: int = 0  # model evaluations spent on this crop (black-box budget accounting)

    def to_dict(self, levels: Sequence[str] | None = None) -> dict[str, Any]:
        def name(i: int | None) -> Any:
            return None if i is None else (levels[i] if levels is not None else int(i))

        def probs(p: np.ndarray) -> Any:
            values = [round(float(v), 6) for v in p]
            return dict(zip(levels, values, strict=True)) if levels is not None else values

        return {
            "success": bool(self.success),
            "steps": int(self.steps),
            "linf": round(float(self.linf), 4),
            "l2": round(float(self.l2), 4),
            "target": name(self.target),
            "level_before": name(self.level_before),
            "level_after": name(self.level_after),
            "probabilities_before": probs(self.probabilities_before),
            "probabilities_after": probs(self.probabilities_after),
            "rounding_broke": bool(self.rounding_broke),
            "queries": int(self.queries),
        }


def perturbation_norms(original: np.ndarray, adversarial: np.ndarray) -> tuple[float, float]:
    """(L-infinity, L2) of the change, over all pixels and channels, in 0-255 units."""
    diff = adversarial.astype(np.float64) - original.astype(np.float64)
    return float(np.abs(diff).max(initial=0.0)), float(np.sqrt((diff**2).sum()))


def check_pixels(pixels: np.ndarray) -> np.ndarray:
    """Attacks take uint8 (N, H, W, 3) model pixels; say how to get them otherwise."""
    from edge_smw.errors import InputError

    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3 or not len(pixels):
        raise InputError(f"expected uint8 model pixels (N, H, W, 3), got {pixels.dtype} "
                         f"{pixels.shape}; use contract.to_model_pixels on each crop")
    return pixels


def goal_levels(n: int, target: int | Sequence[int] | None, labels: Sequence[int] | None,
                before: np.ndarray, k: int) -> tuple[np.ndarray | None, np.ndarray]:
    """Per-crop target (or None) and label (the level to move away from / start level)."""
    from edge_smw.errors import InputError

    label = np.asarray(before if labels is None else labels, dtype=np.int64).reshape(-1)
    if label.shape != (n,) or label.min() < 0 or label.max() >= k:
        raise InputError(f"labels must be {n} level indices in 0..{k - 1}")
    if target is None:
        return None, label
    try:
        tgt = np.broadcast_to(np.asarray(target, dtype=np.int64), (n,)).copy()
    except ValueError:
        raise InputError(f"target must be one level index or {n} of them, got {target}") from None
    if tgt.min() < 0 or tgt.max() >= k:
        raise InputError(f"target level index must be in 0..{k - 1}, got {target}")
    return tgt, label
