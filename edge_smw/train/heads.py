"""The linear head, its losses, and batch SGD with momentum on cached features.

Losses: ``ce`` (cross-entropy, as in the poster) and ``emd`` (squared earth mover's distance
between the cumulative predicted and true level distributions: the poster's future work,
since it knows that scores are ordered). Both produce logits -> softmax, so export and
runtime do not care which one trained the head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_smw.errors import InputError

LOSSES = ("ce", "emd")


def loss_fn(name: str, logits: torch.Tensor, target: torch.Tensor,
            weights: torch.Tensor | None) -> torch.Tensor:
    if name == "ce":
        return F.cross_entropy(logits, target, weight=weights)
    if name == "emd":
        probs = logits.softmax(dim=1)
        onehot = F.one_hot(target, logits.shape[1]).to(probs.dtype)
        per_sample = (probs.cumsum(1) - onehot.cumsum(1)).pow(2).sum(1)
        if weights is None:
            return per_sample.mean()
        w = weights[target]
        return (per_sample * w).sum() / w.sum()
    raise InputError(f"unknown loss {name!r}; choose one of {list(LOSSES)}")


def class_weights(levels: np.ndarray, k: int, mode: str) -> np.ndarray | None:
    """``balanced``: weight each level by n / (k * count), so rare levels (the poster's 5) count."""
    if mode == "none":
        return None
    if mode != "balanced":
        raise InputError(f"--class-weight must be 'none' or 'balanced', got {mode!r}")
    counts = np.bincount(levels, minlength=k).astype(np.float64)
    return (len(levels) / (k * np.maximum(counts, 1))).astype(np.float32)


@dataclass
class HeadConfig:
    lr: float
    momentum: float
    loss: str = "ce"
    epochs: int = 40
    batch_size: int = 64
    weight_decay: float = 1e-4
    class_weight: str = "none"


def train_head(
    features: np.ndarray, levels: np.ndarray, k: int, config: HeadConfig, *, seed: int
) -> nn.Linear:
    """Batch SGD + momentum on standardised features; the standardisation is folded into
    the returned layer so it takes raw pooled features."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(features.astype(np.float32))
    y = torch.from_numpy(levels.astype(np.int64))
    mean = x.mean(0)
    std = x.std(0)
    # Floor the scale: a feature (nearly) constant in training must not be amplified, or
    # the folded weight w/std turns a tiny activation at test time (or a quantization
    # error) into a huge logit.
    std = std.clamp_min(max(0.1 * float(std.median()), 1e-6))
    xs = (x - mean) / std
    head = nn.Linear(x.shape[1], k)
    with torch.no_grad():  # a linear head is convex: zero init, no dead-feature weights left
        head.weight.zero_()
        head.bias.zero_()
    weights = class_weights(levels, k, config.class_weight)
    w = torch.from_numpy(weights) if weights is not None else None
    optimizer = torch.optim.SGD(head.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    n = len(xs)
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(config.loss, head(xs[idx]), y[idx], w)
            loss.backward()
            optimizer.step()
    folded = nn.Linear(x.shape[1], k)
    with torch.no_grad():
        folded.weight.copy_(head.weight / std)
        folded.bias.copy_(head.bias - (head.weight * (mean / std)).sum(1))
    return folded


def predict_proba(head: nn.Linear, features: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return head(torch.from_numpy(features.astype(np.float32))).softmax(1).numpy()


@dataclass
class GridResult:
    lr: float
    momentum: float
    val_accuracy: float
    val_mae: float


def grid_search(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    k: int,
    *,
    lrs: Sequence[float],
    momenta: Sequence[float],
    base: HeadConfig,
    seed: int,
    progress: bool = True,
) -> tuple[HeadConfig, list[GridResult]]:
    """Learning rate x momentum on the validation split: best accuracy, then lowest MAE."""
    from tqdm.auto import tqdm

    results: list[GridResult] = []
    grid = [(lr, m) for lr in lrs for m in momenta]
    for lr, momentum in tqdm(grid, desc=f"tune {base.loss}", disable=not progress):
        config = HeadConfig(**{**base.__dict__, "lr": lr, "momentum": momentum})
        head = train_head(*train, k, config, seed=seed)
        probs = predict_proba(head, val[0])
        pred = probs.argmax(1)
        results.append(GridResult(lr, momentum, float((pred == val[1]).mean()),
                                  float(np.abs(pred - val[1]).mean())))
    best = max(results, key=lambda r: (r.val_accuracy, -r.val_mae, -r.lr))
    return HeadConfig(**{**base.__dict__, "lr": best.lr, "momentum": best.momentum}), results
