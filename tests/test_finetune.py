"""Fine-tuning on cached entries: what validation scores is what the run keeps."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.conftest import has_torch

pytestmark = pytest.mark.skipif(not has_torch(), reason="torch not installed (edge-smw[train])")


def _toy_problem(seed: int = 0):
    """A two-unit conv backbone, its second unit fine-tuned on cached entries (what the first
    unit outputs), a linear head tuned on the frozen features, noisy labels."""
    import torch
    from torch import nn

    from edge_smw.train.backbones import FeatureMaps
    from edge_smw.train.finetune import CachedHeadInputs, head_features
    from edge_smw.train.heads import Standardizer
    from edge_smw.train.settings import get_head_kind

    torch.manual_seed(seed)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
    maps = FeatureMaps(body, body, [("stem", ("0",)), ("conv", ("1",))])
    inputs = CachedHeadInputs(maps, get_head_kind("linear"), 1, (8, 4, 4)).eval()
    rng = np.random.default_rng(seed)
    entries = rng.normal(size=(300, 8 * 4 * 4)).astype(np.float32)
    levels = ((entries[:, :16].sum(1) + rng.normal(scale=2.0, size=300)) > 0).astype(np.int64)
    features = torch.from_numpy(head_features(inputs, entries))
    scaler = Standardizer.fit(features)
    weight, bias = scaler.fold(0.1 * torch.randn(2, 8), torch.zeros(2))
    return inputs, scaler, weight.numpy(), bias.numpy(), entries, levels


def _fit(scaler, weight, bias):
    from edge_smw.train.heads import HeadFit

    return HeadFit(weight=weight, bias=bias, lr=0.1, momentum=0.9, best_epoch=1, epochs_run=1,
                   scaler=scaler)


@pytest.mark.parametrize("average_epochs", [0.0, 1.0])
def test_the_kept_weights_are_the_ones_validation_scored(average_epochs):
    """Reloading the returned units and head gives back the validation loss recorded for the
    best epoch: with averaging on, the averaged weights are both scored and kept."""
    from edge_smw.train.finetune import _score, finetune_units
    from edge_smw.train.settings import FinetuneConfig

    inputs, scaler, weight, bias, entries, levels = _toy_problem()
    config = FinetuneConfig(lr=0.05, epochs=6, patience=6, batch_size=32,
                            average_epochs=average_epochs)
    train, val = (entries[:200], levels[:200]), (entries[200:], levels[200:])
    result = finetune_units(inputs, _fit(scaler, weight, bias), train, val, config, seed=0,
                            progress=False)
    best = result.history[result.best_epoch]
    accuracy, _, neg_loss = _score(result.inputs, result.head, val, "ce", None)
    assert accuracy == pytest.approx(best["val_accuracy"]) == result.val_accuracy
    assert -neg_loss == pytest.approx(best["val_loss"], rel=1e-5)
    assert result.best_epoch > 0  # training moved the weights: the check above had teeth


def test_averaging_keeps_other_weights_than_the_last_step():
    """Same data, seed and steps: averaging over an epoch changes what is scored (it is not a
    no-op), and 0 switches it off."""
    from edge_smw.train.finetune import finetune_units
    from edge_smw.train.settings import FinetuneConfig

    inputs, scaler, weight, bias, entries, levels = _toy_problem()
    base = FinetuneConfig(lr=0.05, epochs=3, patience=3, batch_size=32)
    train, val = (entries[:200], levels[:200]), (entries[200:], levels[200:])
    losses = {}
    for average in (0.0, 1.0, 0.0):
        result = finetune_units(inputs, _fit(scaler, weight, bias), train, val,
                                dataclasses.replace(base, average_epochs=average), seed=0,
                                progress=False)
        losses.setdefault(average, []).append([h["val_loss"] for h in result.history[1:]])
    assert losses[0.0][0] == losses[0.0][1]  # deterministic
    assert not np.allclose(losses[0.0][0], losses[1.0][0])
