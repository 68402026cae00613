"""Training: deterministic, both losses, checkpoints that refuse to be misread, real accuracy."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest

from tests.conftest import SMILES_LEVELS, has_torch

pytestmark = pytest.mark.skipif(not has_torch(), reason="torch not installed (edge-smw[train])")


def _train(smiles_dir, out, **kw):
    from edge_smw.data.datasets import load_dataset
    from edge_smw.data.sources import DataSource
    from edge_smw.train.pipeline import TrainOptions, train_run

    opts = dict(max_per_level=120, compare_losses=False, progress=False, lrs=(0.01,),
                momenta=(0.9,), epochs=10)
    opts.update(kw)
    ds = load_dataset(smiles_dir, levels=SMILES_LEVELS)
    return train_run(DataSource(ds, True, "smiles-share"), out, TrainOptions(**opts))


def test_same_seed_gives_identical_weights(smiles_dir, tmp_path):
    from edge_smw.train.checkpoint import load_checkpoint

    a = load_checkpoint(_train(smiles_dir, tmp_path / "a", seed=7).checkpoint)
    b = load_checkpoint(_train(smiles_dir, tmp_path / "b", seed=7).checkpoint)
    c = load_checkpoint(_train(smiles_dir, tmp_path / "c", seed=8).checkpoint)
    np.testing.assert_array_equal(a.head_weight, b.head_weight)
    np.testing.assert_array_equal(a.head_bias, b.head_bias)
    assert not np.array_equal(a.head_weight, c.head_weight)
    split_a, split_b = (tmp_path / x / "split.json" for x in "ab")
    assert split_a.read_text() == split_b.read_text()


def test_run_folder_and_checkpoint_contents(smiles_run):
    from edge_smw.data.datasets import SplitManifest
    from edge_smw.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(smiles_run)
    assert ckpt.levels == SMILES_LEVELS
    assert ckpt.backbone == "efficientnet_lite0" and ckpt.detect is False
    assert ckpt.split_sha256 == SplitManifest.load(smiles_run / "split.json").sha256
    assert ckpt.contract.mean == (0.5, 0.5, 0.5) and ckpt.contract.input_size == 224
    assert ckpt.head_weight.shape == (2, 1280)
    for name in ("report.md", "report.json", "report_confusion.png", "skipped.json", "train.json"):
        assert (smiles_run / name).is_file(), name
    assert "| Accuracy |" in (smiles_run / "report.md").read_text()
    assert not list(smiles_run.glob(".*.tmp"))  # no temporary leftovers


def test_checkpoint_errors_are_clear(smiles_run, tmp_path):
    import torch

    from edge_smw.errors import ModelError
    from edge_smw.train.checkpoint import load_checkpoint

    with pytest.raises(ModelError, match="holds neither a training checkpoint"):
        load_checkpoint(tmp_path)
    data = (smiles_run / "checkpoint.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        load_checkpoint(cut)
    payload = torch.load(smiles_run / "checkpoint.pt", weights_only=True)
    payload["format_version"] = 99
    newer = tmp_path / "newer.pt"
    torch.save(payload, newer)
    with pytest.raises(ModelError, match="newer edge-smw"):
        load_checkpoint(newer)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="not an edge-smw checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_both_losses_reported_side_by_side(smiles_dir, tmp_path):
    result = _train(smiles_dir, tmp_path / "r", compare_losses=True, loss="emd",
                    class_weight="balanced")
    assert set(result.losses) == {"emd", "ce"}
    report = (tmp_path / "r" / "report.md").read_text()
    assert "| emd (saved) |" in report and "| ce |" in report
    for r in result.losses.values():
        assert 0.5 < r["test"]["accuracy"] <= 1.0


def test_emd_loss_is_zero_only_for_a_perfect_distribution():
    import torch

    from edge_smw.train.heads import loss_fn

    target = torch.tensor([0, 2])
    perfect = torch.tensor([[50.0, 0, 0], [0, 0, 50.0]])
    off_by_two = torch.tensor([[0, 0, 50.0], [50.0, 0, 0]])
    off_by_one = torch.tensor([[0, 50.0, 0], [0, 50.0, 0]])
    assert loss_fn("emd", perfect, target, None) < 1e-6
    # ordinal: predicting two levels away costs more than one level away
    assert loss_fn("emd", off_by_two, target, None) > loss_fn("emd", off_by_one, target, None)
    # cross-entropy does not care how far off a wrong level is
    ce2, ce1 = loss_fn("ce", off_by_two, target, None), loss_fn("ce", off_by_one, target, None)
    assert abs(float(ce2 - ce1)) < 1e-4


def test_class_weights_balance_rare_levels():
    from edge_smw.errors import InputError
    from edge_smw.train.heads import class_weights

    w = class_weights(np.array([0, 0, 0, 1]), 2, "balanced")
    assert w[1] == pytest.approx(3 * w[0])
    assert class_weights(np.array([0, 1]), 2, "none") is None
    with pytest.raises(InputError, match="--class-weight must be .* got 'median'"):
        class_weights(np.array([0, 1]), 2, "median")


def test_resnet18_offline_fails_clearly_and_local_file_works(tmp_path, monkeypatch):
    import torch
    import torchvision

    from edge_smw.errors import OfflineError
    from edge_smw.train.backbones import build_feature_maps, get_backbone

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached weights

    def offline(*_a, **_k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(OfflineError, match="--backbone-weights"):
        build_feature_maps(get_backbone("resnet18"))
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    maps = build_feature_maps(get_backbone("resnet18"), weights)
    assert maps(torch.zeros(1, 3, 64, 64)).shape == (1, 512, 2, 2)


@pytest.mark.slow
def test_default_backbone_reaches_87_percent_on_real_crops(smiles_dir, tmp_path):
    """The issue's bar, on the whole shared set (features are cached after the first run)."""
    result = _train(smiles_dir, tmp_path / "full", max_per_level=None, epochs=40,
                    lrs=(0.001, 0.003, 0.01), momenta=(0.0, 0.9))
    assert result.test_metrics["n"] > 1400
    assert result.test_metrics["accuracy"] >= 0.87, result.test_metrics


def test_synthetic_set_trains_both_losses_side_by_side(tmp_path, monkeypatch):
    """The built-in demo data trains offline with both losses, reported side by side."""
    monkeypatch.setenv("EDGE_SMW_CACHE", str(tmp_path / "cache"))
    from edge_smw.data.sources import resolve_data
    from edge_smw.train.pipeline import TrainOptions, train_run

    source = resolve_data("synthetic", synthetic_count=250, progress=False)
    assert source.precropped and source.dataset.levels == ("1", "2", "3", "4", "5")
    result = train_run(source, tmp_path / "run", TrainOptions(
        compare_losses=True, progress=False, lrs=(0.01,), momenta=(0.9,), epochs=15))
    assert set(result.losses) == {"ce", "emd"}
    chance = 1 / 5
    for loss, r in result.losses.items():
        assert r["test"]["accuracy"] > chance, (loss, r["test"]["accuracy"])
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| ce (saved) |" in report and "| emd |" in report
    # --loss auto: the same two tuned heads (same seed, same cached features); the saved one is
    # the better on validation, whatever the test split says
    from edge_smw.train.checkpoint import load_checkpoint
    from edge_smw.train.pipeline import pick_loss

    auto = train_run(source, tmp_path / "auto", TrainOptions(
        loss="auto", progress=False, lrs=(0.01,), momenta=(0.9,), epochs=15))
    saved = pick_loss(auto.losses)
    assert load_checkpoint(auto.checkpoint).config["loss"] == saved == auto.loss
    assert auto.test_metrics == auto.losses[saved]["test"]
    for loss in ("ce", "emd"):
        assert auto.losses[loss]["val"] == result.losses[loss]["val"]
    assert f"| {saved} (saved) |" in (tmp_path / "auto" / "report.md").read_text()


def test_auto_loss_picks_by_validation_accuracy_then_mae_then_the_posters():
    from edge_smw.errors import InputError
    from edge_smw.train.pipeline import TrainOptions, pick_loss, validate_options

    def losses(ce, emd):
        return {"ce": {"val": dict(zip(("accuracy", "mae"), ce, strict=True)), "test": {}},
                "emd": {"val": dict(zip(("accuracy", "mae"), emd, strict=True)), "test": {}}}

    assert pick_loss(losses((0.87, 0.2), (0.88, 0.3))) == "emd"  # accuracy first
    assert pick_loss(losses((0.88, 0.2), (0.88, 0.3))) == "ce"  # then MAE
    assert pick_loss(losses((0.88, 0.3), (0.88, 0.2))) == "emd"
    assert pick_loss(losses((0.88, 0.2), (0.88, 0.2))) == "ce"  # a tie keeps the poster's
    with pytest.raises(InputError, match="--no-compare"):
        validate_options(TrainOptions(loss="auto", compare_losses=False))


def test_features_constant_in_training_cannot_blow_up_the_head():
    """A feature that never varied in training must not turn a small activation into a huge
    logit at test time (nor a small quantization error into a flipped level)."""
    from edge_smw.train.heads import HeadConfig, predict_proba, train_head

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16)).astype(np.float32)
    x[:, 3] = 0.0  # a dead channel during training
    x[:, 4] = 1e-7 * rng.normal(size=200)  # a nearly dead one
    y = (x[:, 0] > 0).astype(np.int64)
    head = train_head(x, y, 2, HeadConfig(lr=0.01, momentum=0.9, epochs=20), seed=0)
    assert float(np.abs(head.weight.detach().numpy()).max()) < 50
    probe = x[:5].copy()
    before = predict_proba(head, probe)
    probe[:, 3] = probe[:, 4] = 0.05  # the dead channels wake up a little at test time
    np.testing.assert_allclose(predict_proba(head, probe), before, atol=0.05)


def test_uncached_feature_pass_leaves_the_crop_cache_alone(smiles_dir, tmp_path, monkeypatch):
    """``cache=False`` (the bench's timed pass) detects every face itself: it neither reads nor
    writes detected crops, or it would time a PNG read against torch's full decode and
    detection."""
    from edge_smw.data.datasets import LabelledImage
    from edge_smw.errors import DataError
    from edge_smw.train.backbones import get_backbone
    from edge_smw.train.features import compute_features

    monkeypatch.setenv("EDGE_SMW_CACHE", str(tmp_path))
    items = [LabelledImage(p, 0) for p in sorted((smiles_dir / "smiling").glob("*.jpg"))[:2]]
    contract = get_backbone("efficientnet_lite0").contract(SMILES_LEVELS)

    class MeanPass:  # stands in for FeaturePass
        spec, fingerprint, suffix = get_backbone("efficientnet_lite0"), "test", "-mean"

        def __call__(self, x):
            return x.mean(axis=(1, 2, 3))[:, None].astype(np.float32)

    def crop_cache() -> list:
        return [p for p in (tmp_path / "crops").rglob("*") if p.is_file()]

    for cache in (False, True):
        try:  # a 64 px crop may hold no face the detector finds: both cases are cached
            compute_features(items, contract, MeanPass(), detect=True, cache=cache,
                             progress=False)
        except DataError:
            pass
        assert bool(crop_cache()) == cache


def test_feature_cache_computes_only_the_missing_views(smiles_dir, tmp_path, monkeypatch):
    """Adding --flip to a cached run computes the mirrors only, and timings say so."""
    from edge_smw.data.datasets import LabelledImage
    from edge_smw.train.backbones import get_backbone
    from edge_smw.train.features import compute_features

    monkeypatch.setenv("EDGE_SMW_CACHE", str(tmp_path))
    items = [LabelledImage(p, 0) for p in sorted((smiles_dir / "smiling").glob("*.jpg"))[:3]]
    contract = get_backbone("efficientnet_lite0").contract(SMILES_LEVELS)
    seen: list[int] = []

    class CountingPass:  # stands in for FeaturePass: one number per crop
        spec, fingerprint, suffix = get_backbone("efficientnet_lite0"), "test", "-count"

        def __call__(self, x):
            seen.append(len(x))
            return x.mean(axis=(1, 2, 3))[:, None].astype(np.float32)

    plain = compute_features(items, contract, CountingPass(), detect=False, progress=False)
    assert seen == [3] and plain.timings["computed"] == 3
    flipped = compute_features(items, contract, CountingPass(), detect=False, flip=True,
                               progress=False)
    assert seen == [3, 3] and flipped.timings["computed"] == 3  # the mirrors only
    assert len(flipped.levels) == 6
    np.testing.assert_array_equal(flipped.features[::2], plain.features)
    again = compute_features(items, contract, CountingPass(), detect=False, flip=True,
                             progress=False)
    assert seen == [3, 3] and again.timings["cached"] == 3


def _blank_photos(folder, per_level: int):
    import cv2

    for level in SMILES_LEVELS:
        (folder / level).mkdir(parents=True)
        for i in range(per_level):
            cv2.imwrite(str(folder / level / f"{i}.jpg"), np.full((96, 96, 3), 30 * i, np.uint8))
    return folder


def test_failed_train_keeps_the_earlier_run_and_names_too_small_data(tmp_path):
    """A run that fails (no face in any photo, found only in the feature pass) writes nothing:
    the folder's earlier split.json, which its checkpoint was trained on, survives; data too
    small to split is refused up front, naming the levels."""
    from edge_smw.data.datasets import load_dataset
    from edge_smw.data.sources import DataSource
    from edge_smw.errors import DataError
    from edge_smw.train.pipeline import TrainOptions, train_run

    out = tmp_path / "run"
    out.mkdir()
    (out / "split.json").write_text("the earlier run's split")
    options = TrainOptions(compare_losses=False, progress=False)
    faceless = load_dataset(_blank_photos(tmp_path / "blank", 3), levels=SMILES_LEVELS)
    with pytest.raises(DataError, match="no usable images"):
        train_run(DataSource(faceless, False, "blank"), out, options)
    assert [p.name for p in out.iterdir()] == ["split.json"]
    assert (out / "split.json").read_text() == "the earlier run's split"
    tiny = load_dataset(_blank_photos(tmp_path / "tiny", 1), levels=SMILES_LEVELS)
    with pytest.raises(DataError, match=r"too few images to split .* not_smiling 1, smiling 1"
                                        r"\); give every level at least 3"):
        train_run(DataSource(tiny, False, "tiny"), tmp_path / "new", options)
    assert not (tmp_path / "new").exists()
