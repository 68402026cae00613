"""``--finetune-last N``: train the backbone's last N units together with the head.

What enters those units is computed once by the feature pass and cached (the *entry*: the
activation entering the first tuned unit, and the global averages of any earlier maps the
head reads, as one float16 vector per crop), so training never runs the frozen part forward
or backward again: each step is the last N units and the head, on cached entries. BatchNorm
keeps its ImageNet statistics (eval mode; its scale and shift train), so the exported graph
has the frozen model's shape. The head starts from the tuned linear head; early stopping on
the validation split picks the epoch, scoring a moving average of the weights
(``FinetuneConfig.average_epochs``) rather than the last step's.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from edge_smw.errors import InputError
from edge_smw.train.heads import HeadFit, class_weights, loss_fn, torch_threads
from edge_smw.train.model import HeadKind, HeadMap, HeadPool, stage_taps
from edge_smw.train.settings import FinetuneConfig

EVAL_BATCH = 256


class EntryFeatures(nn.Module):
    """Network input -> the cached entry of unit ``start``: [global averages of the maps
    the head reads before ``start``..., the activation entering ``start``, flattened]."""

    def __init__(self, feature_maps: nn.Module, kind: HeadKind, start: int) -> None:
        super().__init__()
        self.feature_maps = feature_maps
        taps = stage_taps(feature_maps.unit_names, kind.stages) if kind.stages > 1 else []
        self.early = [t for t in taps if t < start]
        self.start = start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tapped, entry = self.feature_maps.tap_units(x, self.early, 0, self.start)
        return torch.cat([m.mean(dim=(2, 3)) for m in tapped] + [entry.flatten(1)], dim=1)


class CachedHeadInputs(nn.Module):
    """Cached entries of unit ``start`` -> the head's features: units ``start``.. run (and
    train) here; what the head reads from earlier maps comes from the cache."""

    def __init__(self, feature_maps: nn.Module, kind: HeadKind, start: int,
                 entry_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.feature_maps = feature_maps
        taps = stage_taps(feature_maps.unit_names, kind.stages) if kind.stages > 1 else []
        self.late = [t for t in taps if t >= start]
        self.start = start
        self.entry_shape = tuple(entry_shape)
        self.head_map = HeadMap()
        self.pool = HeadPool(kind.grid)
        if kind.grid > 1 and len(taps) > len(self.late):
            raise InputError(f"head '{kind.name}': grid pooling of earlier stages is not cached")

    def forward(self, entries: torch.Tensor) -> torch.Tensor:
        size = int(np.prod(self.entry_shape))
        early = entries[:, : entries.shape[1] - size]
        x = entries[:, entries.shape[1] - size :].reshape(-1, *self.entry_shape)
        tapped, last = self.feature_maps.tap_units(x, self.late, self.start)
        pooled = self.pool(self.head_map(tapped or [last]))
        return torch.cat([early, pooled], dim=1) if early.shape[1] else pooled


@dataclass
class FinetuneResult:
    inputs: CachedHeadInputs  # the tuned units (inside a copy of the backbone) -> features
    head: nn.Linear
    state: dict[str, np.ndarray]  # the tuned units' weights, names inside the backbone body
    best_epoch: int
    epochs_run: int
    val_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch, "epochs_run": self.epochs_run,
                "val_accuracy": self.val_accuracy, "history": self.history}


class StandardizedHead(nn.Module):
    """The tuned head on the standardised features it was trained on: SGD stays as well
    conditioned as in tuning (on raw features, a low-variance feature's folded weight is
    huge and one step moves it far). ``folded`` gives the layer on raw features back."""

    def __init__(self, fit: HeadFit) -> None:
        super().__init__()
        if fit.scaler is None:
            raise InputError("the tuned head carries no standardisation to fine-tune from")
        self.scaler = fit.scaler
        weight, bias = fit.scaler.unfold(torch.from_numpy(fit.weight),
                                         torch.from_numpy(fit.bias))
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.scaler(features))

    def folded(self) -> nn.Linear:
        weight, bias = self.scaler.fold(self.linear.weight.detach(), self.linear.bias.detach())
        layer = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
        return layer.eval()


def finetune_units(
    inputs: CachedHeadInputs, fit: HeadFit, train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray], config: FinetuneConfig, *, seed: int,
    progress: bool = True,
) -> FinetuneResult:
    """Units ``inputs.start``.. (of a copy of the backbone) and the tuned head ``fit``,
    trained by SGD with momentum on cached entries; the best validation epoch's weights are
    returned (the head folded onto raw features, as every head is)."""
    if len(train[0]) == 0 or len(val[0]) == 0:
        raise InputError("fine-tuning needs training and validation entries")
    with torch_threads(config.threads or torch.get_num_threads()):
        return _finetune(copy.deepcopy(inputs).eval(), StandardizedHead(fit), train, val,
                         config, seed, progress)


def _finetune(inputs: CachedHeadInputs, head: StandardizedHead,
              train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
              config: FinetuneConfig, seed: int, progress: bool) -> FinetuneResult:
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    maps = inputs.feature_maps
    prefixes = maps.unit_parameter_prefixes(inputs.start)
    tuned = [p for name, p in maps.body.named_parameters() if name.startswith(prefixes)]
    for p in tuned:
        p.requires_grad_(True)
    params = tuned + list(head.parameters())
    for p in head.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(
        [{"params": tuned}, {"params": list(head.parameters()),
                             "lr": config.lr * config.head_lr_scale}],
        lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    k = head.linear.out_features
    weights = class_weights(np.asarray(train[1]), k, config.class_weight)
    w_cls = torch.from_numpy(weights) if weights is not None else None
    y = torch.from_numpy(np.asarray(train[1], dtype=np.int64))
    generator = torch.Generator().manual_seed(seed)
    n = len(y)
    trained = nn.ModuleDict({"inputs": inputs, "head": head})
    # An exponential moving average over about ``average_epochs`` epochs of steps (the frozen
    # weights average to themselves); validation scores it and the run keeps it.
    steps = config.average_epochs * -(-n // config.batch_size)
    averaged = (AveragedModel(trained, multi_avg_fn=get_ema_multi_avg_fn(1.0 - 1.0 / steps))
                if steps >= 1 else None)
    scored = averaged.module if averaged is not None else trained

    def snapshot() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        body = scored["inputs"].feature_maps.body
        units = {name: t.detach().clone() for name, t in body.state_dict().items()
                 if name.startswith(prefixes)}
        return units, {name: t.detach().clone() for name, t in scored["head"].state_dict().items()}

    def score() -> tuple[float, float, float]:
        return _score(scored["inputs"], scored["head"], val, config.loss, w_cls)

    def record(epoch: int, key: tuple[float, float, float]) -> dict[str, float]:
        return {"epoch": epoch, "val_accuracy": key[0], "val_mae": -key[1], "val_loss": -key[2]}

    best_key, best_epoch, best_state = score(), 0, snapshot()
    history = [record(0, best_key)]
    epochs_run = 0
    bar = tqdm(total=config.epochs, desc=f"fine-tune last {len(maps.unit_names) - inputs.start}",
               unit="epoch", disable=not progress, leave=False)
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(n, generator=generator)
        for idx in _batches(order, config.batch_size):
            x = torch.from_numpy(train[0][idx.numpy()].astype(np.float32))
            loss = loss_fn(config.loss, head(inputs(x)), y[idx], w_cls)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if averaged is not None:
                averaged.update_parameters(trained)
        epochs_run = epoch
        key = score()
        history.append(record(epoch, key))
        bar.update(1)
        bar.set_postfix(val_accuracy=f"{key[0]:.4f}")
        if key > best_key:
            best_key, best_epoch, best_state = key, epoch, snapshot()
        elif epoch - best_epoch >= config.patience:
            break
    bar.close()
    maps.body.load_state_dict(best_state[0], strict=False)
    head.load_state_dict(best_state[1])
    for p in params:
        p.requires_grad_(False)
    state = {name: t.numpy() for name, t in best_state[0].items()}
    return FinetuneResult(inputs.eval(), head.folded(), state, best_epoch, epochs_run,
                          best_key[0], history)


def _batches(order: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(order), size):
        yield order[start : start + size]


def _score(inputs: CachedHeadInputs, head: nn.Module, val: tuple[np.ndarray, np.ndarray], loss: str,
           w_cls: torch.Tensor | None) -> tuple[float, float, float]:
    """(accuracy, -MAE, -loss) on the validation split, as the head grid ranks epochs."""
    logits = head_logits(inputs, head, val[0])
    y = torch.from_numpy(np.asarray(val[1], dtype=np.int64))
    pred = logits.argmax(1)
    return (float((pred == y).double().mean()), -float((pred - y).abs().double().mean()),
            -float(loss_fn(loss, logits, y, w_cls)))


def head_features(inputs: CachedHeadInputs, activations: np.ndarray) -> np.ndarray:
    """The head's input features for cached entries, in batches, without gradients."""
    with torch.no_grad():
        parts = [inputs(torch.from_numpy(activations[i : i + EVAL_BATCH].astype(np.float32)))
                 for i in range(0, len(activations), EVAL_BATCH)]
    return torch.cat(parts).numpy()


def head_logits(inputs: CachedHeadInputs, head: nn.Module, activations: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return head(torch.from_numpy(head_features(inputs, activations)))
