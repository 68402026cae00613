"""Stacked head tuning: exactly per-head SGD with momentum, early stopping, in seconds."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import has_torch

pytestmark = pytest.mark.skipif(not has_torch(), reason="torch not installed (edge-smw[train])")


def _blobs(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian clusters with a few dead and scaled features."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    y = rng.integers(0, k, size=n)
    x = centres[y] + 1.5 * rng.normal(size=(n, d))
    x[:, 0] = 0.0
    x[:, 1] *= 50.0
    return x.astype(np.float32), y.astype(np.int64)


def _reference_head(x: np.ndarray, y: np.ndarray, k: int, *, lr: float, momentum: float,
                    loss: str, epochs: int, batch_size: int, weight_decay: float,
                    class_weight: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One head, the textbook way: nn.Linear + torch.optim.SGD, one minibatch at a time,
    on the same standardised features and the same minibatch order."""
    from edge_smw.train.heads import Standardizer, class_weights, torch_threads

    with torch_threads(1):  # tiny products: one thread is much faster on shared cores
        return _reference_loop(x, y, k, lr=lr, momentum=momentum, loss=loss, epochs=epochs,
                               batch_size=batch_size, weight_decay=weight_decay,
                               w=class_weights(y, k, class_weight), seed=seed,
                               scaler_cls=Standardizer)


def _reference_loop(x, y, k, *, lr, momentum, loss, epochs, batch_size, weight_decay, w, seed,
                    scaler_cls):
    import torch
    import torch.nn.functional as F

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    scaler = scaler_cls.fit(xt)
    xs = scaler(xt)
    head = torch.nn.Linear(x.shape[1], k)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    w = torch.from_numpy(w) if w is not None else None
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=gen)
        for start in range(0, len(xs), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            logits = head(xs[idx])
            if loss == "ce":
                value = F.cross_entropy(logits, yt[idx], weight=w)
            else:
                probs = logits.softmax(1)
                onehot = F.one_hot(yt[idx], k).to(probs.dtype)
                per = (probs.cumsum(1) - onehot.cumsum(1)).pow(2).sum(1)
                value = per.mean() if w is None else (per * w[yt[idx]]).sum() / w[yt[idx]].sum()
            value.backward()
            opt.step()
    wf, bf = scaler.fold(head.weight.detach(), head.bias.detach())
    return wf.numpy(), bf.numpy()


@pytest.mark.parametrize("loss,class_weight,k", [("ce", "none", 2), ("emd", "balanced", 4)])
def test_each_stacked_head_equals_the_head_trained_alone(loss, class_weight, k):
    from edge_smw.train.heads import HeadConfig, train_heads

    x, y = _blobs(300, 24, k, seed=1)
    grid = [(0.001, 0.0), (0.01, 0.5), (0.03, 0.9), (0.1, 0.0)]
    configs = [HeadConfig(lr=lr, momentum=m, loss=loss, epochs=6, batch_size=32,
                          class_weight=class_weight) for lr, m in grid]
    fits = train_heads(x, y, k, configs, seed=3)
    for (lr, m), fit in zip(grid, fits, strict=True):
        ref_w, ref_b = _reference_head(x, y, k, lr=lr, momentum=m, loss=loss, epochs=6,
                                       batch_size=32, weight_decay=1e-4,
                                       class_weight=class_weight, seed=3)
        assert fit.best_epoch == fit.epochs_run == 6
        np.testing.assert_allclose(fit.weight, ref_w, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(fit.bias, ref_b, rtol=1e-4, atol=1e-5)
    # the heads really differ: each one got its own learning rate and momentum
    assert not np.allclose(fits[0].weight, fits[2].weight, atol=1e-3)


def test_grid_search_returns_the_head_it_reports():
    from edge_smw.train.heads import HeadConfig, grid_search, train_heads

    x, y = _blobs(550, 16, 3, seed=2)
    x, y, xv, yv = x[:400], y[:400], x[400:], y[400:]
    base = HeadConfig(lr=0.0, momentum=0.0, epochs=30, batch_size=64, patience=3)
    chosen, grid = grid_search((x, y), (xv, yv), 3, lrs=(0.001, 0.03), momenta=(0.0, 0.9),
                               base=base, seed=0)
    best = max(grid, key=lambda r: (r.val_accuracy, -r.val_mae, -r.lr))
    assert (chosen.lr, chosen.momentum) == (best.lr, best.momentum)
    # the same point trained alone, with the same early stopping, gives the same head
    alone = train_heads(x, y, 3, [HeadConfig(lr=best.lr, momentum=best.momentum, epochs=30,
                                             batch_size=64, patience=3)],
                        seed=0, val=(xv, yv))[0]
    assert alone.best_epoch == chosen.best_epoch == best.best_epoch
    np.testing.assert_allclose(alone.weight, chosen.weight, rtol=1e-4, atol=1e-5)
    pred = (xv @ chosen.weight.T + chosen.bias).argmax(1)
    assert float((pred == yv).mean()) == pytest.approx(best.val_accuracy)


def test_early_stopping_records_the_best_epoch_and_stops():
    from edge_smw.train.heads import HeadConfig, train_heads

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 64)).astype(np.float32)
    y = rng.integers(0, 2, size=200)
    xv = rng.normal(size=(200, 64)).astype(np.float32)
    yv = rng.integers(0, 2, size=200)  # labels unrelated to features: nothing to learn
    fit = train_heads(x, y, 2, [HeadConfig(lr=0.1, momentum=0.9, epochs=40, patience=4)],
                      seed=0, val=(xv, yv))[0]
    assert fit.epochs_run < 40  # stopped before the cap
    assert fit.epochs_run == fit.best_epoch + 4
    best = max(fit.history, key=lambda h: (h["val_accuracy"], -h["val_mae"], -h["val_loss"]))
    assert best["epoch"] == fit.best_epoch
    assert fit.val_accuracy == best["val_accuracy"]
    pred = (xv @ fit.weight.T + fit.bias).argmax(1)
    assert float((pred == yv).mean()) == pytest.approx(fit.val_accuracy)


def test_same_seed_same_heads_and_stackable_configs_only():
    from edge_smw.errors import InputError
    from edge_smw.train.heads import HeadConfig, train_heads

    x, y = _blobs(120, 8, 2, seed=4)
    configs = [HeadConfig(lr=0.01, momentum=0.9, epochs=3),
               HeadConfig(lr=0.1, momentum=0.0, epochs=3)]
    a = train_heads(x, y, 2, configs, seed=5)
    b = train_heads(x, y, 2, configs, seed=5)
    c = train_heads(x, y, 2, configs, seed=6)
    for fa, fb in zip(a, b, strict=True):
        np.testing.assert_array_equal(fa.weight, fb.weight)
    assert not np.array_equal(a[0].weight, c[0].weight)
    with pytest.raises(InputError, match="only in learning rate and momentum"):
        train_heads(x, y, 2, [configs[0], HeadConfig(lr=0.1, momentum=0.0, epochs=4)], seed=0)


def test_bad_training_options_are_refused_before_any_work() -> None:
    from edge_smw.errors import InputError
    from edge_smw.train.pipeline import TrainOptions, validate_options
    from edge_smw.train.settings import FinetuneConfig

    assert validate_options(TrainOptions(head="stages")).name == "stages"
    for options, expected in [
        (TrainOptions(finetune_last=1, engine="ray"), "--engine inprocess"),
        (TrainOptions(finetune_last=-1), "--finetune-last must be >= 0"),
        (TrainOptions(patience=0), "--patience must be >= 1"),
        (TrainOptions(finetune=FinetuneConfig(lr=0.0)), "--finetune-lr must be a number > 0"),
        (TrainOptions(finetune=FinetuneConfig(lr=float("nan"))), "--finetune-lr must be a"),
        (TrainOptions(finetune=FinetuneConfig(average_epochs=-1)), "--finetune-average must be"),
        (TrainOptions(finetune=FinetuneConfig(average_epochs=float("nan"))), "--finetune-av"),
        (TrainOptions(loss="hinge"), "--loss 'hinge': choose one of"),
    ]:
        with pytest.raises(InputError, match=expected):
            validate_options(options)
