"""The linear head, its losses, and batch SGD with momentum on cached features.

Losses: ``ce`` (cross-entropy, as in the poster) and ``emd`` (squared earth mover's distance
between the cumulative predicted and true level distributions: the poster's future work,
since it knows that scores are ordered). Both produce logits -> softmax, so export and
runtime do not care which one trained the head.

Tuning trains every learning rate x momentum point of the grid at once: the heads are tiny
and independent, so G of them are one stacked (G, K, D) tensor that sees the same minibatch
order, each with its own learning rate and momentum. Per head this is exactly
``torch.optim.SGD`` (weight decay, momentum buffer, no dampening) on one ``nn.Linear`` -- the
tests check head g against a head trained alone -- but one step costs a few batched
operations instead of G Python loops. Early stopping on the validation split makes the
epoch count a cap, not a cost; each head keeps the weights of its own best epoch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from edge_smw.errors import InputError
from edge_smw.train.settings import DEFAULT_PATIENCE, LOSSES


def per_sample_loss(name: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Loss of each sample, for logits (..., B, K) and targets (B,): shape (..., B)."""
    if name == "ce":
        index = target.expand(*logits.shape[:-1]).unsqueeze(-1)
        return -logits.log_softmax(-1).gather(-1, index).squeeze(-1)
    if name == "emd":
        probs = logits.softmax(-1)
        onehot = nn.functional.one_hot(target, logits.shape[-1]).to(probs.dtype)
        return (probs.cumsum(-1) - onehot.cumsum(-1)).pow(2).sum(-1)
    raise InputError(f"unknown loss {name!r}; choose one of {list(LOSSES)}")


def loss_fn(name: str, logits: torch.Tensor, target: torch.Tensor,
            weights: torch.Tensor | None) -> torch.Tensor:
    """Mean loss over the batch (last-but-one axis); ``weights`` per level, as in
    ``F.cross_entropy(weight=...)``: sum(w[y] * loss) / sum(w[y])."""
    per_sample = per_sample_loss(name, logits, target)
    if weights is None:
        return per_sample.mean(-1)
    w = weights[target]
    return (per_sample * w).sum(-1) / w.sum()


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
    epochs: int = 40  # a cap when a validation split is given (early stopping)
    batch_size: int = 64
    weight_decay: float = 1e-4
    class_weight: str = "none"
    patience: int = DEFAULT_PATIENCE


@dataclass
class Standardizer:
    """Per-feature mean and (floored) std of the training features; folded into the head."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor) -> Standardizer:
        mean = x.mean(0)
        std = x.std(0)
        # Floor the scale: a feature (nearly) constant in training must not be amplified, or
        # the folded weight w/std turns a tiny activation at test time (or a quantization
        # error) into a huge logit.
        std = std.clamp_min(max(0.1 * float(std.median()), 1e-6))
        return cls(mean, std)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def fold(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., K, D) weights and (..., K) biases on standardised features -> on raw ones."""
        return weight / self.std, bias - (weight * (self.mean / self.std)).sum(-1)

    def unfold(self, weight: torch.Tensor, bias: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The inverse of ``fold``: weights on raw features -> on standardised ones."""
        return weight * self.std, bias + (weight * self.mean).sum(-1)


@dataclass
class HeadFit:
    """One trained head: weights on raw features, and how its training went."""

    weight: np.ndarray  # (K, D) float32
    bias: np.ndarray  # (K,) float32
    lr: float
    momentum: float
    best_epoch: int  # epochs of training behind these weights
    epochs_run: int
    val_accuracy: float | None = None
    val_mae: float | None = None
    val_loss: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    scaler: Standardizer | None = None  # the standardisation folded into the weights

    def linear(self) -> nn.Linear:
        layer = nn.Linear(self.weight.shape[1], self.weight.shape[0])
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(self.weight))
            layer.bias.copy_(torch.from_numpy(self.bias))
        return layer.eval()


def _check_stackable(configs: Sequence[HeadConfig]) -> None:
    if not configs:
        raise InputError("no head configurations to train")
    first = configs[0]
    for c in configs[1:]:
        if replace(c, lr=first.lr, momentum=first.momentum) != first:
            raise InputError("stacked heads may differ only in learning rate and momentum")
    if first.epochs < 1 or first.batch_size < 1:
        raise InputError(f"epochs ({first.epochs}) and batch size ({first.batch_size}) must be "
                         ">= 1")


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_heads(
    features: np.ndarray, levels: np.ndarray, k: int, configs: Sequence[HeadConfig], *,
    seed: int, val: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[HeadFit]:
    """Train one linear head per config at once (same data, same minibatch order).

    With ``val``, each head is scored on it after every epoch (accuracy, then MAE, then
    loss), keeps its best epoch's weights and stops after ``patience`` epochs without a
    better score; training ends when every head has stopped or at ``epochs``. Without
    ``val``, every head runs exactly ``epochs`` epochs.

    One thread: the matrix products are small, and a second thread only adds
    synchronisation (measured on 2 shared cores: 1 thread 9 s, 2 threads 79 s).
    """
    with torch_threads(1):
        return _train_heads(features, levels, k, configs, seed=seed, val=val)


def _train_heads(
    features: np.ndarray, levels: np.ndarray, k: int, configs: Sequence[HeadConfig], *,
    seed: int, val: tuple[np.ndarray, np.ndarray] | None,
) -> list[HeadFit]:
    _check_stackable(configs)
    base = configs[0]
    g = len(configs)
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    y = torch.from_numpy(np.asarray(levels, dtype=np.int64))
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise InputError(f"features {tuple(x.shape)} and {len(y)} levels do not match")
    scaler = Standardizer.fit(x)
    xs = scaler(x)
    weights = class_weights(np.asarray(levels), k, base.class_weight)
    w_cls = torch.from_numpy(weights) if weights is not None else None
    # G heads of K levels as one (G*K, D) matrix: a minibatch's logits are one product
    lr = torch.tensor([c.lr for c in configs], dtype=torch.float32).repeat_interleave(k)
    mom = torch.tensor([c.momentum for c in configs], dtype=torch.float32).repeat_interleave(k)
    wd = base.weight_decay
    # a linear head is convex: zero init, no dead-feature weights left
    weight = torch.zeros(g * k, x.shape[1])
    bias = torch.zeros(g * k)
    buf_w = torch.zeros_like(weight)
    buf_b = torch.zeros_like(bias)
    lr_w, mom_w = lr.view(-1, 1), mom.view(-1, 1)
    tracker = _EarlyStopping(g, base.patience, scaler, val, base.loss, w_cls) if val else None
    generator = torch.Generator().manual_seed(seed)
    n = len(xs)
    epochs_run = 0
    for _ in range(base.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, base.batch_size):
            idx = order[start : start + base.batch_size]
            xb = xs[idx]
            grad_logits = _logit_gradient(base.loss, torch.addmm(bias, xb, weight.T).view(
                len(idx), g, k), y[idx], w_cls).reshape(len(idx), g * k)
            # torch.optim.SGD's update, per head: d = grad + wd * p; buf = m * buf + d;
            # p -= lr * buf
            buf_w.mul_(mom_w).add_(torch.addmm(weight, grad_logits.T, xb, beta=wd))
            buf_b.mul_(mom).add_(grad_logits.sum(0).add_(bias, alpha=wd))
            weight.addcmul_(lr_w, buf_w, value=-1.0)
            bias.addcmul_(lr, buf_b, value=-1.0)
        epochs_run += 1
        if tracker is not None and tracker.update(epochs_run, weight.view(g, k, -1),
                                                  bias.view(g, k)):
            break
    if tracker is not None:
        best_w, best_b = tracker.best_weight, tracker.best_bias
    else:
        best_w, best_b = weight.view(g, k, -1), bias.view(g, k)
    folded_w, folded_b = scaler.fold(best_w, best_b)
    fits = []
    for i, config in enumerate(configs):
        fit = HeadFit(folded_w[i].numpy().astype(np.float32).copy(),
                      folded_b[i].numpy().astype(np.float32).copy(), config.lr,
                      config.momentum, best_epoch=epochs_run, epochs_run=epochs_run,
                      scaler=scaler)
        if tracker is not None:
            tracker.describe(i, fit)
        fits.append(fit)
    return fits


def _logit_gradient(loss: str, logits: torch.Tensor, target: torch.Tensor,
                    weights: torch.Tensor | None) -> torch.Tensor:
    """d(sum over heads of each head's mean loss) / d logits, for logits (B, G, K).

    Cross-entropy in closed form (softmax minus one-hot, times the sample's share of the
    batch weight); EMD through autograd on the logits alone. The weight gradients are then
    one matrix product, with no autograd graph through it.
    """
    share = (torch.full((len(target),), 1.0 / len(target)) if weights is None
             else weights[target] / weights[target].sum())
    if loss == "ce":
        grad = logits.softmax(-1)
        grad[torch.arange(len(target)), :, target] -= 1.0
        return grad.mul_(share.view(-1, 1, 1))
    z = logits.detach().requires_grad_(True)
    per_sample = per_sample_loss(loss, z.transpose(0, 1), target)  # (G, B)
    (grad,) = torch.autograd.grad((per_sample * share).sum(), z)
    return grad


def _stacked_logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(B, D) features, G heads' (G, K, D) weights and (G, K) biases -> (G, B, K) logits, as
    one matrix product."""
    g, k, d = weight.shape
    return (x @ weight.view(g * k, d).T).view(len(x), g, k).transpose(0, 1) + bias.unsqueeze(1)


class _EarlyStopping:
    """Per head: the best validation score so far, its epoch and weights, and whether the
    head has stopped (a stopped head's choice is final, as if it had trained alone)."""

    def __init__(self, g: int, patience: int, scaler: Standardizer,
                 val: tuple[np.ndarray, np.ndarray], loss: str,
                 w_cls: torch.Tensor | None) -> None:
        if patience < 1:
            raise InputError(f"early-stopping patience must be >= 1, got {patience}")
        xv = torch.from_numpy(np.ascontiguousarray(val[0], dtype=np.float32))
        self.xv = scaler(xv)
        self.yv = torch.from_numpy(np.asarray(val[1], dtype=np.int64))
        if len(self.xv) == 0 or len(self.xv) != len(self.yv):
            raise InputError("the validation split is empty or its features and levels differ")
        self.patience = patience
        self.loss = loss
        self.w_cls = w_cls
        self.best_key = [(-1.0, 0.0, 0.0)] * g
        self.best_epoch = [0] * g
        self.best_scores: list[dict[str, float]] = [{} for _ in range(g)]
        self.stopped = [False] * g
        self.stopped_at = [0] * g
        self.best_weight: torch.Tensor | None = None
        self.best_bias: torch.Tensor | None = None
        self.history: list[list[dict[str, float]]] = [[] for _ in range(g)]

    def update(self, epoch: int, weight: torch.Tensor, bias: torch.Tensor) -> bool:
        """Score every head after ``epoch``; True when every head has stopped."""
        with torch.no_grad():
            logits = _stacked_logits(self.xv, weight, bias)
            losses = loss_fn(self.loss, logits, self.yv, self.w_cls)
            pred = logits.argmax(-1)
            acc = (pred == self.yv).double().mean(-1)
            mae = (pred - self.yv).abs().double().mean(-1)
        if self.best_weight is None:
            self.best_weight, self.best_bias = weight.clone(), bias.clone()
        for i in range(len(self.stopped)):
            scores = {"epoch": epoch, "val_accuracy": float(acc[i]), "val_mae": float(mae[i]),
                      "val_loss": float(losses[i])}
            self.history[i].append(scores)
            if self.stopped[i]:
                continue
            key = (float(acc[i]), -float(mae[i]), -float(losses[i]))
            if key > self.best_key[i]:
                self.best_key[i] = key
                self.best_epoch[i] = epoch
                self.best_scores[i] = scores
                self.best_weight[i] = weight[i]
                self.best_bias[i] = bias[i]
            elif epoch - self.best_epoch[i] >= self.patience:
                self.stopped[i] = True
                self.stopped_at[i] = epoch
        return all(self.stopped)

    def describe(self, i: int, fit: HeadFit) -> None:
        fit.best_epoch = self.best_epoch[i]
        fit.epochs_run = self.stopped_at[i] or fit.epochs_run
        fit.val_accuracy = self.best_scores[i]["val_accuracy"]
        fit.val_mae = self.best_scores[i]["val_mae"]
        fit.val_loss = self.best_scores[i]["val_loss"]
        fit.history = self.history[i][: fit.epochs_run]


def train_head(
    features: np.ndarray, levels: np.ndarray, k: int, config: HeadConfig, *, seed: int,
    val: tuple[np.ndarray, np.ndarray] | None = None,
) -> nn.Linear:
    """One head (batch SGD + momentum on standardised features); the standardisation is
    folded into the returned layer so it takes raw features."""
    return train_heads(features, levels, k, [config], seed=seed, val=val)[0].linear()


def predict_proba(head: nn.Linear, features: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return head(torch.from_numpy(features.astype(np.float32))).softmax(1).numpy()


@dataclass
class GridResult:
    lr: float
    momentum: float
    val_accuracy: float
    val_mae: float
    best_epoch: int
    val_loss: float | None = None


def grid_search(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    k: int,
    *,
    lrs: Sequence[float],
    momenta: Sequence[float],
    base: HeadConfig,
    seed: int,
) -> tuple[HeadFit, list[GridResult]]:
    """Learning rate x momentum on the validation split, every point trained at once.

    Returns the chosen head itself (best validation accuracy, then lowest MAE, then the
    smallest learning rate) -- not a retrained copy -- and the whole grid.
    """
    grid = [replace(base, lr=lr, momentum=m) for lr in lrs for m in momenta]
    fits = train_heads(*train, k, grid, seed=seed, val=val)
    results = [GridResult(f.lr, f.momentum, float(f.val_accuracy), float(f.val_mae),
                          f.best_epoch, f.val_loss) for f in fits]
    best = max(range(len(fits)),
               key=lambda i: (results[i].val_accuracy, -results[i].val_mae, -results[i].lr))
    return fits[best], results
